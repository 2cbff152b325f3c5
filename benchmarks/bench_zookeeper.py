"""ZooKeeper: the `backstop` command's wall time and peak RSS for a logical backup and
restore of znodes of 100 B-10 KB (20k and 100k by default), and the admin snapshot, in
one run per size.

Starts a ZooKeeper 3.9 server per size (tests/servers/install.sh fetches it), fills
/bench, then runs the real CLI (`backstop backup|restore ... --json`) as a subprocess,
once against a running `prefect server` and once with Prefect's temporary server on a
warm PREFECT_HOME (--modes). There is no logical peer tool on this machine (zkCopy is
not installed): ZooKeeper's own snapshot command is timed beside it. Each restored tree
is compared with the source on every 100th znode's data.

    .venv/bin/python benchmarks/bench_zookeeper.py [--sizes 20k,100k] [--runs 3]
        [--modes server,temporary]

Results are printed and written to benchmarks/results/zookeeper.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
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
    median_run,
    modes_arg,
    report_tail,
    run_cli,
    section,
    sizes_arg,
)
from servers.zookeeper import ZooKeeperServer  # noqa: E402


def build(hosts: str, nodes: int, seed: int = 11) -> tuple[int, list[str]]:
    """`nodes` znodes under /bench: 100 B-10 KB each, fan-out of ~50, depth up to ~4.
    The data bytes written, and every 100th path (to compare restored copies)."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=30)
    client.start(timeout=60)
    client.ensure_path("/bench")
    rng = random.Random(seed)
    parents = ["/bench"]
    total = 0
    sample: list[str] = []
    pending = []
    transaction = client.transaction()
    size = 0
    for i in range(nodes):
        parent = parents[min(len(parents) - 1, int(rng.random() ** 2 * len(parents)))]
        path = f"{parent}/z{i:06d}"
        data = rng.randbytes(rng.randint(100, 10_000))
        transaction.create(path, data)
        size += len(data) + len(path)
        total += len(data)
        if i % 50 == 0:
            parents.append(path)
        if i % 100 == 7:
            sample.append(path.removeprefix("/bench"))
        if size > 400_000:
            pending.append(transaction.commit_async())
            transaction, size = client.transaction(), 0
            if len(pending) > 8:
                pending.pop(0).get()
    pending.append(transaction.commit_async())
    for result in pending:
        result.get()
    client.stop()
    return total, sample


def same_data(hosts: str, sample: list[str], root: str) -> bool:
    """The sampled znodes hold the same data under /bench and under root."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=30)
    client.start(timeout=60)
    try:
        return all(client.get(f"/bench{p}")[0] == client.get(f"{root}{p}")[0] for p in sample)
    finally:
        client.stop()


def raw_snapshot(server: ZooKeeperServer) -> tuple[float, int]:
    """ZooKeeper's own streaming snapshot command drained to nowhere: seconds, bytes."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"{server.admin_url}/commands/snapshot?streaming=true",
        headers={"Authorization": "digest bench:bench"},
    )
    size = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        while block := response.read(1 << 20):
            size += len(block)
    return round(time.perf_counter() - started, 3), size


