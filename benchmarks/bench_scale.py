"""Scale: what many shards cost (issue 15). The real CLI (`backstop ... --json`) runs as a
subprocess against a running `prefect server` started for the session, timed from start
to exit with the peak RSS of its process tree (benchmarks/common.py). Three parts:

(a) shard overhead: the same total of Schemaless cells (--cells, default 1M) in 1, 64,
    256 and 1024 SQLite shards (--shard-counts), backed up and restored with `--runner
    threads` and `--runner dask` (a prefect-dask LocalCluster of --dask-workers worker
    processes, BACKSTOP_DASK_WORKERS); per command the wall time, and the per-shard
    overhead (wall(N shards) - wall(1 shard)) / (N - 1); restored = source cell for cell.
(b) one PostgreSQL server: --databases (16) databases against 1 database holding the same
    total of ~1 KB cells (--cells): backup and restore wall times and their ratio.
(c) a simulated datastore of --shards (4096) small SQLite shards (--cells-per-shard, 50):
    backup, list, verify and restore end to end; wall time and peak RSS of each, the
    manifest's size in bytes and how long reading it takes (ArtifactStore.read_manifest:
    read, JSON parse and validation).

    .venv/bin/python benchmarks/bench_scale.py [--parts a,b,c] [--cells 1M]
        [--shard-counts 1,64,256,1024] [--runners threads,dask] [--dask-workers 2]
        [--databases 16] [--shards 4096] [--cells-per-shard 50] [--out FILE.md]

Results are printed and written to benchmarks/results/scale.md, the measurements also to
scale.json beside it. A run of some parts keeps the other parts' last results from that
JSON file (each part says when and where it was measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    BACKSTOP,
    RSS_NOTE,
    PrefectModes,
    machine_line,
    markdown_table,
    run_cli,
    section,
    sizes_arg,
)

PARTS = ("a", "b", "c")
RUNNERS = ("threads", "dask")
DEFAULT_OUT = HERE / "results" / "scale.md"


# -- arguments -----------------------------------------------------------------------------


def count_arg(value: str) -> int:
    """A positive count: 1000000, 1_000_000, 20k or 1M."""
    try:
        [count] = sizes_arg(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return count


def list_arg(choices: tuple[str, ...]):
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        unknown = set(items) - set(choices)
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"takes {', '.join(choices)}; got {value!r}")
        return list(dict.fromkeys(items))

    return parse


def counts_arg(value: str) -> list[int]:
    return sorted({count_arg(v) for v in value.split(",") if v.strip()})


# -- helpers -------------------------------------------------------------------------------


def flags(flag: str, values: list[str]) -> list[str]:
    return [arg for value in values for arg in (flag, value)]


def sqlite_targets(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    return [f"sqlite:///{folder / f'shard{i}.db'}" for i in range(count)]


def command_fields(prefix: str, run: dict) -> dict:
    """The figures one command contributes to a row, under `prefix`_*."""
    fields = {
        f"{prefix}_wall_s": run["wall_s"],
        f"{prefix}_rss_mb": run["rss_mb"],
        f"{prefix}_tree_rss_mb": run["tree_rss_mb"],
    }
    if "duration_s" in run:
        fields[f"{prefix}_flow_s"] = run["duration_s"]
    if run.get("phases_s"):
        fields[f"{prefix}_phases_s"] = run["phases_s"]
    return fields


def per_shard_ms(base_wall: float, base_n: int, wall: float, n: int) -> float | None:
    """(wall(n) - wall(base)) / (n - base), in milliseconds per shard."""
    if n == base_n:
        return None
    return round((wall - base_wall) / (n - base_n) * 1000, 1)


def cli_env(prefect: PrefectModes, args: argparse.Namespace) -> dict[str, str]:
    return {**prefect.env("server"), "BACKSTOP_DASK_WORKERS": str(args.dask_workers)}


# -- (a) shard overhead ----------------------------------------------------------------------


def part_a(args: argparse.Namespace, work: Path, prefect: PrefectModes) -> dict:
    from backstop.flows.demo import compare_shards, make_schemaless_datastore

    env = cli_env(prefect, args)
    rows = []
    for shards in args.shard_counts:
        folder = work / f"a-{shards}"
        with section(f"(a) generate {args.cells:,} cells in {shards} SQLite shard(s)"):
            sources = make_schemaless_datastore(folder / "source", shards=shards, cells=args.cells)
            os.sync()
        for runner in args.runners:
            store = folder / f"store-{runner}"
            with section(f"(a) {shards} shard(s), --runner {runner}: backup"):
                backup = run_cli(
                    ["backup", "schemaless", *flags("--source", sources), "--store", str(store),
                     "--runner", runner], env,
                )  # fmt: skip
            prefect.note_server_rss()
            targets = sqlite_targets(folder / f"target-{runner}", shards)
            with section(f"(a) {shards} shard(s), --runner {runner}: restore"):
                restore = run_cli(
                    ["restore", "schemaless", "--store", str(store), *flags("--target", targets),
                     "--backup", backup["backup_id"], "--runner", runner], env,
                )  # fmt: skip
            prefect.note_server_rss()
            comparison = compare_shards(sources, targets)
            row = {
                "shards": shards,
                "runner": runner,
                "cells": backup["records"],
                **command_fields("backup", backup),
                **command_fields("restore", restore),
                "stored_mb": round(backup["bytes"] / 1e6, 2),
                "restored_equal": comparison.equal and comparison.cells == args.cells,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(folder / f"target-{runner}", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    # The per-shard overhead, against the fewest shards measured (1 by default).
    for runner in args.runners:
        mine = sorted((r for r in rows if r["runner"] == runner), key=lambda r: r["shards"])
        base = mine[0]
        for row in mine:
            for command in ("backup", "restore"):
                row[f"{command}_per_shard_ms"] = per_shard_ms(
                    base[f"{command}_wall_s"], base["shards"], row[f"{command}_wall_s"],
                    row["shards"],
                )  # fmt: skip
                row[f"{command}_flow_per_shard_ms"] = per_shard_ms(
                    base[f"{command}_flow_s"], base["shards"], row[f"{command}_flow_s"],
                    row["shards"],
                )  # fmt: skip
    return {
        "measured": machine_line(),
        "cells": args.cells,
        "dask_workers": args.dask_workers,
        "server_rss_mb": max(prefect.server_rss, default=None),
        "rows": rows,
    }


A_COLUMNS = [
    ("shards", "shards"), ("runner", "runner"), ("cells", "cells"),
    ("backup_wall_s", "backup wall s"), ("backup_per_shard_ms", "backup ms/shard"),
    ("restore_wall_s", "restore wall s"), ("restore_per_shard_ms", "restore ms/shard"),
    ("backup_flow_s", "backup in-flow s"), ("backup_flow_per_shard_ms", "in-flow ms/shard"),
    ("backup_phases_s", "backup phases s"),
    ("restore_flow_s", "restore in-flow s"), ("restore_flow_per_shard_ms", "in-flow ms/shard"),
    ("restore_phases_s", "restore phases s"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("restore_rss_mb", "restore RSS MB"), ("restore_tree_rss_mb", "restore tree RSS MB"),
    ("stored_mb", "stored MB"), ("restored_equal", "restored = source"),
]  # fmt: skip


def report_a(part: dict) -> list[str]:
    return [
        "## (a) Shard overhead: the same cells in 1 to N SQLite shards",
        "",
        part["measured"],
        "",
        f"{part['cells']:,} cells of the demo generator (~290 bytes of JSON each) split "
        "evenly over the SQLite shards; local store, zstd level 3. Each figure is one run of "
        "the `backstop` command (subprocess, `--json`) against a running `prefect server`, "
        "timed from start to exit. *threads*: the default bounded thread pool in the CLI's "
        "process (BACKSTOP_WORKERS, default 4); *dask*: `--runner dask`, a temporary "
        f"LocalCluster of {part['dask_workers']} worker processes (BACKSTOP_DASK_WORKERS). "
        "*ms/shard* = (wall(N shards) - wall(fewest shards)) / (N - fewest), in milliseconds: "
        "what each further shard adds; the *in-flow* one uses the flow's own duration. The "
        "restore includes the checksum pass before, and the digest verification and quality "
        "suite on every target after. *restored = source*: every column of every cell equal "
        f"(flows/demo.py compare_shards). {RSS_NOTE} With Dask the tree includes the "
        "LocalCluster's worker processes."
        + (
            f" The running `prefect server` held up to {part['server_rss_mb']} MB "
            "(sampled after each command)."
            if part.get("server_rss_mb")
            else ""
        ),
        "",
        *markdown_table(A_COLUMNS, part["rows"]),
        *(["", part["note"]] if part.get("note") else []),
    ]


# -- (b) many PostgreSQL databases on one server -------------------------------------------


def drop_database(server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def part_b(args: argparse.Namespace, work: Path, prefect: PrefectModes) -> dict:
    from bench_schemaless_sql import digest, fill
    from servers.sql import PostgresServer

    env = cli_env(prefect, args)
    server = PostgresServer(work / "postgresql", durable=True).start()
    rows = []
    try:
        for count in sorted({1, args.databases}):
            names = [server.create_database() for _ in range(count)]
            sources = [server.url(n) for n in names]
            with section(f"(b) fill {args.cells:,} cells into {count} PostgreSQL database(s)"):
                for index, url in enumerate(sources):
                    fill(url, "postgresql", args.cells // count + (index < args.cells % count))
                expected = [digest(url, "postgresql") for url in sources]
                os.sync()
            store = work / f"store-pg-{count}"
            with section(f"(b) {count} database(s): backup"):
                backup = run_cli(
                    ["backup", "schemaless", *flags("--source", sources), "--store", str(store)],
                    env,
                )
            prefect.note_server_rss()
            target_names = [server.create_database() for _ in range(count)]
            targets = [server.url(n) for n in target_names]
            with section(f"(b) {count} database(s): restore"):
                restore = run_cli(
                    ["restore", "schemaless", "--store", str(store), *flags("--target", targets),
                     "--backup", backup["backup_id"]], env,
                )  # fmt: skip
            prefect.note_server_rss()
            row = {
                "databases": count,
                "cells": backup["records"],
                **command_fields("backup", backup),
                **command_fields("restore", restore),
                "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
                "stored_mb": round(backup["bytes"] / 1e6, 1),
                "restored_equal": [digest(url, "postgresql") for url in targets] == expected,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(store, ignore_errors=True)
            for name in names + target_names:
                drop_database(server, name)
    finally:
        server.stop()
    single = rows[0]
    for row in rows:
        for command in ("backup", "restore"):
            for kind in ("wall", "flow"):
                row[f"{command}_{kind}_ratio"] = round(
                    row[f"{command}_{kind}_s"] / single[f"{command}_{kind}_s"], 2
                )
    return {
        "measured": machine_line(),
        "cells": args.cells,
        "server_rss_mb": max(prefect.server_rss, default=None),
        "rows": rows,
    }


B_COLUMNS = [
    ("databases", "databases"), ("cells", "cells"),
    ("backup_wall_s", "backup wall s"), ("backup_wall_ratio", "backup wall ratio"),
    ("restore_wall_s", "restore wall s"), ("restore_wall_ratio", "restore wall ratio"),
    ("backup_flow_s", "backup in-flow s"), ("backup_flow_ratio", "backup in-flow ratio"),
    ("backup_phases_s", "backup phases s"),
    ("restore_flow_s", "restore in-flow s"), ("restore_flow_ratio", "restore in-flow ratio"),
    ("restore_phases_s", "restore phases s"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("restore_rss_mb", "restore RSS MB"), ("restore_tree_rss_mb", "restore tree RSS MB"),
    ("raw_mb", "raw MB"), ("stored_mb", "stored MB"), ("restored_equal", "restored = source"),
]  # fmt: skip


def report_b(part: dict) -> list[str]:
    return [
        "## (b) Many PostgreSQL databases on one server against one database",
        "",
        part["measured"],
        "",
        "PostgreSQL 15 from Debian (tests/servers), default durability, on the same machine. "
        f"{part['cells']:,} cells of ~1 KB (generated server-side, as in "
        "bench_schemaless_sql.py) in one database, then the same number spread over the "
        "databases of one server, one `--source` / `--target` per database, default runner "
        "(threads). *Ratio* = wall(N databases) / wall(1 database): below 1, the shards' "
        "parallelism pays; above 1, their overhead costs. *restored = source*: count and sum "
        f"of per-row MD5s equal in every database. {RSS_NOTE}"
        + (
            f" The running `prefect server` held up to {part['server_rss_mb']} MB."
            if part.get("server_rss_mb")
            else ""
        ),
        "",
        *markdown_table(B_COLUMNS, part["rows"]),
    ]


# -- (c) a simulated 4,096-shard datastore ---------------------------------------------------


def manifest_load(store: Path, backup_id: str, runs: int = 5) -> dict:
    """Reading the manifest as every command does (ArtifactStore.read_manifest: bounded
    read, JSON parse, validation into the Manifest model), median of `runs`; the JSON
    parse alone beside it, and a whole `list_backups`."""
    from backstop.tasks.manifest import MANIFEST_NAME
    from backstop.tasks.store import StoreSpec

    opened = StoreSpec(url=str(store)).open()
    path = store / "schemaless" / backup_id / MANIFEST_NAME
    read, parse, listing = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        manifest = opened.read_manifest("schemaless", backup_id)
        read.append(time.perf_counter() - started)
        started = time.perf_counter()
        json.loads(path.read_bytes())
        parse.append(time.perf_counter() - started)
        started = time.perf_counter()
        opened.list_backups("schemaless")
        listing.append(time.perf_counter() - started)
    return {
        "manifest_bytes": path.stat().st_size,
        "manifest_units": len(manifest.units),
        "manifest_files": len(manifest.files),
        "manifest_file_names_unique": len({f.name for f in manifest.files}) == len(manifest.files),
        "manifest_quality_checks": len(manifest.quality.checks),
        "manifest_read_s": round(statistics.median(read), 4),
        "manifest_json_parse_s": round(statistics.median(parse), 4),
        "list_backups_s": round(statistics.median(listing), 4),
    }


def part_c(args: argparse.Namespace, work: Path, prefect: PrefectModes) -> dict:
    from backstop.flows.demo import compare_shards, make_schemaless_datastore

    env = cli_env(prefect, args)
    shards, cells = args.shards, args.shards * args.cells_per_shard
    folder = work / "c"
    started = time.perf_counter()
    with section(f"(c) generate {shards} SQLite shards of {args.cells_per_shard} cells"):
        sources = make_schemaless_datastore(folder / "source", shards=shards, cells=cells)
        os.sync()
    generate_s = round(time.perf_counter() - started, 1)
    argv_bytes = sum(len(a) + 1 for a in flags("--source", sources))
    store = str(folder / "store")
    runs: dict[str, dict] = {}
    server_rss: dict[str, float] = {}
    with section(f"(c) {shards} shards: backup"):
        runs["backup"] = run_cli(
            ["backup", "schemaless", *flags("--source", sources), "--store", store], env
        )
    prefect.note_server_rss()
    server_rss["backup"] = prefect.server_rss[-1] if prefect.server_rss else None
    backup_id = runs["backup"]["backup_id"]
    with section(f"(c) {shards} shards: list"):
        runs["list"] = run_cli(["list", "--store", store], env)
    with section(f"(c) {shards} shards: verify"):
        runs["verify"] = run_cli(["verify", "--store", store, "--backup", backup_id], env)
    prefect.note_server_rss()
    targets = sqlite_targets(folder / "target", shards)
    with section(f"(c) {shards} shards: restore"):
        runs["restore"] = run_cli(
            ["restore", "schemaless", "--store", store, *flags("--target", targets),
             "--backup", backup_id], env,
        )  # fmt: skip
    prefect.note_server_rss()
    server_rss["restore"] = prefect.server_rss[-1] if prefect.server_rss else None
    loaded = manifest_load(folder / "store", backup_id)
    with section(f"(c) {shards} shards: compare"):
        comparison = compare_shards(sources, targets)
    listed = runs["list"]["backups"]
    row = {
        "shards": shards,
        "cells": runs["backup"]["records"],
        "generate_s": generate_s,
        "source_argv_bytes": argv_bytes,
        **{k: v for name, run in runs.items() for k, v in command_fields(name, run).items()},
        **loaded,
        "manifest_bytes_per_shard": round(loaded["manifest_bytes"] / shards),
        "stored_mb": round(runs["backup"]["bytes"] / 1e6, 2),
        "listed": len(listed) == 1 and listed[0]["backup_id"] == backup_id,
        "verified": runs["verify"]["ok"] and runs["verify"]["files"] == loaded["manifest_files"],
        "restored_equal": comparison.equal and comparison.cells == cells,
        "server_rss_after_backup_mb": server_rss["backup"],
        "server_rss_after_restore_mb": server_rss["restore"],
    }
    for command in ("backup", "verify", "restore"):
        row[f"{command}_ms_per_shard"] = round(row[f"{command}_wall_s"] / shards * 1000, 1)
    print(json.dumps(row), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"measured": machine_line(), "cells_per_shard": args.cells_per_shard, "rows": [row]}


C_COMMANDS = [
    ("backup", "backup"),
    ("list", "list"),
    ("verify", "verify"),
    ("restore", "restore"),
]


def report_c(part: dict) -> list[str]:
    [row] = part["rows"]
    commands = [
        {
            "command": title,
            "wall_s": row[f"{name}_wall_s"],
            "flow_s": row.get(f"{name}_flow_s"),
            "per_shard_ms": row.get(f"{name}_ms_per_shard"),
            "phases_s": row.get(f"{name}_phases_s"),
            "rss_mb": row[f"{name}_rss_mb"],
            "tree_rss_mb": row[f"{name}_tree_rss_mb"],
        }
        for name, title in C_COMMANDS
    ]
    columns = [
        ("command", "command"), ("wall_s", "wall s"), ("flow_s", "in-flow s"),
        ("per_shard_ms", "wall ms/shard"), ("phases_s", "phases s"),
        ("rss_mb", "RSS MB"), ("tree_rss_mb", "tree RSS MB"),
    ]  # fmt: skip
    facts = [
        ("shards", "shards"), ("cells", "cells"), ("generate_s", "generated in s"),
        ("source_argv_bytes", "bytes of `--source` arguments"),
        ("manifest_bytes", "manifest bytes"), ("manifest_bytes_per_shard", "manifest bytes/shard"),
        ("manifest_units", "units"), ("manifest_files", "files"),
        ("manifest_file_names_unique", "each file once"),
        ("manifest_quality_checks", "quality checks recorded"),
        ("manifest_read_s", "read_manifest s (median of 5)"),
        ("manifest_json_parse_s", "of which JSON parse s"),
        ("list_backups_s", "list_backups s"), ("stored_mb", "stored MB"),
        ("listed", "listed"), ("verified", "verified"), ("restored_equal", "restored = source"),
        ("server_rss_after_backup_mb", "prefect server RSS after backup MB"),
        ("server_rss_after_restore_mb", "prefect server RSS after restore MB"),
    ]  # fmt: skip
    return [
        f"## (c) A simulated datastore of {row['shards']:,} shards",
        "",
        part["measured"],
        "",
        f"{row['shards']:,} SQLite shards of {part['cells_per_shard']} cells each (the demo "
        "generator), local store: `backup` with one `--source` per shard, `list`, `verify "
        "--backup ID` and `restore` into as many fresh shards, one run each, against a "
        "running `prefect server`, timed from start to exit. *wall ms/shard* = wall / "
        "shards. The manifest is read as every command reads it "
        f"(ArtifactStore.read_manifest: bounded read, JSON parse, validation). {RSS_NOTE}",
        "",
        *markdown_table(columns, commands),
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {title} | {_cell(row.get(key))} |" for key, title in facts),
    ]


def _cell(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else str(value)


# -- report ----------------------------------------------------------------------------------


def report(parts: dict[str, dict]) -> str:
    lines = [
        "# Scale: many shards",
        "",
        "What a shard costs beyond its data (benchmarks/bench_scale.py; docs/scale.md). Each "
        "part was measured on its own, at the time it names.",
    ]
    for key, render in (("a", report_a), ("b", report_b), ("c", report_c)):
        if key in parts:
            lines += ["", *render(parts[key])]
    return "\n".join([*lines, "", "```json", json.dumps(parts, indent=1), "```", ""])


def save(parts: dict[str, dict], out: Path, json_out: Path) -> str:
    """The report and the JSON, parts in order; the report's text."""
    parts = {key: parts[key] for key in PARTS if key in parts}
    text = report(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(parts, indent=1) + "\n")
    out.write_text(text)
    return text


