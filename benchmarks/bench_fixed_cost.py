"""The fixed cost of a command: `backstop backup` and `backstop restore` of 100 SQLite
cells through the real CLI, where nearly all the time is start-up and shutdown.

Three Prefect set-ups, `--runs` runs each (median), interleaved so that load drifts hit
all of them alike:
- *fresh*: Prefect's temporary server on a PREFECT_HOME that does not exist yet (a user's
  first command: the server creates and migrates its database);
- *temporary*: the temporary server on a warm PREFECT_HOME;
- *server*: PREFECT_API_URL pointing at a running `prefect server` (started here).

Then the split of where the time goes, each measured on its own in a fresh process (the
CLI may overlap some of them, so they need not add up): `python -X importtime` totals for
prefect, great_expectations and the CLI module (backstop.flows.cli), `prefect server
start` until it answers (fresh and warm home), and the remainder of the warm temporary
run. The script measures whatever the CLI does; it assumes nothing about how.

    .venv/bin/python benchmarks/bench_fixed_cost.py [--runs 3] [--cells 100]

Results are printed and written to benchmarks/results/fixed-cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
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
    PrefectServer,
    clean_env,
    fresh_env,
    machine_line,
    markdown_table,
    median,
    run_cli,
    section,
)

SET_UPS = ("fresh", "temporary", "server")
CLI_MODULE = "backstop.flows.cli"


def cells_of(db: Path) -> list[tuple]:
    """The user's data in a cell table (added_id left out: the table's own counter)."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT row_key, column_name, ref_key, body, created_at FROM cells "
            "ORDER BY row_key, column_name, ref_key"
        ).fetchall()


def one_run(set_up: str, run: int, source: str, work: Path, prefect: PrefectModes) -> dict:
    """One backup and one restore under a set-up; fresh means a new home per command."""
    place = work / f"{set_up}-{run}"
    env = (lambda: fresh_env(place / f"home-{time.monotonic_ns()}")) if set_up == "fresh" else (
        lambda: prefect.env(set_up)
    )  # fmt: skip
    store = place / "store"
    backup = run_cli(["backup", "schemaless", "--source", source, "--store", str(store)], env())
    prefect.note_server_rss()
    (place / "target").mkdir(parents=True, exist_ok=True)
    target = place / "target" / "shard0.db"
    restore = run_cli(
        ["restore", "schemaless", "--store", str(store), "--target", f"sqlite:///{target}",
         "--backup", backup["backup_id"]], env(),
    )  # fmt: skip
    prefect.note_server_rss()
    equal = cells_of(target) == cells_of(Path(source.removeprefix("sqlite:///")))
    shutil.rmtree(place, ignore_errors=True)
    return {"set_up": set_up, "run": run, "backup": backup, "restore": restore, "equal": equal}


def import_seconds(module: str) -> dict:
    """`python -X importtime -c "import module"`: the module's cumulative import time,
    and whether importing it also imports prefect and great_expectations."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, check=True, env=clean_env(),
    )  # fmt: skip
    cumulative, imported = 0, set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if not cum.isdigit():
            continue
        imported.add(name.split(".")[0])
        if name == module:
            cumulative = int(cum)
    return {
        "module": module,
        "import_s": round(cumulative / 1e6, 2),
        "pulls_in_prefect": "prefect" in imported,
        "pulls_in_great_expectations": "great_expectations" in imported,
    }


def server_start_seconds(home: Path) -> float:
    """`prefect server start` until its health check answers, then stopped."""
    started = time.perf_counter()
    server = PrefectServer(home).start()
    seconds = time.perf_counter() - started
    server.stop()
    return round(seconds, 2)


def split(rows: list[dict], work: Path, runs: int) -> dict:
    """Where a command's time goes, each part measured on its own (medians of `runs`)."""
    imports = {}
    for module in ("prefect", "great_expectations", CLI_MODULE):
        with section(f"import {module}"):
            measured = [import_seconds(module) for _ in range(runs)]
        imports[module] = {**measured[0], "import_s": median([m["import_s"] for m in measured])}
    with section("prefect server start"):
        fresh = [server_start_seconds(work / f"start-home-{i}") for i in range(runs)]
        warm = [server_start_seconds(work / "start-home-0") for _ in range(runs)]
    warm_runs = [r for r in rows if r["set_up"] == "temporary"]
    wall = median([r["backup"]["wall_s"] for r in warm_runs])
    flow = median([r["backup"]["duration_s"] for r in warm_runs])
    cli_import = imports[CLI_MODULE]["import_s"]
    return {
        "imports": imports,
        "server_start_fresh_s": median(fresh),
        "server_start_warm_s": median(warm),
        "temporary_backup_wall_s": wall,
        "temporary_backup_flow_s": flow,
        "remainder_s": round(wall - cli_import - median(warm) - flow, 2),
    }


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for set_up in SET_UPS:
        mine = [r for r in rows if r["set_up"] == set_up]
        if not mine:
            continue
        out.append(
            {
                "set_up": set_up,
                "backup_wall_s": median([r["backup"]["wall_s"] for r in mine]),
                "restore_wall_s": median([r["restore"]["wall_s"] for r in mine]),
                "backup_runs_s": [r["backup"]["wall_s"] for r in mine],
                "restore_runs_s": [r["restore"]["wall_s"] for r in mine],
                "backup_flow_s": median([r["backup"]["duration_s"] for r in mine]),
                "restore_flow_s": median([r["restore"]["duration_s"] for r in mine]),
                "backup_rss_mb": max(r["backup"]["rss_mb"] for r in mine),
                "backup_tree_rss_mb": max(r["backup"]["tree_rss_mb"] for r in mine),
                "restore_rss_mb": max(r["restore"]["rss_mb"] for r in mine),
                "restore_tree_rss_mb": max(r["restore"]["tree_rss_mb"] for r in mine),
                "restored_equal": all(r["equal"] for r in mine),
                "target": {"server": "≤ 4 s", "temporary": "≤ 9 s"}.get(set_up, "—"),
            }
        )
    return out


