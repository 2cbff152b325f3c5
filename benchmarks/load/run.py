"""Load test: backup-and-restore cycles of several technologies through a real `prefect
server` and a process worker, 4 flow runs in flight, while writers keep writing.

    .venv/bin/python -m benchmarks.load --mode short            # CI: ~2 cycles each
    .venv/bin/python -m benchmarks.load --mode soak --minutes 60
    .venv/bin/python benchmarks/load/run.py ...                  # the same
    make load                                                    # --mode short

Each cycle is two flow runs of deployments in a process work pool, started through the
REST API as the UI or an automation would: a backup of the technology's source into a
store of the cycle's own, then a restore of that backup into a fresh target (the restore
flow re-hashes every backup file before writing and compares the target with the
manifest afterwards). The load test then checks the target itself against the source as
of the backup's consistency point (benchmarks/load/technologies.py says how, per
technology), and drops the target and the store.

Technologies: Schemaless on SQLite (2 shards, WAL) and on PostgreSQL (2 databases),
ZooKeeper (a chroot) and Docstore (FerretDB). Servers: the URLs given (--pg-url,
--zk-hosts, --mongo-source, --mongo-target; the test suite passes its session's), or
started here from tests/servers/ and stopped at the end (tests/servers/install.sh
installs them).

Meanwhile the worker's process family (the worker, its flow-run processes and their
validators) and the server's are sampled every second (RSS, open files, threads,
processes); the report judges whether each stays flat (benchmarks/load/sampling.py).

Results: benchmarks/results/load-<mode>.md and .json (--out names the .md; the .json
goes beside it). Exit code 0 when every cycle's restore was verified, no writer failed
and every series is flat; 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as benchmarks/load/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import machine_line, markdown_table
from benchmarks.load import sampling
from benchmarks.load.harness import Prefect, scan_log
from benchmarks.load.technologies import (
    PASSWORD_ENV,
    Docstore,
    SchemalessPostgres,
    SchemalessSQLite,
    Technology,
    ZooKeeper,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
TECHNOLOGIES = ("schemaless-sqlite", "schemaless-postgresql", "zookeeper", "docstore")
MODES = {
    # Small sources, 2 cycles per technology: a few minutes on 2 cores.
    "short": {
        "cycles": 2,
        "scale": {"shards": 2, "cells": 10_000, "znodes": 1_000, "documents": 2_000, "writers": 2},
        "rate": 2.0,
    },
    # Cycles until --minutes have passed; the sources grow by what the writers add.
    "soak": {
        "cycles": None,
        "scale": {"shards": 2, "cells": 20_000, "znodes": 2_000, "documents": 4_000, "writers": 2},
        "rate": 1.0,
    },
}


# -- servers -------------------------------------------------------------------------------
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
        sys.path.insert(0, str(HERE.parents[1] / "tests"))  # the test suite's launchers
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


def make_technologies(
    names: list[str], servers: Servers, work: Path, run_id: str, mode: dict, rate: float
) -> list[Technology]:
    made: list[Technology] = []
    for name in names:
        common = {"work": work, "run_id": run_id, "scale": mode["scale"], "rate": rate}
        if name == "schemaless-sqlite":
            made.append(SchemalessSQLite(**common))
        elif name == "schemaless-postgresql":
            made.append(SchemalessPostgres(**common, admin_url=servers.pg_url))
        elif name == "zookeeper":
            made.append(ZooKeeper(**common, hosts=servers.zk_hosts))
        elif name == "docstore":
            made.append(
                Docstore(**common, source_url=servers.mongo_source, target_url=servers.mongo_target)
            )
    return made


# -- the cycles -----------------------------------------------------------------------------
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


# -- the run --------------------------------------------------------------------------------
def run_load(args: argparse.Namespace) -> dict[str, Any]:
    mode = MODES[args.mode]
    names = args.technologies
    rate = args.rate if args.rate is not None else mode["rate"]
    per_technology = args.cycles if args.cycles is not None else mode["cycles"]
    if args.mode == "soak":
        per_technology = args.cycles  # None: until --minutes have passed
    work = Path(tempfile.mkdtemp(prefix="backstop-load-", dir=args.work_dir))
    run_id = uuid.uuid4().hex[:6]
    wall = time.monotonic()
    servers = Servers(args, work, names)
    techs: list[Technology] = []
    prefect: Prefect | None = None
    sampler: sampling.Sampler | None = None
    runs = Runs()
    cycles: Cycles | None = None
    starter: threading.Thread | None = None
    try:
        print(f"-- load test {args.mode} in {work}", flush=True)
        servers.start()
        password = ""
        if servers.pg_url:
            from sqlalchemy.engine import make_url

            password = make_url(servers.pg_url).password or ""
        prefect = Prefect(work, args.concurrency, {PASSWORD_ENV: password})
        # The Prefect server starts (slowly) while the sources are filled.
        failed: list[BaseException] = []

        def start_prefect() -> None:
            try:
                prefect.start(timeout=args.startup_timeout)
            except BaseException as exc:
                failed.append(exc)

        starter = threading.Thread(target=start_prefect, name="prefect-start")
        starter.start()
        techs = make_technologies(names, servers, work, run_id, mode, rate)
        for tech in techs:
            tech.setup()
        starter.join()
        if failed:
            raise failed[0]
        setup_s = round(time.monotonic() - wall, 1)
        print(f"   servers, sources and Prefect ready in {setup_s} s", flush=True)
        sampler = sampling.Sampler(
            prefect.worker_pid, prefect.server_pid, runs.counts, interval=args.interval
        )
        sampler.start()
        for tech in techs:
            tech.start_writers()
        cycles = Cycles(prefect, runs, work, args.run_timeout, args.keep)
        plan = cycle_plan(techs, per_technology)
        deadline = time.monotonic() + args.minutes * 60 if args.mode == "soak" else None
        slots = [
            threading.Thread(
                target=cycles.slot, args=(plan, deadline, sampler), name=f"slot-{i}", daemon=True
            )
            for i in range(args.concurrency)
        ]
        for slot in slots:
            slot.start()
        for slot in slots:
            slot.join()
        cycles_s = round(time.monotonic() - wall - setup_s, 1)
        leftover = sampler.leftover()
        sampler.stop()
        for tech in techs:
            tech.stop_writers()
        return build_report(
            args, techs, cycles, sampler, runs, leftover,
            {"setup_s": setup_s, "cycles_s": cycles_s, "rate": rate,
             "per_technology": per_technology},
            prefect, wall,
        )  # fmt: skip
    finally:
        if cycles is not None:
            cycles.stopping.set()
        if sampler is not None:
            sampler.stop()
        for tech in techs:
            tech.stop_writers()
        for tech in techs:
            try:
                tech.teardown()
            except Exception as exc:
                print(f"teardown of {tech.name}: {exc}", file=sys.stderr)
        if starter is not None:
            starter.join()  # a server still starting would be left running otherwise
        if prefect is not None:
            if args.keep:
                print(f"   kept {work}", flush=True)
            prefect.stop()
        servers.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# -- the report -----------------------------------------------------------------------------
def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def build_report(
    args: argparse.Namespace,
    techs: list[Technology],
    cycles: Cycles,
    sampler: sampling.Sampler,
    runs: Runs,
    leftover: list[str],
    timing: dict[str, Any],
    prefect: Prefect,
    wall: float,
) -> dict[str, Any]:
    records = sorted(cycles.records, key=lambda r: r["cycle"])
    warm_up = cycles.first_done or 0.0
    judgments = sampling.judge(sampler.samples, warm_up, cycles.started_runs, sampler.run_peaks)
    for record in records:
        for kind in ("backup", "restore"):
            if kind in record:
                record[kind]["peak"] = sampler.run_peaks.get(record[kind]["id"])
    writers = [{**vars(w.stats), "acked": len(w.acked)} for tech in techs for w in tech.writers]
    per_tech = []
    for tech in techs:
        mine = [r for r in records if r["technology"] == tech.name]
        per_tech.append(
            {
                "technology": tech.name,
                "cycles": len(mine),
                "verified": sum(r["verified"] for r in mine),
                "failures": sum(not r["verified"] for r in mine),
                "backup_wall_s": _median([r["backup"]["wall_s"] for r in mine if "backup" in r]),
                "backup_run_s": _median([r["backup"]["run_s"] for r in mine if "backup" in r]),
                "restore_wall_s": _median([r["restore"]["wall_s"] for r in mine if "restore" in r]),
                "restore_run_s": _median([r["restore"]["run_s"] for r in mine if "restore" in r]),
                "records": _median([r["records"] for r in mine if r.get("records") is not None]),
                "consistency": ", ".join(
                    f"{k} {v}"
                    for k, v in sorted(
                        {
                            c: sum(1 for r in mine if r.get("consistency") == c)
                            for c in {r.get("consistency") for r in mine if r.get("consistency")}
                        }.items()
                    )
                ),
            }
        )
    failures = [r for r in records if not r["verified"]]
    samples = sampler.samples
    cpu = {}
    if samples:
        cpu = {
            "worker_family": samples[-1]["worker_family"]["cpu_s"],
            "server": round(samples[-1]["server"]["cpu_s"] - samples[0]["server"]["cpu_s"], 1),
            "load_driver": round(samples[-1]["driver_cpu_s"] - samples[0]["driver_cpu_s"], 1),
        }
    writer_errors = sum(w["errors"] for w in writers)
    flat = all(j["flat"] is not False for j in judgments) and not leftover
    report = {
        "mode": args.mode,
        "minutes": args.minutes if args.mode == "soak" else None,
        "concurrency": args.concurrency,
        "technologies": [t.name for t in techs],
        "scale": MODES[args.mode]["scale"],
        "machine": machine_line(),
        "wall_s": round(time.monotonic() - wall, 1),
        **timing,
        "cycles": len(records),
        "verified": sum(r["verified"] for r in records),
        "failures": len(failures),
        "writer_errors": writer_errors,
        "cpu_s": cpu,
        "peak_running": runs.peak_running,
        "peak_in_flight": runs.peak_in_flight,
        "flat": flat,
        "leftover_processes": leftover,
        "warm_up_s": warm_up,
        "ok": not failures and not writer_errors and flat and bool(records),
        "per_technology": per_tech,
        "writers": writers,
        "judgments": judgments,
        "cycle_records": records,
        "samples": sampler.samples,
    }
    report["logs"] = {
        "worker": scan_log(prefect.worker_log),
        "server": scan_log(prefect.server.log),
    }
    if failures:
        report["worker_log_tail"] = prefect.tail_worker_log(6000)
    return report


def _series_rows(samples: list[dict], rows: int = 12) -> list[dict]:
    """`rows` samples spread evenly over the run, flattened for a table."""
    if not samples:
        return []
    step = max(1, (len(samples) - 1) // (rows - 1)) if len(samples) > 1 else 1
    picked = samples[::step][: rows - 1]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [
        {
            "t": s["t"],
            "running": s.get("running"),
            "w_rss": s["worker"]["rss_mb"],
            "w_fds": s["worker"]["fds"],
            "w_thr": s["worker"]["threads"],
            "f_rss": s["worker_family"]["rss_mb"],
            "f_fds": s["worker_family"]["fds"],
            "f_thr": s["worker_family"]["threads"],
            "f_proc": s["worker_family"]["processes"],
            "s_rss": s["server"]["rss_mb"],
            "s_fds": s["server"]["fds"],
            "s_thr": s["server"]["threads"],
            "load1": s["load1"],
        }
        for s in picked
    ]


def _cycle_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in ("cycle", "technology", "consistency", "records")}
    row["verified"] = "yes" if record["verified"] else "NO"
    for kind in ("backup", "restore"):
        run = record.get(kind) or {}
        peak = run.get("peak") or {}
        row[f"{kind}_s"] = run.get("wall_s")
        row[f"{kind}_rss"] = peak.get("rss_mb")
        row[f"{kind}_fds"] = peak.get("fds")
    return row


def markdown(report: dict[str, Any]) -> str:
    mode = report["mode"] + (f", {report['minutes']} min" if report["minutes"] else "")
    scale = report["scale"]
    lines = [
        f"# Load test ({mode})",
        "",
        "`python -m benchmarks.load` (benchmarks/load/run.py): backup-and-restore cycles of "
        f"{', '.join(report['technologies'])} as flow runs of deployments in a process work "
        f"pool, on one `prefect worker` and a real `prefect server`, {report['concurrency']} "
        "flow runs in flight, while writer threads keep adding to every source "
        f"({report['rate']:g} writes/s per writer; one writer per shard, ZooKeeper subtree and "
        "Docstore collection). Each restore goes into a fresh target, is verified by the "
        "restore flow (backup files re-hashed before, target compared with the manifest "
        "after) and then checked against the source as of the backup's consistency point "
        "(benchmarks/load/technologies.py).",
        "",
        f"Sources at the start: Schemaless {scale['cells']:,} cells in {scale['shards']} "
        f"shards (SQLite in WAL mode; PostgreSQL), ZooKeeper {scale['znodes']:,} znodes, "
        f"Docstore {scale['documents']:,} documents in {scale['writers']} collections "
        "(FerretDB).",
        "",
        report["machine"],
        "",
        "## Outcome",
        "",
        f"- **{report['cycles']} cycles, {report['failures']} failures, "
        f"{report['verified']} restores verified**; writer errors: {report['writer_errors']}.",
        f"- Flow runs running at once: at most {report['peak_running']} "
        f"(started and not final: at most {report['peak_in_flight']}).",
        f"- Resources flat: **{'yes' if report['flat'] else 'NO'}**"
        + (
            f"; processes left in the worker's family after the last run: "
            f"{report['leftover_processes']}"
            if report["leftover_processes"]
            else "; no process left in the worker's family after the last run."
        ),
        f"- Wall time {report['wall_s']} s: set-up (servers, sources, Prefect server and "
        f"worker) {report['setup_s']} s, cycles {report['cycles_s']} s.",
        "- CPU seconds during the cycles: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["cpu_s"].items())
        + " (the load driver: writers, checks, polling).",
        "",
        "## Per technology",
        "",
        "Times are medians; *wall* is from the flow run's creation through the API to its "
        "final state as polled (worker pick-up and process start included), *run* is "
        "Prefect's total_run_time.",
        "",
        *markdown_table(
            [
                ("technology", "technology"),
                ("cycles", "cycles"),
                ("verified", "verified"),
                ("failures", "failures"),
                ("backup_wall_s", "backup wall s"),
                ("backup_run_s", "backup run s"),
                ("restore_wall_s", "restore wall s"),
                ("restore_run_s", "restore run s"),
                ("records", "records per backup"),
                ("consistency", "consistency kinds"),
            ],
            report["per_technology"],
        ),
        "",
        "## Cycles",
        "",
        "Each cycle's flow runs: wall seconds, and the run's peak RSS (its process and its "
        "validator, MB) and open files.",
        "",
        *markdown_table(
            [
                ("cycle", "cycle"),
                ("technology", "technology"),
                ("consistency", "consistency"),
                ("records", "records"),
                ("backup_s", "backup s"),
                ("backup_rss", "backup peak RSS"),
                ("backup_fds", "backup peak files"),
                ("restore_s", "restore s"),
                ("restore_rss", "restore peak RSS"),
                ("restore_fds", "restore peak files"),
                ("verified", "verified"),
            ],
            [_cycle_row(r) for r in report["cycle_records"]],
        ),
        "",
        "## Writers",
        "",
        *markdown_table(
            [
                ("name", "writer"),
                ("ops", "writes"),
                ("items", "items added"),
                ("errors", "errors"),
                ("slowest_s", "slowest write s"),
            ],
            report["writers"],
        ),
        "",
        "## Resources",
        "",
        "Sampled every second with psutil. *Worker* is the `prefect worker` process alone; "
        "the *worker family* adds the flow-run processes it starts (each in a session of "
        "its own) and their Great Expectations validators; the *server* is the `prefect "
        "server` process family. Flat: the median of the last third of the samples after "
        f"warm-up (the first {report['warm_up_s']:.0f} s, until the first cycle completed) "
        "is at most the first third's x 1.2 + 32 MB / 16 files / 8 threads. The worker "
        "family's total follows how many runs are in flight (reported, not judged); each "
        "flow run's own peak is judged instead against the earlier runs of the same "
        "technology and kind (last third against first third, or the second run against "
        "the first), with the same tolerances (benchmarks/load/sampling.py).",
        "",
        *markdown_table(
            [
                ("title", "series"),
                ("metric", "metric"),
                ("first_sample", "first sample"),
                ("last_sample", "last sample"),
                ("first_third_median", "first third median"),
                ("last_third_median", "last third median"),
                ("max", "max"),
                ("limit", "limit"),
                ("flat", "flat"),
                ("trend_text", "fitted trend"),
            ],
            [
                {**j, "trend_text": f"{j['trend']:+g} / {j['trend_per']}"}
                if j.get("trend") is not None
                else j
                for j in report["judgments"]
            ],
        ),
        "",
        "Over time (w = worker, f = worker family, s = server; RSS in MB):",
        "",
        *markdown_table(
            [
                ("t", "t s"),
                ("running", "runs running"),
                ("w_rss", "w RSS"),
                ("w_fds", "w files"),
                ("w_thr", "w threads"),
                ("f_rss", "f RSS"),
                ("f_fds", "f files"),
                ("f_thr", "f threads"),
                ("f_proc", "f processes"),
                ("s_rss", "s RSS"),
                ("s_fds", "s files"),
                ("s_thr", "s threads"),
                ("load1", "load 1 min"),
            ],
            _series_rows(report["samples"]),
        ),
        "",
    ]
    lines += [
        "## Log lines at WARNING and above",
        "",
        "The worker's log (it carries its flow runs' output) and the server's: counts, then "
        "the distinct lines, most frequent first.",
        "",
    ]
    for name, found in report["logs"].items():
        lines.append(
            f"- {name}: {found['warning']} warnings, {found['error']} errors, "
            f"{found['traceback']} tracebacks"
        )
        lines += ["  - `" + line.replace("`", "'") + "`" for line in found["lines"]]
    lines.append("")
    failed = [r for r in report["cycle_records"] if not r["verified"]]
    if failed:
        lines += ["## Failures", ""]
        for record in failed:
            lines.append(f"- cycle {record['cycle']} {record['technology']}: {record['failure']}")
            for key in ("backup", "restore"):
                for log in (record.get(key) or {}).get("logs", [])[:5]:
                    lines.append(f"  - {key} log: {log[:400]}")
        lines.append("")
    lines += [
        f"Samples and per-cycle records: {report.get('json_name', 'the .json beside this file')}.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    report["json_name"] = json_path.name
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.write_text(markdown(report))


# -- the command -----------------------------------------------------------------------------
def technologies_arg(value: str) -> list[str]:
    names = [n for n in value.split(",") if n]
    unknown = sorted(set(names) - set(TECHNOLOGIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(TECHNOLOGIES)}; got {value!r}")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--mode", choices=sorted(MODES), default="short")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long to cycle")
    parser.add_argument(
        "--cycles", type=int, help="cycles per technology (short: 2; soak: until --minutes)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="flow runs in flight")
    parser.add_argument("--rate", type=float, help="writes per second per writer")
    parser.add_argument(
        "--technologies", type=technologies_arg, default=list(TECHNOLOGIES),
        help=f"comma-separated, of {', '.join(TECHNOLOGIES)}",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="the .md report (.json beside it)")
    parser.add_argument("--pg-url", help="a PostgreSQL admin URL (CREATE DATABASE)")
    parser.add_argument("--zk-hosts", help="host:port of a ZooKeeper server")
    parser.add_argument("--mongo-source", help="mongodb:// URL of the Docstore source server")
    parser.add_argument("--mongo-target", help="mongodb:// URL of the Docstore target server")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="per flow run, s")
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--work-dir", help="where the private work folder goes (default /tmp)")
    parser.add_argument(
        "--keep", action="store_true", help="keep targets, stores and the work folder"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = args.out or RESULTS / f"load-{args.mode}.md"
    # `timeout` and `kill` send SIGTERM: unwind (stopping the worker, the server and the
    # servers started here in run_load's `finally`) instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run_load(args)
    write_report(report, out)
    print(
        f"-- {report['cycles']} cycles, {report['failures']} failures, {report['verified']} "
        f"verified, writer errors {report['writer_errors']}, flat "
        f"{'yes' if report['flat'] else 'NO'}, {report['wall_s']} s; report {out}",
        flush=True,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
