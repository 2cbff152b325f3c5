"""The Prefect side of the load test: a real `prefect server`, a process work pool with
one `prefect worker start` polling it, backstop's backup and restore flows deployed into
that pool, and the REST calls that start flow runs and wait for them.

Everything runs under a private PREFECT_HOME in the run's work folder, on a free port,
so that several runs (and the test suite's own Prefect servers) never share state. The
server and the worker are started in their own process groups and stopped (SIGTERM,
then SIGKILL) by `Prefect.stop`, on every path.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PREFECT, PrefectServer, clean_env

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# The flows the load test runs, as the deployments template names them: module paths
# imported from the installed package, and its one pull step (deployments/prefect.yaml).
FLOWS = {
    "backup": ("backstop-backup", "backstop.flows.backup.backup"),
    "restore": ("backstop-restore", "backstop.flows.restore.restore"),
}
PULL_STEPS = [{"backstop.deployments.steps.use_installed_package": {}}]


class Api:
    """Prefect's REST API, retried as Prefect's own client retries it: a busy server (its
    SQLite database locked under load) answers 503 and has done nothing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = None
        for attempt in range(8):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == 7:
                    raise
                time.sleep(min(2**attempt, 20))
                continue
            if response.status_code not in (429, 502, 503):
                break
            time.sleep(min(2**attempt, 20))
        assert response is not None
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def close(self) -> None:
        self.client.close()


