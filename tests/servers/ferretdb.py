"""FerretDB v1 (MongoDB wire protocol, SQLite backend) for the tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from servers.process import free_port, stop, wait_for_port
from servers.zookeeper import CACHE

BINARY = CACHE / "go-bin" / "ferretdb"


def installed() -> bool:
    return BINARY.is_file()


@dataclass
class FerretDB:
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None
    replica_set: str = ""  # reported by hello (FerretDB v1 has no snapshot reads behind it)

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30) -> FerretDB:
        self.port = self.port or free_port()
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        (self.folder / "state").mkdir(exist_ok=True)
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - closed by stop()
        self._log = log
        self.process = subprocess.Popen(
            [
                str(BINARY),
                f"--listen-addr=127.0.0.1:{self.port}",
                "--handler=sqlite",
                f"--sqlite-url=file:{self.folder / 'data'}/",
                f"--state-dir={self.folder / 'state'}",
                "--debug-addr=-",
                "--telemetry=disable",
                "--log-level=warn",
                *([f"--repl-set-name={self.replica_set}"] if self.replica_set else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.process, self.port, timeout, self.folder / "server.log")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop(self.process, getattr(self, "_log", None))
        self._log = None
