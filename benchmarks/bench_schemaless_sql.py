"""Schemaless on PostgreSQL and MariaDB: the `backstop` command's wall time and peak RSS
for backup and restore, next to pg_dump/pg_restore and mariadb-dump/mariadb on the same
table in the same run, plus 4 shards in parallel against 1.

Starts its own servers (Debian's packages; tests/servers/install.sh installs them) with
their default durability, fills one shard with ~1 KB cells server-side, and runs the
real CLI (`backstop backup|restore ... --json`) as a subprocess, once against a running
`prefect server` started for the session and once with Prefect's temporary server on a
warm PREFECT_HOME (--modes). The restored tables (backstop's and the peer's) are
compared with the source by a count and an order-independent sum of per-row MD5s.

    .venv/bin/python benchmarks/bench_schemaless_sql.py [--sizes 100k,1M]
        [--engines postgresql,mariadb] [--modes server,temporary] [--no-parallel]

Results are printed and written to benchmarks/results/schemaless-sql.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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
    timed_peer,
    timed_shell,
)
from servers.sql import PASSWORD, USER, MariaDBServer, PostgresServer, pg_bin_dir  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from backstop.drivers.schemaless.engines import cell_table  # noqa: E402

FILL = {
    # ~1 KB bodies (compressing about 4:1, like JSON), distinct row keys, timestamps with
    # microseconds, generated server-side.
    "postgresql": (
        "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
        "SELECT md5(i::text || '{seed}')::uuid::text, 'col' || (i % 16), i, "
        "convert_to(repeat(md5(random()::text), 15) || md5(random()::text) || md5(i::text) "
        "|| repeat(md5((i * 7)::text), 14), 'UTF8'), "
        "timestamp '2026-01-01' + i * interval '1 millisecond' "
        "FROM generate_series({start}, {stop}) AS i"
    ),
    "mariadb": (
        "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
        "SELECT uuid(), concat('col', seq % 16), seq, concat(repeat(md5(rand()), 15), "
        "md5(rand()), md5(seq), repeat(md5(seq * 7), 14)), "
        "timestamp '2026-01-01 00:00:00' + interval seq * 1000 microsecond "
        "FROM seq_{start}_to_{stop}"
    ),
}

# Count and an order-independent sum of per-row MD5s (60 bits each) over the user's data
# (added_id is left out: it is the table's own counter).
DIGEST = {
    "postgresql": (
        "SELECT count(*), coalesce(sum(('x' || substr(md5(concat_ws('|', row_key, "
        "column_name, ref_key, md5(body), created_at)), 1, 15))::bit(60)::bigint), 0)::text "
        "FROM cells"
    ),
    "mariadb": (
        "SELECT count(*), cast(coalesce(sum(conv(substr(md5(concat_ws('|', row_key, "
        "column_name, ref_key, md5(body), created_at)), 1, 15), 16, 10)), 0) AS char) "
        "FROM cells"
    ),
}


def fill(url: str, engine: str, count: int) -> None:
    db = create_engine(url)
    cell_table("cells").create(db, checkfirst=True)
    with db.begin() as conn:
        for start in range(1, count + 1, 200_000):
            stop = min(count, start + 199_999)
            conn.execute(text(FILL[engine].format(start=start, stop=stop, seed=url[-8:])))
    db.dispose()


def digest(url: str, engine: str) -> tuple[int, str]:
    db = create_engine(url)
    with db.connect() as conn:
        count, total = conn.execute(text(DIGEST[engine])).one()
    db.dispose()
    return int(count), str(total)


def peers(engine: str, server, database: str, work: Path) -> dict:
    """The engine's own dump and load of the same table (wall time and peak RSS), and
    the loaded copy's URL (to compare with the source)."""
    os.environ.update({"PGPASSWORD": PASSWORD, "MYSQL_PWD": PASSWORD})
    dump = work / f"{engine}.dump"
    target = server.create_database()
    if engine == "postgresql":
        bin_dir = pg_bin_dir()
        conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", USER]
        dump_s, dump_rss = timed_peer(
            [str(bin_dir / "pg_dump"), *conn, "-Fc", "-t", "cells", "-f", str(dump), database]
        )
        load_s, load_rss = timed_peer([str(bin_dir / "pg_restore"), *conn, "-d", target, str(dump)])
        tools = ("pg_dump -Fc", "pg_restore")
    else:
        conn = f"-h 127.0.0.1 -P {server.port} -u {USER}"
        dump_s, dump_rss = timed_shell(
            f"mariadb-dump {conn} --single-transaction {database} cells > {dump}"
        )
        load_s, load_rss = timed_shell(f"mariadb {conn} {target} < {dump}")
        tools = ("mariadb-dump --single-transaction", "mariadb < dump")
    dump_mb = round(dump.stat().st_size / 1e6, 1)
    dump.unlink()
    return {"dump_tool": tools[0], "load_tool": tools[1], "dump_s": dump_s,
            "dump_rss_mb": dump_rss, "load_s": load_s, "load_rss_mb": load_rss,
            "dump_mb": dump_mb, "peer_target": server.url(target)}  # fmt: skip


