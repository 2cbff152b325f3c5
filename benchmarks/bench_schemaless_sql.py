"""Schemaless on PostgreSQL and MariaDB: backup and restore cells/s and peak RSS, next to
pg_dump/pg_restore and mariadb-dump/mariadb on the same table in the same run, plus
4 shards in parallel against 1.

Starts its own servers (Debian's packages; tests/servers/install.sh installs them) with
their default durability, fills one shard with ~1 KB cells server-side, and runs the
real flows in their own processes:

    .venv/bin/python benchmarks/bench_schemaless_sql.py [--sizes 100000,1000000]
        [--engines postgresql,mariadb]

Results are printed and written to benchmarks/results/schemaless-sql.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from common import markdown_table, run_flow, timed_peer, timed_shell  # noqa: E402
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


def fill(url: str, engine: str, count: int) -> None:
    db = create_engine(url)
    cell_table("cells").create(db, checkfirst=True)
    with db.begin() as conn:
        for start in range(1, count + 1, 200_000):
            stop = min(count, start + 199_999)
            conn.execute(text(FILL[engine].format(start=start, stop=stop, seed=url[-8:])))
    db.dispose()


def peers(engine: str, server, database: str, work: Path) -> dict:
    """The engine's own dump and load of the same table, with peak RSS."""
    env_pw = {"PGPASSWORD": PASSWORD, "MYSQL_PWD": PASSWORD}
    os.environ.update(env_pw)
    dump = work / f"{engine}.dump"
    if engine == "postgresql":
        bin_dir = pg_bin_dir()
        conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", USER]
        dump_s, dump_rss = timed_peer(
            [str(bin_dir / "pg_dump"), *conn, "-Fc", "-t", "cells", "-f", str(dump), database]
        )
        target = server.create_database()
        load_s, load_rss = timed_peer([str(bin_dir / "pg_restore"), *conn, "-d", target, str(dump)])
        return {"dump_tool": "pg_dump -Fc", "load_tool": "pg_restore", "dump_s": dump_s,
                "dump_rss_mb": dump_rss, "load_s": load_s, "load_rss_mb": load_rss,
                "dump_mb": dump.stat().st_size / 1e6}  # fmt: skip
    conn = f"-h 127.0.0.1 -P {server.port} -u {USER}"
    dump_s = timed_shell(f"mariadb-dump {conn} --single-transaction {database} cells > {dump}")
    target = server.create_database()
    load_s = timed_shell(f"mariadb {conn} {target} < {dump}")
    return {"dump_tool": "mariadb-dump --single-transaction", "load_tool": "mariadb < dump",
            "dump_s": dump_s, "dump_rss_mb": None, "load_s": load_s, "load_rss_mb": None,
            "dump_mb": dump.stat().st_size / 1e6}  # fmt: skip


def measure(engine: str, server, cells: int, work: Path) -> dict:
    database = server.create_database()
    source = server.url(database)
    fill(source, engine, cells)
    os.sync()
    store = {"url": (work / f"store-{engine}-{cells}").as_uri()}
    backup = run_flow("backup", {"technology": "schemaless", "sources": [source], "store": store})
    target = server.url(server.create_database())
    restore = run_flow(
        "restore",
        {"technology": "schemaless", "store": store, "targets": [target],
         "backup": backup["backup_id"]},
    )  # fmt: skip
    peer = peers(engine, server, database, work)
    shutil.rmtree(work / f"store-{engine}-{cells}", ignore_errors=True)
    row = {
        "engine": engine,
        "cells": backup["records"],
        "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
        "backup_s": backup["duration_s"],
        "backup_validate_s": backup["phases_s"]["validate"],
        "backup_cells_per_s": round(backup["records"] / backup["duration_s"]),
        "backup_rss_mb": backup["peak_rss_mb"],
        "restore_s": restore["duration_s"],
        "restore_load_s": restore["phases_s"]["load"],
        "restore_cells_per_s": round(restore["records"] / restore["duration_s"]),
        "restore_rss_mb": restore["peak_rss_mb"],
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in peer.items()},
    }
    row["backup_vs_dump"] = round(peer["dump_s"] / backup["duration_s"], 2)
    row["restore_vs_load"] = round(peer["load_s"] / restore["duration_s"], 2)
    row["load_vs_load"] = round(peer["load_s"] / restore["phases_s"]["load"], 2)
    return row