def stop_commands(grace_s: float = 60) -> None:
    """Stop the `backstop` commands this script still runs (interrupted, or a part
    failed): a command whose Prefect server is stopped under it waits at exit for ever
    (Prefect drains its events and logs to the API with no timeout)."""
    import psutil

    commands = []
    for child in psutil.Process().children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if len(argv) > 1 and argv[1] == str(BACKSTOP):  # the interpreter running the CLI
            commands.append(child)
    for command in commands:
        with contextlib.suppress(psutil.Error):
            command.terminate()
    _, alive = psutil.wait_procs(commands, timeout=grace_s)
    for command in alive:
        with contextlib.suppress(psutil.Error):
            command.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", type=list_arg(PARTS), default=list(PARTS))
    parser.add_argument("--cells", type=count_arg, default=os.environ.get("BENCH_CELLS", "1M"),
                        help="(a) and (b): the total of cells, however many shards")  # fmt: skip
    parser.add_argument("--shard-counts", type=counts_arg, default="1,64,256,1024",
                        help="(a): the numbers of shards")  # fmt: skip
    parser.add_argument("--runners", type=list_arg(RUNNERS), default=list(RUNNERS),
                        help="(a): the task runners")  # fmt: skip
    parser.add_argument("--dask-workers", type=count_arg, default=2,
                        help="(a): the LocalCluster's worker processes")  # fmt: skip
    parser.add_argument("--databases", type=count_arg, default=16,
                        help="(b): PostgreSQL databases against one")  # fmt: skip
    parser.add_argument("--shards", type=count_arg, default=4096, help="(c): the shards")
    parser.add_argument("--cells-per-shard", type=count_arg, default=50, help="(c)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="the Markdown report; the JSON goes beside it")  # fmt: skip
    args = parser.parse_args()
    if "a" in args.parts and args.cells < max(args.shard_counts):
        parser.error(f"--cells {args.cells} is fewer than {max(args.shard_counts)} shards")
    out = Path(args.out)
    json_out = out.with_suffix(".json")
    parts: dict[str, dict] = {}
    if json_out.exists():  # the other parts' last results stay
        parts = json.loads(json_out.read_text())
    root = Path(tempfile.mkdtemp(prefix="backstop-bench-scale-"))
    runs = {"a": part_a, "b": part_b, "c": part_c}
    try:
        with PrefectModes(root, ["server"]) as prefect:
            try:
                for key in args.parts:
                    work = root / f"part-{key}"
                    work.mkdir()
                    prefect.server_rss.clear()
                    parts[key] = runs[key](args, work, prefect)
                    shutil.rmtree(work, ignore_errors=True)
                    text = save(parts, out, json_out)  # a later part's failure keeps it
            except BaseException:
                stop_commands()  # before their Prefect server goes
                raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
