"""A Prometheus server (Debian's package) of its own, scraping given targets."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from servers.process import free_port, stop, wait_for_port

BINARY = "/usr/bin/prometheus"


def installed() -> bool:
    return Path(BINARY).exists() and shutil.which("promtool") is not None


class PrometheusServer:
    """Scrapes `targets` (host:port) every second; loads `rule_files` too."""

    def __init__(self, folder: Path, targets: list[str], rule_files: list[Path] = ()) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = "".join(f"\n  - {path}" for path in rule_files)
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:{rules}\n" if rules else "")
            + "scrape_configs:\n  - job_name: backstop\n    static_configs:\n"
            + f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.config = config
        self.process: subprocess.Popen | None = None
        self.log = None

    def start(self) -> PrometheusServer:
        log_path = self.folder / "prometheus.log"
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.process, self.port, 60, log_path)
        return self

    def stop(self) -> None:
        stop(self.process, self.log)

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query_until(self, promql: str, ready, deadline_s: float = 60) -> list[dict[str, Any]]:
        """The instant query's result once `ready(result)` holds (scrapes take a second
        or two to land); the last result is returned for the caller's assertion."""
        stop_at = time.monotonic() + deadline_s
        while True:
            result = self.api("query", query=promql)["result"]
            if ready(result) or time.monotonic() > stop_at:
                return result
            time.sleep(0.5)