def measure(engine: str, server, cells: int, work: Path, prefect: PrefectModes) -> list[dict]:
    """One source of `cells` cells: the peer once, then backup and restore per mode."""
    database = server.create_database()
    source = server.url(database)
    with section(f"{engine} fill {cells:,}"):
        fill(source, engine, cells)
        os.sync()
        expected = digest(source, engine)
    with section(f"{engine} {cells:,} peers"):
        peer = peers(engine, server, database, work)
        peer_target = peer.pop("peer_target")
        peer["peer_restored_equal"] = digest(peer_target, engine) == expected
    rows = []
    for mode in prefect.modes:
        env = prefect.env(mode)
        store = work / f"store-{engine}-{cells}-{mode}"
        os.sync()
        with section(f"{engine} {cells:,} backup ({mode})"):
            backup = run_cli(
                ["backup", "schemaless", "--source", source, "--store", str(store)], env
            )
        prefect.note_server_rss()
        target = server.url(server.create_database())
        with section(f"{engine} {cells:,} restore ({mode})"):
            restore = run_cli(
                ["restore", "schemaless", "--store", str(store), "--target", target,
                 "--backup", backup["backup_id"]], env,
            )  # fmt: skip
        prefect.note_server_rss()
        shutil.rmtree(store, ignore_errors=True)
        row = {
            "engine": engine,
            "cells": backup["records"],
            "mode": mode,
            "backup_ratio": ratio(peer["dump_s"], backup["wall_s"]),
            "restore_ratio": ratio(peer["load_s"], restore["wall_s"]),
            "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
            **cli_fields("backup", backup),
            **cli_fields("restore", restore),
            **peer,
            "restored_equal": digest(target, engine) == expected,
        }
        row["backup_flow_ratio"] = ratio(peer["dump_s"], backup["duration_s"])
        row["restore_flow_ratio"] = ratio(peer["load_s"], restore["duration_s"])
        row["load_ratio"] = ratio(peer["load_s"], restore["phases_s"].get("load"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def parallel_shards(engine: str, server, cells: int, work: Path, prefect: PrefectModes) -> dict:
    """The same number of cells on 4 shards, backed up and restored by one command each
    (the first mode)."""
    mode = prefect.modes[0]
    env = prefect.env(mode)
    sources = [server.url(server.create_database()) for _ in range(4)]
    for url in sources:
        fill(url, engine, cells // 4)
    os.sync()
    store = work / f"store-par-{engine}"
    with section(f"{engine} 4 shards"):
        backup = run_cli(
            ["backup", "schemaless", *[f"--source={u}" for u in sources], "--store", str(store)],
            env,
        )
        targets = [server.url(server.create_database()) for _ in range(4)]
        restore = run_cli(
            ["restore", "schemaless", "--store", str(store), *[f"--target={u}" for u in targets],
             "--backup", backup["backup_id"]], env,
        )  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)
    return {"engine": engine, "cells": backup["records"], "shards": 4, "mode": mode,
            "backup_wall_s": backup["wall_s"], "restore_wall_s": restore["wall_s"],
            "backup_flow_s": backup["duration_s"], "restore_flow_s": restore["duration_s"]}  # fmt: skip


COLUMNS = [
    ("engine", "engine"), ("cells", "cells"), ("mode", "Prefect"),
    ("backup_ratio", "backup: wall ratio"), ("restore_ratio", "restore+verify: wall ratio"),
    ("backup_wall_s", "backup wall s"), ("dump_tool", "peer dump"), ("dump_s", "dump wall s"),
    ("restore_wall_s", "restore wall s"), ("load_tool", "peer load"), ("load_s", "load wall s"),
    ("backup_flow_s", "backup in-flow s"), ("backup_phases_s", "backup phases s"),
    ("backup_flow_ratio", "backup: in-flow ratio"),
    ("restore_flow_s", "restore in-flow s"), ("restore_phases_s", "restore phases s"),
    ("restore_flow_ratio", "restore: in-flow ratio"), ("load_ratio", "load phase vs load"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("dump_rss_mb", "dump RSS MB"), ("restore_rss_mb", "restore RSS MB"),
    ("restore_tree_rss_mb", "restore tree RSS MB"), ("load_rss_mb", "load RSS MB"),
    ("raw_mb", "raw MB"), ("dump_mb", "dump MB"),
    ("restored_equal", "restored = source"), ("peer_restored_equal", "peer's = source"),
]  # fmt: skip


def report(rows: list[dict], parallel: list[dict], prefect: PrefectModes) -> str:
    modes = "; ".join(f"*{m}*: {MODE_TITLES[m]}" for m in prefect.modes)
    lines = [
        "# Schemaless on PostgreSQL and MariaDB: next to pg_dump and mariadb-dump",
        "",
        machine_line(),
        "",
        "PostgreSQL 15 and MariaDB 10.11 from Debian on the same machine with their default "
        "durability; one shard holding cells of ~1 KB; local store, zstd level 3. Each "
        "figure is one run of the `backstop` command (subprocess, `--json`), timed from "
        f"start to exit, under each Prefect set-up ({modes}); the peer ran once per size "
        "on the same table in the same run. *Wall ratio* = peer wall time / backstop wall "
        "time: above 1 means backstop is faster. The backup includes its validate phase; "
        "the restore includes the checksum pass before, and after the load the digest "
        "verification and the quality suite on the target, which the peers do not do. "
        "*In-flow* is the flow's own duration (duration_s), without the command's start-up "
        "and shutdown; *load phase vs load* compares only the part the peer does. "
        f"{RSS_NOTE}{prefect.server_note()} *restored = source*: count and sum of per-row "
        "MD5s equal.",
        "",
        *markdown_table(COLUMNS, rows),
    ]
    if parallel:
        lines += ["", "4 shards in parallel (same total of cells) against 1 (wall time):", "",
                  "| engine | cells | shards | Prefect | backup wall s | restore wall s "
                  "| backup speed-up | restore speed-up |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for par in parallel:
        single = next(
            (r for r in rows if r["engine"] == par["engine"] and r["cells"] == par["cells"]
             and r["mode"] == par["mode"]), None,
        )  # fmt: skip
        if single:
            lines.append(
                f"| {par['engine']} | {par['cells']:,} | 4 | {par['mode']} "
                f"| {par['backup_wall_s']} | {par['restore_wall_s']} "
                f"| {single['backup_wall_s'] / par['backup_wall_s']:.2f}x "
                f"| {single['restore_wall_s'] / par['restore_wall_s']:.2f}x |"
            )
    return "\n".join(lines) + "\n" + report_tail(rows, "engine", "cells", {"single": rows, "parallel": parallel})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=sizes_arg, default=os.environ.get("BENCH_SIZES", "100k,1M"))
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--modes", type=modes_arg, default="server,temporary")
    parser.add_argument("--no-parallel", action="store_true", help="skip the 4-shard run")
    parser.add_argument("--out", default=str(HERE / "results" / "schemaless-sql.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backstop-bench-sql-"))
    rows, parallel = [], []
    try:
        with PrefectModes(work, args.modes) as prefect:
            for engine in args.engines.split(","):
                cls = PostgresServer if engine == "postgresql" else MariaDBServer
                server = cls(work / engine, durable=True).start()
                try:
                    for size in args.sizes:
                        rows += measure(engine, server, size, work, prefect)
                    if not args.no_parallel:
                        parallel.append(
                            parallel_shards(engine, server, args.sizes[-1], work, prefect)
                        )
                        print(json.dumps(parallel[-1]), flush=True)
                finally:
                    server.stop()
            text_ = report(rows, parallel, prefect)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(text_)
    print(text_)


if __name__ == "__main__":
    main()
