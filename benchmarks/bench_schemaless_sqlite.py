"""Schemaless on SQLite: backup and restore speed and peak RSS at 100k and 1M cells.

Each size is measured in fresh processes, next to SQLite's own tools on the same
data in the same run: `sqlite3 .dump | zstd -3` (the logical peer of a backup) and
`sqlite3 .backup` (a page copy). Run with the project's virtualenv:

    .venv/bin/python benchmarks/bench_schemaless_sqlite.py [--sizes 100000,1000000]

Results are printed and written to benchmarks/results/schemaless-sqlite.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import run_flow, timed_shell  # noqa: E402


def measure(cells: int, work: Path) -> dict:
    from backstop.flows.demo import make_schemaless_datastore

    started = time.perf_counter()
    [source] = make_schemaless_datastore(work / "source", shards=1, cells=cells)
    generate_s = time.perf_counter() - started
    db = source.removeprefix("sqlite:///")
    store = {"url": (work / "store").as_uri()}

    backup = run_flow("backup", {"technology": "schemaless", "sources": [source], "store": store})
    (work / "restored").mkdir()
    target = f"sqlite:///{work / 'restored' / 'shard0.db'}"
    restore = run_flow(
        "restore",
        {
            "technology": "schemaless",
            "store": store,
            "targets": [target],
            "backup": backup["backup_id"],
        },
    )

    dump_s = timed_shell(f"sqlite3 {db} .dump | zstd -q -3 -o {work / 'dump.sql.zst'}")
    copy_s = timed_shell(f'sqlite3 {db} ".backup {work / "copy.db"}"')
    load_s = timed_shell(f"zstd -dc {work / 'dump.sql.zst'} | sqlite3 {work / 'loaded.db'}")
    raw_mb = backup["raw_bytes"] / 1e6
    return {
        "cells": cells,
        "generate_s": round(generate_s, 1),
        "raw_mb": round(raw_mb, 1),
        "stored_mb": round(backup["bytes"] / 1e6, 1),
        "backup_s": backup["duration_s"],
        "backup_cells_per_s": round(cells / backup["duration_s"]),
        "backup_mb_per_s": round(raw_mb / backup["duration_s"], 1),
        "backup_peak_rss_mb": backup["peak_rss_mb"],
        "restore_s": restore["duration_s"],
        "restore_cells_per_s": round(cells / restore["duration_s"]),
        "restore_peak_rss_mb": restore["peak_rss_mb"],
        "sqlite3_dump_zstd_s": round(dump_s, 2),
        "sqlite3_backup_s": round(copy_s, 2),
        "sqlite3_load_dump_s": round(load_s, 2),
        "backup_vs_dump": round(dump_s / backup["duration_s"], 2),
        "restore_vs_load": round(load_s / restore["duration_s"], 2),
    }


def report(rows: list[dict]) -> str:
    lines = [
        "# Schemaless on SQLite: backup and restore",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}), one SQLite shard, "
        "local store, zstd level 3. Durations are the flows' own (restore includes the "
        "pre-restore checksum pass and the post-restore digest verification); peak RSS is "
        "the flow process's. Peers ran on the same file in the same run.",
        "",
        "| cells | raw MB | stored MB | backup s | cells/s | MB/s | backup peak RSS MB "
        "| restore s | restore cells/s | restore peak RSS MB | `.dump\\|zstd` s | backup vs dump "
        "| `.backup` s | load dump s | restore vs load |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']:,} | {r['raw_mb']} | {r['stored_mb']} | {r['backup_s']} "
            f"| {r['backup_cells_per_s']:,} | {r['backup_mb_per_s']} | {r['backup_peak_rss_mb']} "
            f"| {r['restore_s']} | {r['restore_cells_per_s']:,} | {r['restore_peak_rss_mb']} "
            f"| {r['sqlite3_dump_zstd_s']} | {r['backup_vs_dump']}x | {r['sqlite3_backup_s']} "
            f"| {r['sqlite3_load_dump_s']} | {r['restore_vs_load']}x |"
        )
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        lines += [
            "",
            f"Peak RSS ratio {large['cells']:,} / {small['cells']:,} cells: backup "
            f"{large['backup_peak_rss_mb'] / small['backup_peak_rss_mb']:.2f}x, restore "
            f"{large['restore_peak_rss_mb'] / small['restore_peak_rss_mb']:.2f}x "
            "(the target is at most 1.5x: memory stays flat as data grows).",
        ]
    lines += ["", "Raw rows:", "", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", default=str(HERE / "results" / "schemaless-sqlite.md"))
    args = parser.parse_args()
    rows = []
    for cells in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"backstop-bench-{cells}-"))
        try:
            rows.append(measure(cells, work))
            print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = report(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
