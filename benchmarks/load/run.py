"""Load test: backup-and-restore cycles of several technologies through a real `prefect
server` and a process worker, 4 flow runs in flight, while writers keep writing.

    .venv/bin/python -m benchmarks.load --mode short            # CI: ~2 cycles each
    .venv/bin/python -m benchmarks.load --mode soak --minutes 60
    .venv/bin/python benchmarks/load/run.py ...                  # the same
    make load                                                    # --mode short

Each cycle is two flow runs of deployments in a process work pool, started through the
REST API as the UI or an automation would: a backup of the technology's source into a
store of the cycle's own, then a restore of that backup into a fresh target (the restore
flow re-hashes every backup file before writing and compares the target with the
manifest afterwards). The load test then checks the target itself against the source as
of the backup's consistency point (benchmarks/load/technologies.py says how, per
technology), and drops the target and the store.

Technologies: Schemaless on SQLite (2 shards, WAL) and on PostgreSQL (2 databases),
ZooKeeper (a chroot) and Docstore (FerretDB). Servers: the URLs given (--pg-url,
--zk-hosts, --mongo-source, --mongo-target; the test suite passes its session's), or
started here from tests/servers/ and stopped at the end (tests/servers/install.sh
installs them).

Meanwhile the worker's process family (the worker, its flow-run processes and their
validators) and the server's are sampled every second (RSS, open files, threads,
processes); the report judges whether each stays flat (benchmarks/load/sampling.py).

Results: benchmarks/results/load-<mode>.md and .json (--out names the .md; the .json
goes beside it). Exit code 0 when every cycle's restore was verified, no writer failed
and every series is flat; 1 otherwise.

Here: the set-up, the run and its clean-up. The command line is options.py, the servers
source_servers.py, the cycles cycles.py, the report figures.py (what it holds) and
report.py (the files).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as benchmarks/load/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.load import sampling
from benchmarks.load.cycles import Cycles, Runs, cycle_plan
from benchmarks.load.docstore import Docstore
from benchmarks.load.figures import build_report
from benchmarks.load.harness import Prefect
from benchmarks.load.options import MODES, parse
from benchmarks.load.report import write_report
from benchmarks.load.schemaless import PASSWORD_ENV, SchemalessPostgres, SchemalessSQLite
from benchmarks.load.source_servers import Servers
from benchmarks.load.technologies import Technology
from benchmarks.load.zookeeper import ZooKeeper

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"


def make_technologies(
    names: list[str], servers: Servers, work: Path, run_id: str, mode: dict, rate: float
) -> list[Technology]:
    made: list[Technology] = []
    for name in names:
        common = {"work": work, "run_id": run_id, "scale": mode["scale"], "rate": rate}
        if name == "schemaless-sqlite":
            made.append(SchemalessSQLite(**common))
        elif name == "schemaless-postgresql":
            made.append(SchemalessPostgres(**common, admin_url=servers.pg_url))
        elif name == "zookeeper":
            made.append(ZooKeeper(**common, hosts=servers.zk_hosts))
        elif name == "docstore":
            made.append(
                Docstore(**common, source_url=servers.mongo_source, target_url=servers.mongo_target)
            )
    return made


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    mode = MODES[args.mode]
    names = args.technologies
    rate = args.rate if args.rate is not None else mode["rate"]
    per_technology = args.cycles if args.cycles is not None else mode["cycles"]
    if args.mode == "soak":
        per_technology = args.cycles  # None: until --minutes have passed
    work = Path(tempfile.mkdtemp(prefix="backstop-load-", dir=args.work_dir))
    run_id = uuid.uuid4().hex[:6]
    wall = time.monotonic()
    servers = Servers(args, work, names)
    techs: list[Technology] = []
    prefect: Prefect | None = None
    sampler: sampling.Sampler | None = None
    runs = Runs()
    cycles: Cycles | None = None
    starter: threading.Thread | None = None
    try:
        print(f"-- load test {args.mode} in {work}", flush=True)
        servers.start()
        password = ""
        if servers.pg_url:
            from sqlalchemy.engine import make_url

            password = make_url(servers.pg_url).password or ""
        prefect = Prefect(work, args.concurrency, {PASSWORD_ENV: password})
        # The Prefect server starts (slowly) while the sources are filled.
        failed: list[BaseException] = []

        def start_prefect() -> None:
            try:
                prefect.start(timeout=args.startup_timeout)
            except BaseException as exc:
                failed.append(exc)

        starter = threading.Thread(target=start_prefect, name="prefect-start")
        starter.start()
        techs = make_technologies(names, servers, work, run_id, mode, rate)
        for tech in techs:
            tech.setup()
        starter.join()
        if failed:
            raise failed[0]
        setup_s = round(time.monotonic() - wall, 1)
        print(f"   servers, sources and Prefect ready in {setup_s} s", flush=True)
        sampler = sampling.Sampler(
            prefect.worker_pid, prefect.server_pid, runs.counts, interval=args.interval
        )
        sampler.start()
        for tech in techs:
            tech.start_writers()
        cycles = Cycles(prefect, runs, work, args.run_timeout, args.keep)
        plan = cycle_plan(techs, per_technology)
        deadline = time.monotonic() + args.minutes * 60 if args.mode == "soak" else None
        slots = [
            threading.Thread(
                target=cycles.slot, args=(plan, deadline, sampler), name=f"slot-{i}", daemon=True
            )
            for i in range(args.concurrency)
        ]
        for slot in slots:
            slot.start()
        for slot in slots:
            slot.join()
        cycles_s = round(time.monotonic() - wall - setup_s, 1)
        leftover = sampler.leftover()
        sampler.stop()
        for tech in techs:
            tech.stop_writers()
        return build_report(
            args, techs, cycles, sampler, runs, leftover,
            {"setup_s": setup_s, "cycles_s": cycles_s, "rate": rate,
             "per_technology": per_technology},
            prefect, wall,
        )  # fmt: skip
    finally:
        if cycles is not None:
            cycles.stopping.set()
        if sampler is not None:
            sampler.stop()
        for tech in techs:
            tech.stop_writers()
        for tech in techs:
            try:
                tech.teardown()
            except Exception as exc:
                print(f"teardown of {tech.name}: {exc}", file=sys.stderr)
        if starter is not None:
            starter.join()  # a server still starting would be left running otherwise
        if prefect is not None:
            if args.keep:
                print(f"   kept {work}", flush=True)
            prefect.stop()
        servers.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv, description=__doc__.splitlines()[0])
    out = args.out or RESULTS / f"load-{args.mode}.md"
    # `timeout` and `kill` send SIGTERM: unwind (stopping the worker, the server and the
    # servers started here in run_load's `finally`) instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run_load(args)
    write_report(report, out)
    print(
        f"-- {report['cycles']} cycles, {report['failures']} failures, {report['verified']} "
        f"verified, writer errors {report['writer_errors']}, flat "
        f"{'yes' if report['flat'] else 'NO'}, {report['wall_s']} s; report {out}",
        flush=True,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
