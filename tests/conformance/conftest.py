"""The conformance suite's fixtures: `harness` (one per driver and server) and `run`.

Servers come from the session fixtures of tests/conftest.py (through
request.getfixturevalue, only when a harness needs them), so a missing server skips on a
developer's machine and fails in CI exactly as in the per-driver tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CliResult, server_unavailable
from test_example_driver import kvdir_installed  # noqa: F401 - the kvdir harness uses it

from backstop.tasks.store import StoreSpec
from conformance.harness import HARNESSES, Harness

pytestmark = pytest.mark.integration


def _zookeeper(version: str, folder: Path):
    """A running ZooKeeper of one version (the session's zk_server is parametrized over
    both versions, which a harness cannot pick one of)."""
    from servers.zookeeper import ZooKeeperServer, classpath

    if classpath(version) is None:
        server_unavailable(f"ZooKeeper {version} is not installed (run tests/servers/install.sh)")
    return ZooKeeperServer(version, folder).start()


@pytest.fixture(scope="session")
def zk38_server(tmp_path_factory: pytest.TempPathFactory):
    server = _zookeeper("3.8", tmp_path_factory.mktemp("conf-zk38"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def zk39_server(tmp_path_factory: pytest.TempPathFactory):
    server = _zookeeper("3.9", tmp_path_factory.mktemp("conf-zk39"))
    yield server
    server.stop()


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    made = HARNESSES[request.param](tmp_path / "harness", request)
    made.folder.mkdir()
    yield made
    made.close()


class Runner:
    """The CLI, in this process, against one store; shortcuts for the common commands."""

    def __init__(self, cli, harness: Harness, store: str) -> None:
        self.cli, self.harness, self.store = cli, harness, store

    def __call__(self, *argv: str) -> CliResult:
        return self.cli(*argv)

    def backup(self, sources: list[str], *extra: str) -> CliResult:
        return self.cli("backup", self.harness.technology, *self.harness.source_args(sources),
                        "--store", self.store, "--json", *extra)  # fmt: skip

    def restore(self, targets: list[str], *extra: str) -> CliResult:
        return self.cli("restore", self.harness.technology, *self.harness.target_args(targets),
                        "--store", self.store, "--json", *extra)  # fmt: skip

    def verify(self, *extra: str) -> CliResult:
        return self.cli("verify", "--store", self.store, "--json", *extra)


@pytest.fixture
def run(cli, harness: Harness, local_store: StoreSpec) -> Runner:
    return Runner(cli, harness, local_store.url)
