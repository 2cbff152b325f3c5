"""Real ZooKeeper servers for the tests: 3.8 from Debian's package, 3.9 from Maven jars.

Each server runs standalone on 127.0.0.1 on free ports with its own data folder, and
is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from servers.process import free_port, stop

CACHE = Path(
    os.environ.get(
        "BACKSTOP_CACHE",
        "/var/cache/backstop" if os.geteuid() == 0 else str(Path.home() / ".cache/backstop"),
    )
)
DEBIAN_JAR = Path("/usr/share/java/zookeeper.jar")
# Debian's jar names its dependencies in its manifest, all but the servlet API that its
# admin server (Jetty) needs.
DEBIAN_SERVLET = Path("/usr/share/java/servlet-api.jar")
MAVEN_LIB = CACHE / "zookeeper-3.9.5" / "lib"


def classpath(version: str) -> str | None:
    """The server's classpath, or None when that version is not installed."""
    if version == "3.8":
        return f"{DEBIAN_JAR}:{DEBIAN_SERVLET}" if DEBIAN_JAR.is_file() else None
    if version == "3.9":
        return f"{MAVEN_LIB}/*" if (MAVEN_LIB / "zookeeper-3.9.5.jar").is_file() else None
    raise ValueError(version)


@dataclass
class ZooKeeperServer:
    version: str
    folder: Path
    admin: bool = False
    java_options: list[str] = field(default_factory=list)
    port: int = 0
    admin_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def url(self, chroot: str = "", credentials: str | None = None) -> str:
        """A zk:// URL; with the tests' digest credentials unless `credentials` is ""."""
        if credentials is None:
            from zk_trees import DIGEST_PASSWORD, DIGEST_USER

            credentials = f"{DIGEST_USER}:{DIGEST_PASSWORD}"
        userinfo = f"{credentials}@" if credentials else ""
        return f"zk://{userinfo}{self.hosts}{chroot}"

    def start(self, timeout: float = 60) -> ZooKeeperServer:
        cp = classpath(self.version)
        if cp is None:
            raise RuntimeError(
                f"ZooKeeper {self.version} is not installed (tests/servers/install.sh)"
            )
        self.port = self.port or free_port()
        self.admin_port = self.admin_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.folder / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    "tickTime=2000",
                    f"dataDir={self.data_dir}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "maxClientCnxns=0",
                    f"admin.enableServer={'true' if self.admin else 'false'}",
                    "admin.serverAddress=127.0.0.1",
                    f"admin.serverPort={self.admin_port}",
                    "4lw.commands.whitelist=*",
                    "",
                ]
            )
        )
        java = shutil.which("java") or "java"
        command = [
            java,
            "-Xmx512m",
            "-Dzookeeper.admin.rateLimiterIntervalInMS=0",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dzookeeper.jmx.log4j.disable=true",
            *self.java_options,
            "-cp",
            cp,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(config),
        ]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._log = log
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper {self.version} exited: {(self.folder / 'server.log').read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"ruok")
                    if sock.recv(4) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"ZooKeeper {self.version} did not start within {timeout} s")

    def stop(self) -> None:
        stop(self.process, getattr(self, "_log", None))
        self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()