COLUMNS = [
    ("set_up", "Prefect"), ("backup_wall_s", "backup wall s (median)"),
    ("restore_wall_s", "restore wall s (median)"), ("target", "target"),
    ("backup_runs_s", "backup runs s"), ("restore_runs_s", "restore runs s"),
    ("backup_flow_s", "backup in-flow s"), ("restore_flow_s", "restore in-flow s"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("restore_rss_mb", "restore RSS MB"), ("restore_tree_rss_mb", "restore tree RSS MB"),
    ("restored_equal", "restored = source"),
]  # fmt: skip


def report(cells: int, runs: int, table: list[dict], parts: dict, prefect: PrefectModes) -> str:
    imports = parts["imports"]
    set_ups = "; ".join(f"*{s}*: {MODE_TITLES[s]}" for s in SET_UPS)
    lines = [
        f"# Fixed cost of a command: {cells} SQLite cells",
        "",
        machine_line(),
        "",
        f"`backstop backup` and `backstop restore` of {cells} cells (one SQLite shard, local "
        "store), the real CLI as a subprocess (`--json`) timed from start to exit; "
        f"{runs} runs per set-up, interleaved, median ({set_ups}). *In-flow* is the "
        f"flow's own duration (duration_s). {RSS_NOTE}{prefect.server_note()}",
        "",
        *markdown_table(COLUMNS, table),
        "",
        "## Where the time goes",
        "",
        "Each part measured on its own in a fresh process (medians); the CLI may overlap "
        "some of them (e.g. imports while the temporary server starts), so they need not "
        "add up to the wall time.",
        "",
        "| part | seconds | note |",
        "|---|---|---|",
    ]
    for module, found in imports.items():
        also = [
            name
            for name, key in (("prefect", "pulls_in_prefect"),
                              ("great_expectations", "pulls_in_great_expectations"))
            if found[key] and name != module
        ]  # fmt: skip
        note = f"also imports {', '.join(also)}" if also else ""
        lines.append(f"| `import {module}` (python -X importtime) | {found['import_s']} | {note} |")
    lines += [
        f"| `prefect server start` until healthy, fresh home | {parts['server_start_fresh_s']} "
        "| creates and migrates the database |",
        f"| `prefect server start` until healthy, warm home | {parts['server_start_warm_s']} "
        "| about what the temporary server needs per command |",
        f"| backup in-flow (duration_s), temporary set-up | {parts['temporary_backup_flow_s']} "
        "| the flow's own work |",
        f"| remainder of the temporary set-up's backup wall ({parts['temporary_backup_wall_s']} "
        f"s) | {parts['remainder_s']} | wall - CLI import - warm server start - in-flow: API "
        "round trips, flow-run bookkeeping, shutdown (negative when the CLI overlaps the "
        "parts) |",
        "",
        "```json",
        json.dumps({"summary": table, "split": parts}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results" / "fixed-cost.md"))
    args = parser.parse_args()
    from backstop.flows.demo import make_schemaless_datastore

    work = Path(tempfile.mkdtemp(prefix="backstop-bench-fixed-"))
    rows = []
    try:
        [source] = make_schemaless_datastore(work / "source", shards=1, cells=args.cells)
        with PrefectModes(work, ["server", "temporary"]) as prefect:
            for run in range(args.runs):
                for set_up in SET_UPS:
                    with section(f"run {run + 1} {set_up}"):
                        rows.append(one_run(set_up, run, source, work, prefect))
            table = summary(rows)
            print(json.dumps(table), flush=True)
            parts = split(rows, work, args.runs)
            text = report(args.cells, args.runs, table, parts, prefect)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
