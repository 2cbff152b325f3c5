"""Connections per database host, capped by a Prefect global concurrency limit on the
session's real Prefect server, measured from the database server's side."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import subprocess_env
from sqlalchemy import create_engine, text
from test_schemaless_sql import back_up, cells_of, fill, restore_into

from backstop.tasks.host_limits import HOST_CONNECTIONS_ENV, host_limit_names

pytestmark = pytest.mark.integration


def test_limit_names_carry_host_and_port_only():
    assert host_limit_names(
        [
            "postgresql+psycopg://backup:pw@DB1.example.com/cells",
            "postgresql://other@db1.example.com:5432/more?password=x",
            "mongodb://u:p@m1:27017,m2/?replicaSet=rs",
            "zk://digest:pw@zk1:2181/app",
            "sqlite:////var/lib/cells.db",
        ]
    ) == [
        "backstop-host:db1.example.com:5432",
        "backstop-host:m1:27017",
        "backstop-host:m2:27017",
        "backstop-host:zk1:2181",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://backup@%2Ftmp%2Fmongodb-27017.sock/",  # PyMongo's Unix socket
        "postgresql+psycopg://backup@[fe80::1%25eth0]:5432/cells",  # IPv6 with a zone
    ],
    ids=["unix-socket", "ipv6-zone"],
)
def test_every_limit_name_is_one_prefect_accepts(url):
    # Prefect refuses / % & < > in a limit's name: such a name failed every shard task.
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    names = host_limit_names([url])
    assert len(names) == 1
    GlobalConcurrencyLimitCreate(name=names[0], limit=1)


def _connections_to(port: int) -> dict[int, int]:
    """The established IPv4 TCP connections to `port` on this machine: socket inode ->
    local port. /proc/net/tcp is read once a sample: each read walks the kernel's whole
    table (psutil's net_connections reads it and tcp6 for each process, which took
    half a second a sample under CI load). The server listens on 127.0.0.1 only."""
    found = {}
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            _, local, remote, state, *_, inode = line.split()[:10]
            if state == "01" and int(remote.rpartition(":")[2], 16) == port:
                found[int(inode)] = int(local.rpartition(":")[2], 16)
    return found


def _sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open (none once it has ended)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


class PeakConnections:
    """Samples pg_stat_activity from its own connection (to another database) while
    the block runs: the most connections to `databases` seen open at once, in all and
    per host the client reached the server by.

    A backend outlives its client's disconnect by the moment it takes to exit, and the
    task that closed it has by then handed its slot on: under CI load a sample showed
    that exiting backend beside two working ones. So each backend the server lists is
    counted only while its client socket (its `client_port`, in this process, where the
    flow's tasks run, or in a process under it) is still open, looked up just after the
    server answered: a backend whose client has gone is not a connection anyone holds.

    `forwarded`: the host (host:port) of a Forwarder in this process, the flow then
    running in a process under it. A backend whose client socket is this process's own
    is that host's (the forwarder's connection to the server, open while the flow's is:
    it closes it as soon as the flow's side closes); one of a process under it reached
    the server's own address."""

    def __init__(self, admin_url: str, databases: list[str], forwarded: str = "") -> None:
        # Autocommit: within one transaction, pg_stat_activity is one snapshot.
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.databases = databases
        self.direct = f"{self.engine.url.host}:{self.engine.url.port}"
        self.forwarded = forwarded
        self.peak = 0
        self.peaks = dict.fromkeys([self.direct, *([forwarded] if forwarded else [])], 0)
        self.samples = 0
        self.exiting = 0  # backends listed after their client had closed (not counted)
        self._stop = threading.Event()

    def _open_client_ports(self) -> dict[int, str]:
        """Client sockets to the server held by this process or any under it (a CLI run
        as a process, its Dask workers), each with the host it is a connection to."""
        connected = _connections_to(self.engine.url.port)
        ports: dict[int, str] = {}
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            host = self.forwarded if process.pid == me.pid and self.forwarded else self.direct
            for inode in _sockets_of(process.pid) & connected.keys():
                ports[connected[inode]] = host
        return ports

    def _sample(self) -> None:
        query = text("SELECT client_port FROM pg_stat_activity WHERE datname = ANY(:names)")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                listed = set(conn.execute(query, {"names": self.databases}).scalars())
                open_ports = self._open_client_ports()
                held = Counter(open_ports[port] for port in listed if port in open_ports)
                self.exiting += len(listed) - held.total()
                self.peak = max(self.peak, held.total())
                for host, count in held.items():
                    self.peaks[host] = max(self.peaks.get(host, 0), count)
                self.samples += 1
                self._stop.wait(0.01)

    def summary(self) -> dict:
        return {
            "peak": self.peak,
            "peaks": self.peaks,
            "samples": self.samples,
            "exiting": self.exiting,
        }

    def __enter__(self) -> PeakConnections:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


@contextlib.contextmanager
def fresh_limits(urls: list[str]) -> Iterator[list[str]]:
    """The names of these URLs' host limits, which backstop makes anew from the
    setting, and removed after, so other tests get the default again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    names = host_limit_names(urls)
    with get_client(sync_client=True) as client:
        for name in names:  # one left by an earlier test would keep its own slots
            with contextlib.suppress(ObjectNotFound):
                client.delete_global_concurrency_limit_by_name(name)
    try:
        yield names
    finally:
        with get_client(sync_client=True) as client:
            for name in names:
                with contextlib.suppress(ObjectNotFound):
                    client.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def fresh_limit(pg_server) -> Iterator[str]:
    """The name of the PostgreSQL server's host limit (fresh_limits)."""
    with fresh_limits([pg_server.url()]) as [name]:
        yield name


def test_a_prefect_api_failure_while_taking_a_slot_is_retried_and_crosses_to_the_flow(
    monkeypatch,
):
    """A 5xx from a loaded Prefect server while a unit waits for its slot: a transient
    error the task retries, and one that survives the pickling that carries a Dask
    worker's failure back (httpx's own errors do not)."""
    import pickle

    import httpx

    from backstop.drivers.errors import TransientError, is_transient
    from backstop.tasks import host_limits

    def busy(*_args, **_kwargs):
        request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment")
        response = httpx.Response(503, request=request)
        raise httpx.HTTPStatusError("503", request=request, response=response)

    monkeypatch.setenv(HOST_CONNECTIONS_ENV, "2")
    monkeypatch.setattr(host_limits, "_acquire", busy)
    with pytest.raises(TransientError) as failed, host_limits.host_slots(["postgresql://h:5432/x"]):
        pass
    assert "503" in str(failed.value) and is_transient(failed.value)
    assert str(pickle.loads(pickle.dumps(failed.value))) == str(failed.value)


def test_never_more_shard_connections_to_one_host_than_its_limit(
    pg_server, new_databases, local_store, fresh_limit, monkeypatch
):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv(HOST_CONNECTIONS_ENV, "2")
    sources, targets = new_databases("postgresql", 6), new_databases("postgresql", 6)
    for i, url in enumerate(sources):
        fill(url, 1_500, seed=i)
    names = [url.rsplit("/", 1)[1] for url in sources + targets]
    with PeakConnections(pg_server.url(), names) as during_backup:
        backed_up = back_up(sources, local_store)
    with PeakConnections(pg_server.url(), names) as during_restore:
        restore_into(targets, local_store, backup=backed_up.backup_id)

    for source, target in zip(sources, targets, strict=True):
        assert cells_of(target) == cells_of(source)
    # Six shards on four task threads: without the limit, four connections at once.
    for during in (during_backup, during_restore):
        assert during.samples > 10 and 1 <= during.peak <= 2, during.summary()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(fresh_limit)
    assert (limit.limit, limit.active_slots) == (2, 0)  # made from the setting; all released


def test_a_backup_stopped_by_sigterm_gives_its_slots_back(
    prefect_harness, new_databases, tmp_path, fresh_limit
):
    """One slot, three shards: one holds it, two wait; SIGTERM ends both the work and
    the waiting, and the server's count is back to 0 at once (not after the lease)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    sources = new_databases("postgresql", 3)
    for i, url in enumerate(sources):
        fill(url, 4_000, seed=i)
    env = subprocess_env(prefect_harness) | {HOST_CONNECTIONS_ENV: "1"}
    argv = ["backup", "schemaless", "--store", (tmp_path / "store").as_uri(), "--json"]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "backstop"), *argv,
         *(arg for url in sources for arg in ("--source", url))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held = 0
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 300
        while not held and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ObjectNotFound):
                held = client.read_global_concurrency_limit_by_name(fresh_limit).active_slots
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        after = client.read_global_concurrency_limit_by_name(fresh_limit)
    assert held == 1, f"no slot was seen held before the backup ended: {out} {err}"
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert (after.limit, after.active_slots) == (1, 0)


def test_a_command_killed_outright_leaves_no_slot_held_on_the_temporary_server(
    pg_server, new_databases, tmp_path
):
    """The command's own temporary server keeps leases in memory and expires none: a
    backup killed with SIGKILL while its shard held the host's only slot left it held
    in PREFECT_HOME's database for ever, and the next backup of that host waited for it
    without end. Under the temporary server there is no host limit."""
    import os
    import sqlite3

    [source] = new_databases("postgresql", 1)
    fill(source, 20_000)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), HOST_CONNECTIONS_ENV: "1"}
    argv = [str(Path(sys.executable).parent / "backstop"), "backup", "schemaless",
            "--source", source, "--store", (tmp_path / "store").as_uri(), "--json"]  # fmt: skip

    admin = create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")

    def shard_reading() -> bool:
        # The snapshot task running (the plan's connection is closed by then) and a
        # connection to the source: the snapshot's, made once it holds its slots.
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(home / "prefect.db") as db:
            running = ("SELECT count(*) FROM task_run WHERE state_type = 'RUNNING' "
                       "AND (name LIKE 'backup-%' OR name LIKE 'snapshot-%')")  # fmt: skip
            if not db.execute(running).fetchone()[0]:
                return False
            with admin.connect() as conn:
                return conn.execute(query, {"name": source.rsplit("/", 1)[1]}).scalar_one() > 0
        return False

    killed = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while killed.poll() is None and not shard_reading() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, "the backup ended before its shard was seen reading"
    killed.kill()
    killed.communicate()
    admin.dispose()

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    with sqlite3.connect(home / "prefect.db") as db:
        held = db.execute("SELECT coalesce(sum(active_slots), 0) FROM concurrency_limit_v2")
        assert held.fetchone()[0] == 0


def test_the_command_refuses_a_bad_host_connections_setting_before_prefect(tmp_path):
    # It was read first by the shard tasks: each failed, after Prefect had started.
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOP_", "PREFECT_"))}
    env |= {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "ph"),
            HOST_CONNECTIONS_ENV: "many"}  # fmt: skip
    argv = ["backup", "schemaless", "--source", f"sqlite:///{tmp_path / 'data.db'}",
            "--store", str(tmp_path / "store")]  # fmt: skip
    result = subprocess.run(
        [str(Path(sys.executable).parent / "backstop"), *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("backstop backup: ") and HOST_CONNECTIONS_ENV in line
    assert not (tmp_path / "ph").exists(), "Prefect was imported before the refusal"


DASK_SHARDS_PER_HOST = 32
DASK_CELLS = 200  # per shard (some 300 kB): small, so 64 shards stay quick
DASK_CAP = 4
DASK_THREADS = 8  # 2 worker processes of 4 task threads (BACKSTOP_WORKERS) each
# Each worker process writes to the store at most this fast (MB/s, shared by its
# threads): a unit holds its connection while its file is written, for a second or
# more, as to a slow store. With a few hundred cells read at full speed, a connection
# lasted less than a task's own work with Prefect: at most 4 to a host were ever seen
# open at once without any limit, and the test could not fail.
DASK_UPLOAD_MB_S = 0.5


def test_the_host_limit_holds_for_units_on_dask_workers(
    pg_server, new_databases, tmp_path, prefect_harness, cli
):
    """64 shards on 2 hosts, a cap of 4 per host, the units on a LocalCluster's 2
    worker processes: the limit is Prefect's, so it holds across processes, and each
    host's is its own. The second host is the same server reached through a forwarder
    on another port (a limit is named by host:port); which host a connection the
    server lists is to is told by its client socket: the forwarder's, in this process,
    or one of the backstop command's processes."""
    from prefect.client.orchestration import get_client
    from servers.proxy import Forwarder

    forwarder = Forwarder(pg_server.port)
    try:
        direct = new_databases("postgresql", DASK_SHARDS_PER_HOST)
        proxied = [
            url.replace(f":{pg_server.port}/", f":{forwarder.port}/")
            for url in new_databases("postgresql", DASK_SHARDS_PER_HOST)
        ]
        for i, url in enumerate(direct + proxied):
            fill(url, DASK_CELLS, seed=i)
        # Runs of one host's shards as long as the cluster has task threads: without
        # the limit, each run would be that many connections to one host at once.
        sources = [
            url
            for i in range(0, DASK_SHARDS_PER_HOST, DASK_THREADS)
            for url in direct[i : i + DASK_THREADS] + proxied[i : i + DASK_THREADS]
        ]
        names = [url.rsplit("/", 1)[1] for url in sources]
        hosts = [f"127.0.0.1:{pg_server.port}", f"127.0.0.1:{forwarder.port}"]
        env = subprocess_env(prefect_harness) | {
            HOST_CONNECTIONS_ENV: str(DASK_CAP),
            "BACKSTOP_DASK_WORKERS": "2",
        }
        store = str(tmp_path / "store")
        argv = [str(Path(sys.executable).parent / "backstop"), "backup", "schemaless",
                *[a for s in sources for a in ("--source", s)], "--store", store,
                "--limit-upload", str(DASK_UPLOAD_MB_S), "--runner", "dask",
                "--json"]  # fmt: skip
        with fresh_limits(sources) as limit_names:
            assert len(limit_names) == 2, limit_names
            started = time.monotonic()
            with PeakConnections(pg_server.url(), names, forwarded=hosts[1]) as during:
                proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
            took = time.monotonic() - started
            print(f"dask backup of {len(sources)} shards: {took:.1f} s, {during.summary()}")  # -s
            assert proc.returncode == 0, proc.stdout + proc.stderr
            with get_client(sync_client=True) as client:
                limits = [client.read_global_concurrency_limit_by_name(n) for n in limit_names]
    finally:
        forwarder.close()
    backed_up = json.loads(proc.stdout)
    assert backed_up["records"] == len(sources) * DASK_CELLS, backed_up
    # Never more than the cap to one host, and each host saw several at once: the
    # sampler saw the work, and the units ran side by side.
    assert during.samples > 10, during.summary()
    for host in hosts:
        assert 2 <= during.peaks[host] <= DASK_CAP, (host, during.summary())
    assert [(limit.limit, limit.active_slots) for limit in limits] == [(DASK_CAP, 0)] * 2
    verified = cli("verify", "--store", store, "--technology", "schemaless",
                   "--backup", backed_up["backup_id"], "--json")  # fmt: skip
    assert verified.code == 0 and verified.json["ok"], verified.stdout + verified.stderr
    assert verified.json["files"] == backed_up["files"], verified.json