class Prefect:
    """One Prefect server, one process work pool (flow runs limited to `concurrency`),
    one process worker, and the two deployments."""

    def __init__(self, work: Path, concurrency: int, worker_env: dict[str, str]) -> None:
        self.work = work
        self.concurrency = concurrency
        self.pool = f"backstop-load-{uuid.uuid4().hex[:8]}"
        self.server = PrefectServer(work / "prefect-server")
        self.worker: subprocess.Popen | None = None
        self.worker_log = work / "worker.log"
        self.worker_env = worker_env
        self.deployments: dict[str, str] = {}
        self.api: Api | None = None

    @property
    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def worker_pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid

    def start(self, timeout: float) -> Prefect:
        self.server.start(timeout=timeout)
        self.api = Api(self.server.api_url)
        env = clean_env(
            PREFECT_HOME=str(self.work / "prefect-worker"),
            PREFECT_API_URL=self.server.api_url,
            # Pick runs up quickly; the defaults (10 s) would idle a short run.
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            **self.worker_env,
        )
        # An operator's worker: backstop's defaults, not a test session's short retries
        # and connect timeouts (tests/conftest.py sets those for its own process).
        env = {k: v for k, v in env.items() if not k.startswith("BACKSTOP_")} | {
            k: v for k, v in self.worker_env.items() if k.startswith("BACKSTOP_")
        }
        argv = [
            str(PREFECT), "worker", "start", "--pool", self.pool, "--type", "process",
            "--limit", str(self.concurrency), "--name", f"{self.pool}-worker",
        ]  # fmt: skip
        with self.worker_log.open("ab") as log:
            # Its own process group: stopping it also stops the flow runs it started.
            self.worker = subprocess.Popen(
                argv, env=env, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        # The worker creates its pool (process type, default job template) when it is
        # missing; the pool then gets the load test's limit of flow runs in flight.
        deadline = time.monotonic() + timeout
        while True:
            if self.worker.poll() is not None:
                raise RuntimeError(f"prefect worker exited:\n{self.tail_worker_log()}")
            try:
                self.api.call("GET", f"/work_pools/{self.pool}")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the worker did not create its pool in {timeout} s:\n"
                        + self.tail_worker_log()
                    ) from None
                time.sleep(1)
        self.api.call(
            "PATCH", f"/work_pools/{self.pool}", json={"concurrency_limit": self.concurrency}
        )
        for key, (flow_name, entrypoint) in FLOWS.items():
            flow = self.api.call("POST", "/flows/", json={"name": flow_name})
            deployment = self.api.call(
                "POST",
                "/deployments/",
                json={
                    "name": f"load-{key}",
                    "flow_id": flow["id"],
                    "entrypoint": entrypoint,
                    "work_pool_name": self.pool,
                    "pull_steps": PULL_STEPS,
                    "tags": ["backstop", "load"],
                    "enforce_parameter_schema": False,
                },
            )
            self.deployments[key] = deployment["id"]
        return self

    def tail_worker_log(self, size: int = 4000) -> str:
        try:
            return self.worker_log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        """The worker first (its process group: the flow runs it started go with it),
        then the server; SIGKILL for what does not stop within 30 s."""
        if self.api:
            self.api.close()
        if self.worker and self.worker.poll() is None:
            _stop_group(self.worker)
        self.server.stop()

    # -- flow runs -----------------------------------------------------------------------
    def start_run(self, kind: str, request: dict, tags: list[str]) -> str:
        assert self.api is not None
        run = self.api.call(
            "POST",
            f"/deployments/{self.deployments[kind]}/create_flow_run",
            json={"parameters": {"request": request}, "tags": ["load", *tags]},
        )
        return run["id"]

    def wait_run(
        self,
        run_id: str,
        timeout: float,
        poll: float = 1.0,
        on_poll: Callable[[str], None] | None = None,
    ) -> dict:
        """The run once it is final; cancelled (and reported as such) after `timeout`.
        `on_poll` hears each state type polled."""
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while True:
            run = self.api.call("GET", f"/flow_runs/{run_id}")
            if on_poll:
                on_poll(run["state"]["type"])
            if run["state"]["type"] in FINAL:
                return run
            if self.worker is not None and self.worker.poll() is not None:
                run["state"]["type"] = "WORKER_EXITED"
                run["state"]["message"] = f"the worker exited: {self.tail_worker_log(1500)}"
                return run
            if time.monotonic() > deadline:
                self.api.call(
                    "POST",
                    f"/flow_runs/{run_id}/set_state",
                    json={"state": {"type": "CANCELLING", "message": "load test timeout"}},
                )
                run["state"]["type"] = "TIMED_OUT"
                return run
            time.sleep(poll)

    def error_logs(self, run_id: str, limit: int = 20) -> list[str]:
        """The run's log lines at WARNING and above (what a failure says)."""
        assert self.api is not None
        try:
            found = self.api.call(
                "POST",
                "/logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": [run_id]}, "level": {"ge_": 30}},
                    "sort": "TIMESTAMP_ASC",
                    "limit": limit,
                },
            )
        except RuntimeError as exc:
            return [f"(logs unavailable: {exc})"]
        return [f"{log['name']}: {log['message'][:1500]}" for log in found]

    def artifacts(self, run_id: str) -> list[dict]:
        assert self.api is not None
        return self.api.call(
            "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        )

    def runs_in_flight(self) -> int:
        """Flow runs of the pool the server counts as PENDING or RUNNING."""
        assert self.api is not None
        return self.api.call(
            "POST",
            "/flow_runs/count",
            json={
                "work_pools": {"name": {"any_": [self.pool]}},
                "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
            },
        )


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Whatever else is left in the group (a flow run the worker did not wait for).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


LEVELS = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback|Error: ")
STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")


def scan_log(path: Path, examples: int = 15) -> dict[str, Any]:
    """Counts of the WARNING / ERROR / traceback lines of a log, and its distinct such
    lines (time stamps left out), most frequent first."""
    counts = {"warning": 0, "error": 0, "traceback": 0}
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {**counts, "lines": []}
    for line in lines:
        found = LEVELS.search(line)
        if not found:
            continue
        if line.startswith("Traceback"):
            counts["traceback"] += 1
        elif found.group(1) == "WARNING":
            counts["warning"] += 1
        else:
            counts["error"] += 1
        text = STAMP.sub("", line.strip())[:300]
        seen[text] = seen.get(text, 0) + 1
    top = sorted(seen.items(), key=lambda item: -item[1])[:examples]
    return {**counts, "lines": [f"{n}x {text}" for text, n in top]}
