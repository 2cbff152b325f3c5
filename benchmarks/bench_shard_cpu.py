"""CPU per shard, by process: N small SQLite shards backed up and restored through the
real CLI against a running `prefect server`; the CPU time of the CLI's process tree
(flow and validator) and of the server, divided by the shards (docs/scale.md, "Where a
small shard's time goes").

    .venv/bin/python benchmarks/bench_shard_cpu.py --shards 256 --cells 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from common import BACKSTOP, PrefectServer, clean_env, warm_up


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants (the server's own children)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(shards: int, cells: int, work: Path) -> dict[str, dict]:
    from backstop.flows.demo import make_schemaless_datastore

    server = PrefectServer(work / "server").start()
    try:
        env = clean_env(PREFECT_HOME=str(work / "client"), PREFECT_API_URL=server.api_url)
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        warm_up(env, work / "warm")
        sources = make_schemaless_datastore(work / "source", shards=shards, cells=cells)
        (work / "target").mkdir()
        targets = [f"sqlite:///{work}/target/shard{i}.db" for i in range(shards)]
        store = str(work / "store")
        commands = {
            "backup": ["backup", "schemaless", *[a for s in sources for a in ("--source", s)]],
            "restore": ["restore", "schemaless", *[a for t in targets for a in ("--target", t)]],
        }
        figures = {}
        for name, argv in commands.items():
            time.sleep(5)  # the server idle: what it records of the last command is done
            server_before, cli_before = tree_cpu_s(server.process.pid), children_cpu_s()
            started = time.perf_counter()
            done = subprocess.run([str(BACKSTOP), *argv, "--store", store, "--json"],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - started
            cli = children_cpu_s() - cli_before
            time.sleep(10)  # the server records the last task runs after the command exits
            server_cpu = tree_cpu_s(server.process.pid) - server_before
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
            figures[name] = {
                "wall_s": round(wall, 1),
                "flow_s": outcome.get("duration_s"),
                "cli_cpu_ms_per_shard": round(cli / shards * 1000),
                "server_cpu_ms_per_shard": round(server_cpu / shards * 1000),
            }
            print(name, figures[name], flush=True)
        return figures
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--cells", type=int, default=10_000, help="in all, over the shards")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shard-cpu-"))
    try:
        measure(args.shards, args.cells, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
