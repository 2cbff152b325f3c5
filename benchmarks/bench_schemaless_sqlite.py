"""Schemaless on SQLite: the `backstop` command's wall time and peak RSS for backup and
restore at 100k and 1M cells, next to SQLite's own tools on the same data in the same
run: `sqlite3 .dump | zstd -3` (the logical peer of a backup), loading that dump (the
peer of a restore) and `sqlite3 .backup` (a page copy). The real CLI
(`backstop backup|restore ... --json`) runs as a subprocess, once against a running
`prefect server` and once with Prefect's temporary server on a warm PREFECT_HOME
(--modes); the restored cells are compared with the source.

    .venv/bin/python benchmarks/bench_schemaless_sqlite.py [--sizes 100k,1M]
        [--modes server,temporary]

Results are printed and written to benchmarks/results/schemaless-sqlite.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    MODE_TITLES,
    RSS_NOTE,
    PrefectModes,
    cli_fields,
    machine_line,
    markdown_table,
    modes_arg,
    ratio,
    report_tail,
    run_cli,
    section,
    sizes_arg,
    timed_shell,
)


def digest(db: Path) -> tuple[int, int]:
    """Count and an order-independent sum of per-row hashes (added_id left out)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT row_key, column_name, ref_key, body, created_at FROM cells")
        count, total = 0, 0
        for row in rows:
            count += 1
            total += hash(row) & 0xFFFFFFFFFFFF
    return count, total


def peers(db: Path, work: Path) -> dict:
    dump = work / "dump.sql.zst"
    dump_s, dump_rss = timed_shell(f"sqlite3 {db} .dump | zstd -q -3 -o {dump}")
    copy_s, _ = timed_shell(f'sqlite3 {db} ".backup {work / "copy.db"}"')
    load_s, load_rss = timed_shell(f"zstd -dc {dump} | sqlite3 {work / 'loaded.db'}")
    equal = digest(work / "loaded.db")
    for name in ("copy.db", "loaded.db", "dump.sql.zst"):
        (work / name).unlink()
    return {"dump_s": dump_s, "dump_rss_mb": dump_rss, "copy_s": copy_s, "load_s": load_s,
            "load_rss_mb": load_rss, "peer_digest": equal}  # fmt: skip


def measure(cells: int, work: Path, prefect: PrefectModes) -> list[dict]:
    from backstop.flows.demo import make_schemaless_datastore

    started = time.perf_counter()
    [source] = make_schemaless_datastore(work / "source", shards=1, cells=cells)
    generate_s = time.perf_counter() - started
    db = Path(source.removeprefix("sqlite:///"))
    os.sync()
    expected = digest(db)
    with section(f"peers {cells:,}"):
        peer = peers(db, work)
    peer["peer_restored_equal"] = peer.pop("peer_digest") == expected
    rows = []
    for mode in prefect.modes:
        env = prefect.env(mode)
        store = work / f"store-{mode}"
        with section(f"backup {cells:,} ({mode})"):
            backup = run_cli(
                ["backup", "schemaless", "--source", source, "--store", str(store)], env
            )
        prefect.note_server_rss()
        (work / f"restored-{mode}").mkdir()
        target = work / f"restored-{mode}" / "shard0.db"
        with section(f"restore {cells:,} ({mode})"):
            restore = run_cli(
                ["restore", "schemaless", "--store", str(store), "--target", f"sqlite:///{target}",
                 "--backup", backup["backup_id"]], env,
            )  # fmt: skip
        prefect.note_server_rss()
        row = {
            "cells": cells,
            "mode": mode,
            "backup_ratio": ratio(peer["dump_s"], backup["wall_s"]),
            "restore_ratio": ratio(peer["load_s"], restore["wall_s"]),
            **cli_fields("backup", backup),
            **cli_fields("restore", restore),
            **peer,
            "backup_flow_ratio": ratio(peer["dump_s"], backup["duration_s"]),
            "restore_flow_ratio": ratio(peer["load_s"], restore["duration_s"]),
            "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
            "stored_mb": round(backup["bytes"] / 1e6, 1),
            "generate_s": round(generate_s, 1),
            "restored_equal": digest(target) == expected,
        }
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(work / f"restored-{mode}", ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


COLUMNS = [
    ("cells", "cells"), ("mode", "Prefect"),
    ("backup_ratio", "backup: wall ratio"), ("restore_ratio", "restore+verify: wall ratio"),
    ("backup_wall_s", "backup wall s"), ("dump_s", "`.dump\\|zstd` wall s"),
    ("restore_wall_s", "restore wall s"), ("load_s", "load dump wall s"),
    ("copy_s", "`.backup` wall s"),
    ("backup_flow_s", "backup in-flow s"), ("backup_phases_s", "backup phases s"),
    ("backup_flow_ratio", "backup: in-flow ratio"),
    ("restore_flow_s", "restore in-flow s"), ("restore_phases_s", "restore phases s"),
    ("restore_flow_ratio", "restore: in-flow ratio"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("dump_rss_mb", "dump RSS MB"), ("restore_rss_mb", "restore RSS MB"),
    ("restore_tree_rss_mb", "restore tree RSS MB"), ("load_rss_mb", "load RSS MB"),
    ("raw_mb", "raw MB"), ("stored_mb", "stored MB"),
    ("restored_equal", "restored = source"), ("peer_restored_equal", "peer's = source"),
]  # fmt: skip


def report(rows: list[dict], prefect: PrefectModes) -> str:
    modes = "; ".join(f"*{m}*: {MODE_TITLES[m]}" for m in prefect.modes)
    lines = [
        "# Schemaless on SQLite: backup and restore",
        "",
        machine_line(),
        "",
        "One SQLite shard, local store, zstd level 3. Each figure is one run of the "
        "`backstop` command (subprocess, `--json`) timed from start to exit, under each "
        f"Prefect set-up ({modes}); the peers ran once per size on the same file in the "
        "same run. *Wall ratio* = peer wall time / backstop wall time: above 1 means "
        "backstop is faster. The restore includes the checksum pass before and the digest "
        "verification after, which the peer does not do. *In-flow* is the flow's own "
        f"duration (duration_s). {RSS_NOTE}{prefect.server_note()}",
        "",
        *markdown_table(COLUMNS, rows),
    ]
    return "\n".join(lines) + "\n" + report_tail(rows, "mode", "cells")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=sizes_arg, default=os.environ.get("BENCH_SIZES", "100k,1M"))
    parser.add_argument("--modes", type=modes_arg, default="server,temporary")
    parser.add_argument("--out", default=str(HERE / "results" / "schemaless-sqlite.md"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="backstop-bench-sqlite-"))
    rows = []
    try:
        with PrefectModes(root, args.modes) as prefect:
            for cells in args.sizes:
                work = root / f"cells-{cells}"
                work.mkdir()
                rows += measure(cells, work, prefect)
                shutil.rmtree(work, ignore_errors=True)
            text = report(rows, prefect)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
