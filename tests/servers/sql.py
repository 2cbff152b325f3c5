"""PostgreSQL and MariaDB from Debian's packages, for the tests and benchmarks.

Each server gets a throwaway data folder and a free port on 127.0.0.1, runs as a
child of the test session, and is stopped by the fixture that started it. Both accept
password logins over TCP only (user `backstop`, password PASSWORD), so the tests see
what an operator's URL looks like.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from servers.process import free_port, stop, wait_for_port

USER = "backstop"
PASSWORD = "s3cret-Test-pw"  # test servers only; the tests check it never leaks


def pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def _mariadbd() -> str | None:
    return shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None
    )


def postgres_installed() -> bool:
    return pg_bin_dir() is not None


def mariadb_installed() -> bool:
    return _mariadbd() is not None and shutil.which("mariadb-install-db") is not None


@dataclass
class PostgresServer:
    folder: Path
    durable: bool = False  # tests run with fsync off; benchmarks keep PostgreSQL's defaults
    port: int = 0
    process: subprocess.Popen | None = None

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.port = self.port or free_port()
        if os.geteuid() == 0 and not getattr(self, "_owned", False):
            # The server runs as `postgres`, which cannot enter pytest's root-only temp
            # folders: its folder lives under /tmp, removed again by stop().
            self.folder = Path(tempfile.mkdtemp(prefix="backstop-pg-"))
            self._owned = True
        self.folder.mkdir(parents=True, exist_ok=True)
        data, pwfile, log = self.folder / "data", self.folder / "pw", self.folder / "server.log"
        pwfile.write_text(PASSWORD + "\n")
        # PostgreSQL refuses to run as root: run it as the package's own user then (the
        # process itself, not a wrapper, so that killing it kills the server).
        as_user: dict = {}
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
            as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        if not data.exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                **as_user,
            )
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.folder}",
        ]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        settings += ["-c", "max_connections=200"]
        self._log = open(log, "ab")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), *settings],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            **as_user,
        )
        try:
            wait_for_port(self.process, self.port, timeout, log)
            self._wait_for_login(timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _wait_for_login(self, timeout: float) -> None:
        """An open port is not a ready server: until recovery ends, PostgreSQL answers
        every login with "the database system is starting up" (seen under CI load)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url().replace("+psycopg", ""), connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept a login: {exc}") from exc
                time.sleep(0.2)

    def create_database(self) -> str:
        """A fresh database; its name."""
        import psycopg

        name = f"shard_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def kill(self) -> None:
        """As a crash of its host: SIGKILL to the postmaster and every backend, nothing
        flushed. start() again brings the same data back on the same port."""
        import psutil

        server = psutil.Process(self.process.pid)
        for process in [*server.children(recursive=True), server]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs([server], timeout=30)
        self.process.wait(timeout=30)
        if self._log:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        stop(self.process, getattr(self, "_log", None))
        self._log = None
        if getattr(self, "_owned", False):
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class MariaDBServer:
    folder: Path
    durable: bool = False
    port: int = 0
    process: subprocess.Popen | None = None

    def url(self, database: str = "", driver: str = "mysql+pymysql") -> str:
        return f"{driver}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> MariaDBServer:
        mariadbd = _mariadbd()
        if mariadbd is None:
            raise RuntimeError("MariaDB is not installed")
        self.port = self.port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        data, log, socket = self.folder / "data", self.folder / "server.log", self.folder / "sock"
        user = pwd.getpwuid(os.geteuid()).pw_name
        fresh = not data.exists()
        if fresh:
            subprocess.run(
                [
                    "mariadb-install-db",
                    f"--datadir={data}",
                    f"--user={user}",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                check=True,
                capture_output=True,
            )
        settings = [
            f"--datadir={data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={socket}",
            f"--pid-file={self.folder / 'mariadb.pid'}",
            f"--user={user}",
            "--skip-log-bin",
            "--max-connections=200",
            "--innodb-buffer-pool-size=512M",
            "--max-allowed-packet=256M",
        ]
        if not self.durable:
            settings += ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
        self._log = open(log, "ab")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [mariadbd, "--no-defaults", *settings], stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.process, self.port, timeout, log)
            if fresh:
                self._create_user(socket)
        except (RuntimeError, subprocess.CalledProcessError):
            self.stop()
            raise
        return self

    def _create_user(self, socket: Path) -> None:
        sql = (
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"GRANT ALL ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;"
        )
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={socket}", "-uroot", "-e", sql],
            check=True,
            capture_output=True,
        )

    def create_database(self) -> str:
        import pymysql

        name = f"shard_{uuid.uuid4().hex[:10]}"
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return name

    def stop(self) -> None:
        stop(self.process, getattr(self, "_log", None))
        self._log = None