def parallel_shards(engine: str, server, cells: int, work: Path) -> dict:
    """The same number of cells on 4 shards, backed up and restored concurrently."""
    sources = [server.url(server.create_database()) for _ in range(4)]
    for url in sources:
        fill(url, engine, cells // 4)
    os.sync()
    store = {"url": (work / f"store-par-{engine}").as_uri()}
    backup = run_flow("backup", {"technology": "schemaless", "sources": sources, "store": store})
    targets = [server.url(server.create_database()) for _ in range(4)]
    restore = run_flow(
        "restore",
        {"technology": "schemaless", "store": store, "targets": targets,
         "backup": backup["backup_id"]},
    )  # fmt: skip
    shutil.rmtree(work / f"store-par-{engine}", ignore_errors=True)
    return {"engine": engine, "cells": backup["records"], "shards": 4,
            "backup_s": backup["duration_s"], "restore_s": restore["duration_s"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--out", default=str(HERE / "results" / "schemaless-sql.md"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="backstop-bench-sql-"))
    rows, parallel = [], []
    for engine in args.engines.split(","):
        cls = PostgresServer if engine == "postgresql" else MariaDBServer
        server = cls(work / engine, durable=True).start()
        try:
            for size in sizes:
                rows.append(measure(engine, server, size, work))
                print(json.dumps(rows[-1]), flush=True)
            parallel.append(parallel_shards(engine, server, sizes[-1], work))
            print(json.dumps(parallel[-1]), flush=True)
        finally:
            server.stop()
    shutil.rmtree(work, ignore_errors=True)

    columns = [
        ("engine", "engine"), ("cells", "cells"), ("raw_mb", "raw MB"),
        ("backup_s", "backup s"), ("backup_validate_s", "of which validate s"),
        ("backup_cells_per_s", "backup cells/s"),
        ("backup_rss_mb", "backup RSS MB"), ("dump_tool", "peer dump"), ("dump_s", "dump s"),
        ("backup_vs_dump", "backup vs dump"), ("restore_s", "restore s"),
        ("restore_load_s", "of which load s"), ("restore_cells_per_s", "restore cells/s"),
        ("restore_rss_mb", "restore RSS MB"), ("load_tool", "peer load"), ("load_s", "load s"),
        ("restore_vs_load", "restore+verify vs load"),
        ("load_vs_load", "load vs load"),
    ]  # fmt: skip
    lines = [
        "# Schemaless on PostgreSQL and MariaDB: next to pg_dump and mariadb-dump",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}); PostgreSQL 15 and "
        "MariaDB 10.11 from Debian on the same machine with their default durability; one "
        "shard holding cells of ~1 KB; local store, zstd level 3. The backup includes its "
        "validate phase (split out): the read-back of the packaged file, which is also the "
        "Great Expectations data-quality suite's pass over every cell. The restore includes "
        "the checksum pass before, and after the load (split out) the digest verification "
        "and the quality suite on the target. Ratios above 1 mean backstop is faster.",
        "",
        *markdown_table(columns, rows),
    ]
    lines += ["", "4 shards in parallel (same total of cells) against 1:", ""]
    lines += ["| engine | cells | shards | backup s | restore s | backup speed-up "
              "| restore speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for par in parallel:
        single = next(
            r for r in rows if r["engine"] == par["engine"] and r["cells"] == par["cells"]
        )
        lines.append(
            f"| {par['engine']} | {par['cells']:,} | 4 | {par['backup_s']} | {par['restore_s']} "
            f"| {single['backup_s'] / par['backup_s']:.2f}x "
            f"| {single['restore_s'] / par['restore_s']:.2f}x |"
        )
    for engine in args.engines.split(","):
        sized = [r for r in rows if r["engine"] == engine]
        if len(sized) > 1:
            lines.append(
                f"\n{engine}: backup peak RSS at {sized[-1]['cells']:,} over "
                f"{sized[0]['cells']:,} cells: "
                f"{sized[-1]['backup_rss_mb'] / sized[0]['backup_rss_mb']:.2f}x"
            )
    lines += [
        "",
        "```json",
        json.dumps({"single": rows, "parallel": parallel}, indent=1),
        "```",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
