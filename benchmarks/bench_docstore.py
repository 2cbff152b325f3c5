"""Docstore: backup and restore speed and peak RSS on ~1 KB documents in 4 collections,
next to mongodump/mongorestore and a bare pymongo cursor on the same data, in one run.

Starts two FerretDB servers (source and target; tests/servers/install.sh builds FerretDB,
benchmarks/install_peers.sh builds mongodump and mongorestore), fills the source, and
measures at each size (the data grows in place, so memory can be compared):

    .venv/bin/python benchmarks/bench_docstore.py [--sizes 100000,1000000]

Results are printed and written to benchmarks/results/docstore.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from common import markdown_table, run_flow, timed_peer  # noqa: E402
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


def measure(docs: int, source: FerretDB, target: FerretDB, work: Path) -> dict:
    store = {"url": (work / f"store-{docs}").as_uri()}
    include = {"include": [f"{DB}.*"]}
    os.sync()
    drain_s = drain(source.url)
    backup = run_flow(
        "backup",
        {"technology": "docstore", "sources": [source.url], "store": store, "options": include},
    )
    print("backup", json.dumps(backup), flush=True)
    dump_dir = work / f"dump-{docs}"
    dump_s, dump_rss = timed_peer(
        [str(PEERS / "mongodump"), f"--uri={source.url}", f"--db={DB}", f"--out={dump_dir}"]
    )
    drop(target.url)
    os.sync()
    restore = run_flow(
        "restore",
        {
            "technology": "docstore",
            "store": store,
            "targets": [target.url],
            "backup": backup["backup_id"],
        },
    )
    print("restore", json.dumps(restore), flush=True)
    drop(target.url)
    os.sync()
    mongorestore_s, mongorestore_rss = timed_peer(
        [str(PEERS / "mongorestore"), f"--uri={target.url}", str(dump_dir)]
    )
    drop(target.url)
    dump_mb = sum(f.stat().st_size for f in dump_dir.rglob("*")) / 1e6
    shutil.rmtree(dump_dir, ignore_errors=True)
    shutil.rmtree(work / f"store-{docs}", ignore_errors=True)
    return {
        "documents": backup["records"],
        "raw_mb": round(backup["raw_bytes"] / 1e6, 1),
        "stored_mb": round(backup["bytes"] / 1e6, 1),
        "backup_s": backup["duration_s"],
        "backup_docs_per_s": round(backup["records"] / backup["duration_s"]),
        "backup_peak_rss_mb": backup["peak_rss_mb"],
        "backup_consistency": backup["consistency"],
        "restore_s": restore["duration_s"],
        "restore_load_s": restore["phases_s"]["load"],
        "restore_verify_s": restore["phases_s"]["verify"],
        "restore_docs_per_s": round(restore["records"] / restore["duration_s"]),
        "restore_peak_rss_mb": restore["peak_rss_mb"],
        "restore_verified": restore["verified"],
        "mongodump_s": round(dump_s, 3),
        "mongodump_peak_rss_mb": round(dump_rss, 1),
        "mongodump_mb": round(dump_mb, 1),
        "mongorestore_s": round(mongorestore_s, 3),
        "mongorestore_peak_rss_mb": round(mongorestore_rss, 1),
        "cursor_drain_s": round(drain_s, 3),
        "backup_vs_mongodump": round(dump_s / backup["duration_s"], 2),
        "restore_vs_mongorestore": round(mongorestore_s / restore["duration_s"], 2),
        "load_vs_mongorestore": round(mongorestore_s / restore["phases_s"]["load"], 2),
        "backup_vs_cursor_drain": round(drain_s / backup["duration_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", default=str(HERE / "results" / "docstore.md"))
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "install_peers.sh")], check=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="backstop-bench-docstore-"))
    source = FerretDB(work / "source").start()
    target = FerretDB(work / "target").start()
    rows = []
    try:
        loaded = 0
        for size in sizes:
            started = time.perf_counter()
            fill(source.url, loaded, size)
            print(f"filled to {size} in {time.perf_counter() - started:.1f} s", flush=True)
            loaded = size
            rows.append(measure(size, source, target, work))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        source.stop()
        target.stop()
        shutil.rmtree(work, ignore_errors=True)

    columns = [
        ("documents", "documents"),
        ("raw_mb", "raw MB"),
        ("backup_s", "backup s"),
        ("backup_docs_per_s", "backup docs/s"),
        ("backup_peak_rss_mb", "backup RSS MB"),
        ("mongodump_s", "mongodump s"),
        ("mongodump_peak_rss_mb", "mongodump RSS MB"),
        ("backup_vs_mongodump", "backup vs mongodump"),
        ("cursor_drain_s", "cursor drain s"),
        ("restore_s", "restore s"),
        ("restore_load_s", "of which load s"),
        ("restore_verify_s", "of which verify s"),
        ("restore_docs_per_s", "restore docs/s"),
        ("restore_peak_rss_mb", "restore RSS MB"),
        ("mongorestore_s", "mongorestore s"),
        ("mongorestore_peak_rss_mb", "mongorestore RSS MB"),
        ("restore_vs_mongorestore", "restore+verify vs mongorestore"),
        ("load_vs_mongorestore", "load vs mongorestore"),
    ]
    lines = [
        "# Docstore: backup and restore next to mongodump and mongorestore",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}), FerretDB v1.24.2 "
        "(SQLite backend) as source and target on the same machine, ~1 KB documents in 4 "
        "collections, local store, zstd level 3. mongodump/mongorestore are mongo-tools "
        "built from the Go module proxy, with their defaults (4 collections in parallel, "
        "no compression). The backup includes the read-back validation; the restore "
        "includes the checksum pass before and the count/digest/index verification after "
        "(split out: *load* is the part mongorestore does; *verify* reads every document "
        "back, at the server's read speed), then the data-quality suite on the target's "
        "`_id`s (the rest of the restore time; FerretDB reads whole documents for it). "
        "The backup's read-back is also the quality suite's pass. "
        "Ratios above 1 mean backstop is faster. The cursor drain is pymongo reading every "
        "document as raw BSON on 4 threads and dropping it: the server's read limit.",
        "",
        *markdown_table(columns, rows),
    ]
    if len(rows) > 1:
        growth = rows[-1]["backup_peak_rss_mb"] / rows[0]["backup_peak_rss_mb"]
        lines += ["", f"Backup peak RSS, largest over smallest size: {growth:.2f}x."]
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
