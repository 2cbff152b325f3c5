"""What every benchmark script shares: running a flow in its own process, and timing a
peer tool with its peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_flow(kind: str, payload: dict) -> dict:
    """Run a backstop flow in a fresh process; its outcome with duration and peak RSS."""
    env = dict(
        os.environ,
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_flow.py"), kind, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_shell(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, capture_output=True)
    return time.perf_counter() - started


def timed_peer(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one run of a peer tool, through GNU time."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", *argv], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
    rss = next(
        line.split("=", 1)[1] for line in proc.stderr.splitlines() if line.startswith("maxrss_kb=")
    )
    return seconds, int(rss) / 1024


def markdown_table(columns: list[tuple[str, str]], rows: list[dict]) -> list[str]:
    """Lines of a Markdown table: (key, title) columns, integers with thousands commas."""

    def cell(value: object) -> str:
        return (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )

    return [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows),
    ]
