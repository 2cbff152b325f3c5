"""The report's figures, gathered once the cycles are done: per cycle and per technology,
the writers, the resource judgments and the log scan. This is what the .json holds and
the .md shows (benchmarks/load/report.py)."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import machine_line
from benchmarks.load import sampling
from benchmarks.load.cycles import Cycles, Runs
from benchmarks.load.harness import Prefect, scan_log
from benchmarks.load.options import MODES
from benchmarks.load.technologies import Technology


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
