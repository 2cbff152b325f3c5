"""The load test's command line: the modes, the technologies it can cycle, and the options
of `python -m benchmarks.load` (benchmarks/load/run.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

TECHNOLOGIES = ("schemaless-sqlite", "schemaless-postgresql", "zookeeper", "docstore")
MODES = {
    # Small sources, 2 cycles per technology: a few minutes on 2 cores.
    "short": {
        "cycles": 2,
        "scale": {"shards": 2, "cells": 10_000, "znodes": 1_000, "documents": 2_000, "writers": 2},
        "rate": 2.0,
    },
    # Cycles until --minutes have passed; the sources grow by what the writers add.
    "soak": {
        "cycles": None,
        "scale": {"shards": 2, "cells": 20_000, "znodes": 2_000, "documents": 4_000, "writers": 2},
        "rate": 1.0,
    },
}


def technologies_arg(value: str) -> list[str]:
    names = [n for n in value.split(",") if n]
    unknown = sorted(set(names) - set(TECHNOLOGIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(TECHNOLOGIES)}; got {value!r}")
    return names


def parse(argv: list[str] | None, description: str) -> argparse.Namespace:
    """`description` is the first line of run.py's docstring, which documents the command."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=description)
    parser.add_argument("--mode", choices=sorted(MODES), default="short")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long to cycle")
    parser.add_argument(
        "--cycles", type=int, help="cycles per technology (short: 2; soak: until --minutes)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="flow runs in flight")
    parser.add_argument("--rate", type=float, help="writes per second per writer")
    parser.add_argument(
        "--technologies", type=technologies_arg, default=list(TECHNOLOGIES),
        help=f"comma-separated, of {', '.join(TECHNOLOGIES)}",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="the .md report (.json beside it)")
    parser.add_argument("--pg-url", help="a PostgreSQL admin URL (CREATE DATABASE)")
    parser.add_argument("--zk-hosts", help="host:port of a ZooKeeper server")
    parser.add_argument("--mongo-source", help="mongodb:// URL of the Docstore source server")
    parser.add_argument("--mongo-target", help="mongodb:// URL of the Docstore target server")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="per flow run, s")
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--work-dir", help="where the private work folder goes (default /tmp)")
    parser.add_argument(
        "--keep", action="store_true", help="keep targets, stores and the work folder"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args
