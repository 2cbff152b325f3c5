"""The cycles: each one a backup flow run and a restore flow run started through the REST
API, then the independent check of the restored target; `concurrency` slots take the
next cycle of a round-robin plan until none is left (or the soak's time is up)."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.load import sampling
from benchmarks.load.harness import Prefect
from benchmarks.load.technologies import Technology


class Runs:
    """The flow runs started and not yet final, and how many of them are RUNNING."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, str] = {}
        self.peak_running = 0
        self.peak_in_flight = 0

    def seen(self, run_id: str, state: str | None) -> None:
        with self.lock:
            if state is None:
                self.states.pop(run_id, None)
            else:
                self.states[run_id] = state
            running = sum(1 for s in self.states.values() if s == "RUNNING")
            self.peak_running = max(self.peak_running, running)
            self.peak_in_flight = max(self.peak_in_flight, len(self.states))

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "in_flight": len(self.states),
                "running": sum(1 for s in self.states.values() if s == "RUNNING"),
            }


def _epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


class Cycles:
    def __init__(
        self, prefect: Prefect, runs: Runs, work: Path, run_timeout: float, keep: bool
    ) -> None:
        self.prefect = prefect
        self.runs = runs
        self.work = work
        self.run_timeout = run_timeout
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self.started_runs: list[tuple[str, str]] = []  # (technology and kind, run id)
        self.lock = threading.Lock()
        self.first_done: float | None = None
        self.stopping = threading.Event()  # set on the way out: no new cycle starts

    def flow_run(self, kind: str, request: dict, tags: list[str]) -> dict:
        started = time.monotonic()
        run_id = self.prefect.start_run(kind, request, tags)
        self.runs.seen(run_id, "SCHEDULED")
        with self.lock:
            self.started_runs.append((f"{tags[0]} {kind}", run_id))
        try:
            run = self.prefect.wait_run(
                run_id, self.run_timeout, on_poll=lambda state: self.runs.seen(run_id, state)
            )
        finally:
            self.runs.seen(run_id, None)
        out = {
            "id": run_id,
            "state": run["state"]["type"],
            "wall_s": round(time.monotonic() - started, 1),
            "run_s": round(run.get("total_run_time") or 0.0, 1),
            "start_time": run.get("start_time"),
        }
        if out["state"] != "COMPLETED":
            out["message"] = (run["state"].get("message") or "")[:2000]
            out["logs"] = self.prefect.error_logs(run_id)
        return out

    def run(self, tech: Technology, number: int) -> dict[str, Any]:
        record: dict[str, Any] = {"cycle": number, "technology": tech.name, "verified": False}
        store = self.work / "stores" / f"{tech.name}-{number}"
        target = None
        try:
            target = tech.new_target(number)
            request = {
                "technology": tech.technology,
                "sources": tech.sources(),
                "store": {"url": store.as_uri()},
                "options": tech.backup_options(),
            }
            backup = record["backup"] = self.flow_run("backup", request, [tech.name])
            if backup["state"] != "COMPLETED":
                record["failure"] = f"backup run {backup['state']}: {backup.get('message')}"
                return record
            manifests = list((store / tech.technology).glob("*/manifest.json"))
            if len(manifests) != 1:
                record["failure"] = f"expected one backup in the cycle's store, found {manifests}"
                return record
            manifest = json.loads(manifests[0].read_text())
            record["backup_id"] = manifest["backup_id"]
            record["records"] = manifest["totals"].get("records")
            record["consistency"] = manifest["consistency"]["kind"]
            restore = record["restore"] = self.flow_run(
                "restore",
                {
                    "technology": tech.technology,
                    "store": {"url": store.as_uri()},
                    "targets": target.urls,
                    "backup": manifest["backup_id"],
                    "rename": target.rename,
                },
                [tech.name],
            )
            if restore["state"] != "COMPLETED":
                record["failure"] = f"restore run {restore['state']}: {restore.get('message')}"
                return record
            said = [
                a.get("description") or ""
                for a in self.prefect.artifacts(restore["id"])
                if (a.get("key") or "").startswith("backstop-restore-")
            ]
            record["restore_says_verified"] = any("verified equal to the backup" in d for d in said)
            if not record["restore_says_verified"]:
                record["failure"] = f"the restore's table does not say verified: {said}"
                return record
            started = _epoch(backup["start_time"]) or 0.0
            check = tech.check(target, manifest, started)
            record["check"] = check.details
            if check.problems:
                record["failure"] = "independent check: " + "; ".join(check.problems)
                return record
            record["verified"] = True
            return record
        except Exception as exc:
            record["failure"] = f"load test error: {type(exc).__name__}: {exc}"
            record["traceback"] = traceback.format_exc()[-3000:]
            return record
        finally:
            if not self.keep:
                if target is not None:
                    tech.drop_target(target)
                shutil.rmtree(store, ignore_errors=True)

    def slot(self, plan: Any, deadline: float | None, sampler: sampling.Sampler) -> None:
        """One of the `concurrency` slots: takes the next cycle until none is left."""
        while not self.stopping.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return
            with self.lock:
                try:
                    tech, number = next(plan)
                except StopIteration:
                    return
            print(f"   cycle {number} {tech.name}: started", flush=True)
            record = self.run(tech, number)
            with self.lock:
                self.records.append(record)
                if self.first_done is None:
                    self.first_done = time.monotonic() - sampler.started
            outcome = "verified" if record["verified"] else f"FAILED: {record.get('failure')}"
            print(f"   cycle {number} {tech.name}: {outcome}"[:600], flush=True)


def cycle_plan(techs: list[Technology], per_technology: int | None) -> Any:
    """(technology, cycle number) in round-robin order; endless without a count."""
    rounds = range(per_technology) if per_technology is not None else itertools.count()
    numbers = itertools.count(1)
    return ((tech, next(numbers)) for _ in rounds for tech in techs)