def measure(nodes: int, runs: int, work: Path, prefect: PrefectModes) -> list[dict]:
    server = ZooKeeperServer(
        "3.9", work / f"zk-{nodes}", admin=True,
        java_options=["-Xmx3g", "-Djute.maxbuffer=4194304"],
    ).start()  # fmt: skip
    try:
        with section(f"build {nodes:,} znodes"):
            started = time.perf_counter()
            data_bytes, sample = build(server.hosts, nodes)
            build_s = time.perf_counter() - started
            # The build leaves ~1 GB of transaction log and data pages for the kernel to
            # write back; let that finish so it does not bill the first measurement.
            os.sync()
        source = f"zk://{server.hosts}/bench"
        store = work / f"store-{nodes}"
        backup_args = ["backup", "zookeeper", "--source", source, "--store", str(store)]
        # The first read of a freshly built tree also pays for the server's JIT warming
        # up its read paths; a production server has long been serving reads. The cold
        # run is reported; the figures are the median of the warm runs after it.
        with section("cold backup"):
            cold = run_cli(backup_args, prefect.env(prefect.modes[0]))
        rows = []
        for mode in prefect.modes:
            env = prefect.env(mode)
            warm = []
            for _ in range(runs):
                os.sync()
                with section(f"backup {nodes:,} ({mode})"):
                    warm.append(run_cli(backup_args, env))
                prefect.note_server_rss()
            backup = median_run(warm)
            target = f"/restored-{mode}"
            with section(f"restore {nodes:,} ({mode})"):
                restore = run_cli(
                    ["restore", "zookeeper", "--store", str(store),
                     "--target", f"zk://{server.hosts}{target}",
                     "--backup", backup["backup_id"]], env,
                )  # fmt: skip
            prefect.note_server_rss()
            row = {
                "znodes": backup["records"],
                "mode": mode,
                "backup_znodes_per_s": round(backup["records"] / backup["wall_s"]),
                "backup_flow_znodes_per_s": round(backup["records"] / backup["duration_s"]),
                "restore_znodes_per_s": round(restore["records"] / restore["wall_s"]),
                **cli_fields("backup", backup),
                "backup_runs_wall_s": [b["wall_s"] for b in warm],
                "cold_backup_wall_s": cold["wall_s"],
                "backup_consistency": backup["consistency"],
                **cli_fields("restore", restore),
                "data_mb": round(data_bytes / 1e6, 1),
                "stored_mb": round(backup["bytes"] / 1e6, 1),
                "build_s": round(build_s, 1),
                "restored_equal": same_data(server.hosts, sample, target),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        admin_source = f"zk://bench:bench@{server.hosts}?admin_port={server.admin_port}"
        with section("admin snapshot"):
            snap = run_cli(
                ["backup", "zookeeper", "--source", admin_source, "--store", str(store),
                 "--option", "mode=admin-snapshot"], prefect.env(prefect.modes[0]),
            )  # fmt: skip
            raw_s, raw_bytes = raw_snapshot(server)
        for row in rows:
            row.update(
                admin_snapshot_wall_s=snap["wall_s"],
                admin_snapshot_mb=round(snap["raw_bytes"] / 1e6, 1),
                raw_snapshot_command_s=raw_s,
                raw_snapshot_mb=round(raw_bytes / 1e6, 1),
            )
        shutil.rmtree(store, ignore_errors=True)
        return rows
    finally:
        server.stop()


COLUMNS = [
    ("znodes", "znodes"), ("mode", "Prefect"),
    ("backup_znodes_per_s", "backup znodes/s (wall)"), ("backup_wall_s", "backup wall s"),
    ("backup_flow_s", "backup in-flow s"), ("backup_flow_znodes_per_s", "znodes/s (in-flow)"),
    ("backup_phases_s", "backup phases s"), ("cold_backup_wall_s", "cold backup wall s"),
    ("restore_wall_s", "restore wall s"), ("restore_znodes_per_s", "restore znodes/s (wall)"),
    ("restore_flow_s", "restore in-flow s"), ("restore_phases_s", "restore phases s"),
    ("backup_rss_mb", "backup RSS MB"), ("backup_tree_rss_mb", "backup tree RSS MB"),
    ("restore_rss_mb", "restore RSS MB"), ("restore_tree_rss_mb", "restore tree RSS MB"),
    ("data_mb", "data MB"), ("stored_mb", "stored MB"),
    ("admin_snapshot_wall_s", "admin-snapshot backup wall s"),
    ("raw_snapshot_command_s", "raw snapshot command s"), ("raw_snapshot_mb", "snapshot MB"),
    ("restored_equal", "restored = source"),
]  # fmt: skip


def report(rows: list[dict], runs: int, prefect: PrefectModes) -> str:
    modes = "; ".join(f"*{m}*: {MODE_TITLES[m]}" for m in prefect.modes)
    lines = [
        "# ZooKeeper: logical backup and restore, and the admin snapshot",
        "",
        machine_line(),
        "",
        "ZooKeeper 3.9 standalone on the same machine (-Xmx3g), a fresh server per size, "
        "znodes of 100 B-10 KB (random, incompressible), local store, zstd level 3. Each "
        "figure is the `backstop` command (subprocess, `--json`) timed from start to exit, "
        f"under each Prefect set-up ({modes}); the backup is the median of {runs} runs on "
        "a warm server (the first, cold run is beside it). The logical backup includes "
        "its consistency check and the validation of the stored file with the quality "
        "suite; the restore includes the checksum pass before and the verification walk "
        "and quality suite after. *In-flow* is the flow's own duration (duration_s). No "
        "logical peer tool is installed (zkCopy is not packaged here): the raw snapshot "
        "command is ZooKeeper's own `GET /commands/snapshot?streaming=true` drained to "
        "nowhere, a physical copy of the whole server (source tree and restored copies). "
        f"{RSS_NOTE}{prefect.server_note()} *restored = source*: every 100th znode's data "
        "equal.",
        "",
        *markdown_table(COLUMNS, rows),
    ]
    return "\n".join(lines) + "\n" + report_tail(rows, "mode", "znodes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", type=sizes_arg, default=os.environ.get("BENCH_ZK_SIZES", "20k,100k")
    )
    parser.add_argument("--runs", type=int, default=3, help="warm backup runs (median)")
    parser.add_argument("--modes", type=modes_arg, default="server,temporary")
    parser.add_argument("--out", default=str(HERE / "results" / "zookeeper.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backstop-bench-zk-"))
    rows = []
    try:
        with PrefectModes(work, args.modes) as prefect:
            for nodes in args.sizes:
                rows += measure(nodes, args.runs, work, prefect)
            text = report(rows, args.runs, prefect)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
