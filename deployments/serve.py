"""Serve backstop's scheduled deployments from this process, without a work pool.

    python deployments/serve.py [--prefect-file deployments/prefect.yaml] [--only NAME ...]

The deployments, schedules and parameters are the ones in prefect.yaml (one place to
edit them); this process registers them with the Prefect API it is pointed at
(PREFECT_API_URL), then runs their scheduled and UI-triggered runs until stopped.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def load_deployments(prefect_file: Path, only: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for the entries of a prefect.yaml (work pools are not used)."""
    from prefect.client.schemas.schedules import CronSchedule

    config = yaml.safe_load(prefect_file.read_text())
    entries = config.get("deployments") or []
    names = [e["name"] for e in entries]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SystemExit(f"no deployment named {', '.join(unknown)} in {prefect_file}")
    deployments = []
    for entry in entries:
        if only and entry["name"] not in only:
            continue
        module, _, function = entry["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), function)
        schedules = [
            CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
            for s in entry.get("schedules", [])
        ]
        deployments.append(
            flow.to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                parameters=entry.get("parameters") or {},
                schedules=schedules,
            )
        )
    return deployments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect-file", type=Path, default=HERE / "prefect.yaml")
    parser.add_argument("--only", action="append", metavar="NAME", help="serve only these")
    args = parser.parse_args()
    from prefect import serve

    serve(*load_deployments(args.prefect_file, args.only))


if __name__ == "__main__":
    main()
