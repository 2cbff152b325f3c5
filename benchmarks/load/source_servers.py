"""The PostgreSQL, ZooKeeper and FerretDB servers the sources and targets live on: the URLs
given on the command line (the test suite passes its session's), or started here with the
test suite's launchers (tests/servers/) and stopped at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[2] / "tests"  # the test suite's launchers


class Servers:
    """The servers the sources and targets live on: given, or started here (and stopped
    by `stop`)."""

    def __init__(self, args: argparse.Namespace, work: Path, wanted: list[str]) -> None:
        self.started: list[Any] = []
        self.pg_url = args.pg_url
        self.zk_hosts = args.zk_hosts
        self.mongo_source = args.mongo_source
        self.mongo_target = args.mongo_target
        self.work = work
        self.wanted = wanted

    def start(self) -> Servers:
        sys.path.insert(0, str(TESTS))
        if "schemaless-postgresql" in self.wanted and not self.pg_url:
            from servers.sql import PostgresServer, postgres_installed

            if not postgres_installed():
                raise SystemExit("PostgreSQL is not installed (tests/servers/install.sh)")
            server = PostgresServer(self.work / "postgres").start()
            self.started.append(server)
            self.pg_url = server.url()
        if "zookeeper" in self.wanted and not self.zk_hosts:
            from servers.zookeeper import ZooKeeperServer, classpath

            version = "3.9" if classpath("3.9") else "3.8"
            if classpath(version) is None:
                raise SystemExit("ZooKeeper is not installed (tests/servers/install.sh)")
            server = ZooKeeperServer(version, self.work / "zookeeper").start()
            self.started.append(server)
            self.zk_hosts = server.hosts
        if "docstore" in self.wanted and not (self.mongo_source and self.mongo_target):
            from servers.ferretdb import FerretDB, installed

            if not installed():
                raise SystemExit("FerretDB is not built (tests/servers/install.sh)")
            for role in ("source", "target"):
                if getattr(self, f"mongo_{role}"):
                    continue
                server = FerretDB(self.work / f"ferretdb-{role}").start()
                self.started.append(server)
                setattr(self, f"mongo_{role}", server.url)
        return self

    def stop(self) -> None:
        for server in reversed(self.started):
            try:
                server.stop()
            except Exception as exc:  # the others are still stopped
                print(f"stopping {type(server).__name__}: {exc}", file=sys.stderr)
