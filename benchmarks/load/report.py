"""The load test's result files: the figures as .json, and the .md that shows them
(benchmarks/results/load-<mode>.md unless --out says otherwise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table


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
