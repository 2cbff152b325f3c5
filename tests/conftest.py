"""Shared fixtures: one Prefect test harness for the session, servers, CLI runners."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Settings that must be in place before Prefect or backstop is imported.
PREFECT_HOME = tempfile.mkdtemp(prefix="backstop-test-prefect-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ["BACKSTOP_RETRY_DELAYS"] = "0.1,0.1,0.1"
os.environ["BACKSTOP_ZK_CONNECT_TIMEOUT"] = "3"
os.environ["BACKSTOP_MONGO_TIMEOUT"] = "3"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from servers.process import free_port  # noqa: E402 - tests import it from here

from backstop.flows.demo import make_schemaless_datastore  # noqa: E402
from backstop.tasks.store import StoreSpec  # noqa: E402


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's Prefect home goes with the session (fixtures have stopped by now);
    tmp_path folders are kept only for failed tests (tmp_path_retention_policy)."""
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)


def server_unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, which must never pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"required server unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield PREFECT_API_URL.value()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        import json

        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got: {self.stdout!r}"
        return json.loads(lines[0])


@pytest.fixture
def cli() -> callable:
    """Run the backstop CLI in this process (against the session's Prefect harness)."""
    from backstop.flows.cli import main

    def run(*argv: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def cli_process(prefect_harness: str) -> callable:
    """Run the installed `backstop` console script as a separate process."""

    def run(*argv: str, timeout: float = 300) -> CliResult:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "backstop"), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=subprocess_env(prefect_harness),
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def subprocess_env(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture(scope="session")
def datastore_template(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two SQLite shards with 6,000 cells, generated once and copied per test."""
    folder = tmp_path_factory.mktemp("template")
    urls = make_schemaless_datastore(folder, shards=2, cells=6_000)
    return [Path(u.removeprefix("sqlite:///")) for u in urls]


@pytest.fixture
def shards(datastore_template: list[Path], tmp_path: Path) -> list[str]:
    """A fresh copy of the template datastore: SQLite URLs, one per shard."""
    import shutil

    (tmp_path / "source").mkdir()
    urls = []
    for path in datastore_template:
        copy = tmp_path / "source" / path.name
        shutil.copyfile(path, copy)
        urls.append(f"sqlite:///{copy}")
    return urls


@pytest.fixture
def local_store(tmp_path: Path) -> StoreSpec:
    return StoreSpec(url=(tmp_path / "store").as_uri())


@pytest.fixture
def target_urls(tmp_path: Path) -> list[str]:
    folder = tmp_path / "restored"
    folder.mkdir()
    return [f"sqlite:///{folder / f'shard{i}.db'}" for i in range(2)]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        server_unavailable(f"moto[server] is not installed: {exc}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store(moto_endpoint: str) -> StoreSpec:
    import s3fs

    bucket = f"backstop-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    return StoreSpec(url=f"s3://{bucket}/backups", options={"endpoint_url": moto_endpoint})


@pytest.fixture(scope="session", params=["3.8", "3.9"])
def zk_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A running ZooKeeper of each version (3.9 with its admin server), for the session."""
    from servers.zookeeper import ZooKeeperServer, classpath

    version = request.param
    if classpath(version) is None:
        server_unavailable(f"ZooKeeper {version} is not installed (run tests/servers/install.sh)")
    server = ZooKeeperServer(version, tmp_path_factory.mktemp(f"zk{version}"), admin=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def zk_second(zk_server, tmp_path_factory: pytest.TempPathFactory):
    """A second server of the same version: a restore target on another machine."""
    from servers.zookeeper import ZooKeeperServer

    server = ZooKeeperServer(zk_server.version, tmp_path_factory.mktemp("zk-second"), admin=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk_client(zk_server):
    from zk_trees import authenticated_client

    client = authenticated_client(zk_server.hosts)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_root(zk_client) -> str:
    """A fresh chroot for one test, so tests share a server without seeing each other."""
    root = f"/t-{uuid.uuid4().hex[:10]}"
    zk_client.ensure_path(root)
    return root


def _ferretdb(folder, replica_set: str = ""):
    from servers.ferretdb import FerretDB, installed

    if not installed():
        server_unavailable("FerretDB is not built (run tests/servers/install.sh)")
    return FerretDB(folder, replica_set=replica_set).start()


@pytest.fixture(scope="session")
def ferret_source(tmp_path_factory: pytest.TempPathFactory):
    server = _ferretdb(tmp_path_factory.mktemp("ferret-source"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ferret_target(tmp_path_factory: pytest.TempPathFactory):
    server = _ferretdb(tmp_path_factory.mktemp("ferret-target"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory):
    from servers.sql import PostgresServer, postgres_installed

    if not postgres_installed():
        server_unavailable("PostgreSQL is not installed (run tests/servers/install.sh)")
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory):
    from servers.sql import MariaDBServer, mariadb_installed

    if not mariadb_installed():
        server_unavailable("MariaDB is not installed (run tests/servers/install.sh)")
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture
def new_databases(request: pytest.FixtureRequest):
    """new_databases("postgresql" | "mariadb", n): URLs of n fresh, empty databases."""

    def make(engine: str, count: int) -> list[str]:
        server = request.getfixturevalue(
            "pg_server" if engine == "postgresql" else "mariadb_server"
        )
        return [server.url(server.create_database()) for _ in range(count)]

    return make


@pytest.fixture
def captured_events(monkeypatch: pytest.MonkeyPatch):
    """The backstop.* events flows emit in this test, read through Prefect's own
    asserting events client instead of a server."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

    def events():
        worker.wait_until_empty()
        return [e for e in worker._client.events if e.event.startswith("backstop.")]

    yield events
    worker.drain()
