"""Docstore: the `backstop` command's wall time and peak RSS for backup and restore on
~1 KB documents in 4 collections, next to mongodump/mongorestore and a bare pymongo
cursor on the same data, in one run.

Starts two FerretDB servers (source and target; tests/servers/install.sh builds FerretDB,
benchmarks/install_peers.sh builds mongodump and mongorestore), fills the source, and
measures at each size (the data grows in place, so memory can be compared). The real CLI
(`backstop backup|restore ... --json`) runs as a subprocess, once against a running
`prefect server` and once with Prefect's temporary server on a warm PREFECT_HOME
(--modes). Each restored copy (backstop's and mongorestore's) is compared with the
source: document counts per collection, and every 500th document byte for byte.

    .venv/bin/python benchmarks/bench_docstore.py [--sizes 100k,1M] [--modes server,temporary]

Results are printed and written to benchmarks/results/docstore.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's server launcher
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
)
from servers.ferretdb import FerretDB  # noqa: E402
from servers.zookeeper import CACHE  # noqa: E402

DB = "bench"
COLLECTIONS = [f"c{i}" for i in range(4)]
PEERS = CACHE / "go-bin"


def fill(url: str, start: int, stop: int, seed: int = 5) -> int:
    """Documents start..stop-1, spread over the 4 collections: ~1 KB each."""
    from pymongo import MongoClient

    client = MongoClient(url)
    rng = random.Random(seed + start)
    total = 0

    def load(coll: str, ids: range) -> None:
        nonlocal total
        batch = []
        for i in ids:
            batch.append(
                {
                    "_id": i,
                    "name": f"customer-{i}",
                    "n": i,
                    "score": rng.random(),
                    "at": datetime(2026, 1, 1, tzinfo=UTC),
                    "tags": ["alpha", "beta", str(i % 97)],
                    "pad": rng.randbytes(420).hex(),
                }
            )
            if len(batch) == 1000:
                client[DB][coll].insert_many(batch, ordered=False)
                total += len(batch)
                batch = []
        if batch:
            client[DB][coll].insert_many(batch, ordered=False)
            total += len(batch)

    threads = [
        threading.Thread(target=load, args=(coll, range(start + k, stop, len(COLLECTIONS))))
        for k, coll in enumerate(COLLECTIONS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    return total


def drain(url: str) -> float:
    """A bare pymongo cursor per collection (4 threads), documents dropped: the read limit."""
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient

    client = MongoClient(url, document_class=RawBSONDocument)
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=lambda c=coll: deque(client[DB][c].find({}, batch_size=1000), maxlen=0)
        )
        for coll in COLLECTIONS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    return time.perf_counter() - started


def drop(url: str) -> None:
    from pymongo import MongoClient

    with MongoClient(url) as client:
        client.drop_database(DB)


def fingerprint(url: str, size: int) -> dict:
    """What a restored copy must equal: document counts per collection and every 500th
    document (by _id) as raw BSON."""
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient

    sample = list(range(0, size, 500))
    with MongoClient(url, document_class=RawBSONDocument) as client:
        db = client[DB]
        counts = {c: db[c].count_documents({}) for c in COLLECTIONS}
        docs = {c: sorted(d.raw for d in db[c].find({"_id": {"$in": sample}})) for c in COLLECTIONS}
    return {"counts": counts, "docs": docs}


def peers(docs: int, source: FerretDB, target: FerretDB, work: Path, expected: dict) -> dict:
    """mongodump and mongorestore on the same data (wall time and peak RSS)."""
    dump_dir = work / f"dump-{docs}"
    with section(f"mongodump {docs:,}"):
        dump_s, dump_rss = timed_peer(
            [str(PEERS / "mongodump"), f"--uri={source.url}", f"--db={DB}", f"--out={dump_dir}"]
        )
    drop(target.url)
    os.sync()
    with section(f"mongorestore {docs:,}"):
        load_s, load_rss = timed_peer(
            [str(PEERS / "mongorestore"), f"--uri={target.url}", str(dump_dir)]
        )
    equal = fingerprint(target.url, docs) == expected
    drop(target.url)
    dump_mb = sum(f.stat().st_size for f in dump_dir.rglob("*")) / 1e6
    shutil.rmtree(dump_dir, ignore_errors=True)
    return {"mongodump_s": dump_s, "mongodump_rss_mb": dump_rss,
            "mongorestore_s": load_s, "mongorestore_rss_mb": load_rss,
            "mongodump_mb": round(dump_mb, 1), "peer_restored_equal": equal}  # fmt: skip


def measure(
    docs: int, source: FerretDB, target: FerretDB, work: Path, prefect: PrefectModes
) -> list[dict]:
    os.sync()
    expected = fingerprint(source.url, docs)
    drain_s = drain(source.url)
    peer = peers(docs, source, target, work, expected)
    rows = []
    for mode in prefect.modes:
        env = prefect.env(mode)
        store = work / f"store-{docs}-{mode}"
        os.sync()
        with section(f"backup {docs:,} ({mode})"):
            backup = run_cli(
                ["backup", "docstore", "--source", source.url, "--store", str(store),
                 "--include", f"{DB}.*"], env,
            )  # fmt: skip
        prefect.note_server_rss()
        drop(target.url)
        os.sync()
        with section(f"restore {docs:,} ({mode})"):
            restore = run_cli(
                ["restore", "docstore", "--store", str(store), "--target", target.url,
                 "--backup", backup["backup_id"]], env,
            )  # fmt: skip
        prefect.note_server_rss()
        equal = fingerprint(target.url, docs) == expected
        drop(target.url)
        shutil.rmtree(store, ignore_errors=True)
        phases = restore["phases_s"]
        row = {
            "documents": backup["records"],
            "mode": mode,
            "backup_ratio": ratio(peer["mongodump_s"], backup["wall_s"]),
            "restore_ratio": ratio(peer["mongorestore_s"], restore["wall_s"]),
            "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
            "stored_mb": round(backup["bytes"] / 1e6, 1),
            "backup_consistency": backup["consistency"],
            **cli_fields("backup", backup),
            **cli_fields("restore", restore),
            "restore_verified": restore.get("verified"),
            **peer,
            "cursor_drain_s": round(drain_s, 3),
            "backup_flow_ratio": ratio(peer["mongodump_s"], backup["duration_s"]),
            "restore_flow_ratio": ratio(peer["mongorestore_s"], restore["duration_s"]),
            "load_ratio": ratio(peer["mongorestore_s"], phases.get("load")),
            "drain_vs_backup": ratio(drain_s, backup["wall_s"]),
            "restored_equal": equal,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


COLUMNS = [
    ("documents", "documents"), ("mode", "Prefect"),
    ("backup_ratio", "backup: wall ratio"), ("restore_ratio", "restore+verify: wall ratio"),
    ("backup_wall_s", "backup wall s"), ("mongodump_s", "mongodump wall s"),
    ("restore_wall_s", "restore wall s"), ("mongorestore_s", "mongorestore wall s"),
    ("backup_flow_s", "backup in-flow s"), ("backup_phases_s", "backup phases s"),
    ("backup_flow_ratio", "backup: in-flow ratio"),
    ("restore_flow_s", "restore in-flow s"), ("restore_phases_s", "restore phases s"),
    ("restore_flow_ratio", "restore: in-flow ratio"), ("load_ratio", "load phase vs mongorestore"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("mongodump_rss_mb", "mongodump RSS MB"), ("restore_rss_mb", "restore RSS MB"),
    ("restore_tree_rss_mb", "restore tree RSS MB"), ("mongorestore_rss_mb", "mongorestore RSS MB"),
    ("cursor_drain_s", "cursor drain s"), ("raw_mb", "raw MB"),
    ("restored_equal", "restored = source"), ("peer_restored_equal", "mongorestore's = source"),
]  # fmt: skip


def report(rows: list[dict], prefect: PrefectModes) -> str:
    modes = "; ".join(f"*{m}*: {MODE_TITLES[m]}" for m in prefect.modes)
    lines = [
        "# Docstore: backup and restore next to mongodump and mongorestore",
        "",
        machine_line(),
        "",
        "FerretDB v1.24.2 (SQLite backend) as source and target on the same machine, ~1 KB "
        "documents in 4 collections, local store, zstd level 3. mongodump/mongorestore are "
        "mongo-tools built from the Go module proxy, with their defaults (4 collections in "
        "parallel, no compression). Each figure is one run of the `backstop` command "
        "(subprocess, `--json`), timed from start to exit, under each Prefect set-up "
        f"({modes}); the peers ran once per size on the same data in the same run. *Wall "
        "ratio* = peer wall time / backstop wall time: above 1 means backstop is faster. "
        "The backup includes the read-back validation; the restore includes the checksum "
        "pass before and the count/digest/index verification and the quality suite after "
        "(*load phase vs mongorestore* compares only the part mongorestore does). *In-flow* "
        "is the flow's own duration (duration_s), without the command's start-up and "
        "shutdown. The cursor drain is pymongo reading every document as raw BSON on 4 "
        f"threads and dropping it: the server's read limit. {RSS_NOTE}"
        f"{prefect.server_note()} *restored = source*: counts per collection and every "
        "500th document byte for byte.",
        "",
        *markdown_table(COLUMNS, rows),
    ]
    return "\n".join(lines) + "\n" + report_tail(rows, "mode", "documents")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=sizes_arg, default=os.environ.get("BENCH_SIZES", "100k,1M"))
    parser.add_argument("--modes", type=modes_arg, default="server,temporary")
    parser.add_argument("--out", default=str(HERE / "results" / "docstore.md"))
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "install_peers.sh")], check=True)
    work = Path(tempfile.mkdtemp(prefix="backstop-bench-docstore-"))
    source = FerretDB(work / "source").start()
    target = FerretDB(work / "target").start()
    rows = []
    try:
        with PrefectModes(work, args.modes) as prefect:
            loaded = 0
            for size in args.sizes:
                with section(f"fill to {size:,}"):
                    fill(source.url, loaded, size)
                loaded = size
                rows += measure(size, source, target, work, prefect)
            text = report(rows, prefect)
    finally:
        source.stop()
        target.stop()
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
