"""Serve backstop's deployments from this process, without a work pool.

    python -m backstop.deployments.serve --prefect-file prefect.yaml [--only NAME ...]

The deployments, schedules, parameters and concurrency limits are the ones in
prefect.yaml (one place to edit them; `backstop deployments init DIR` writes a copy to
edit, the default is the template installed with backstop); this process registers them
with the Prefect API it is pointed at (PREFECT_API_URL), then runs their scheduled and
UI-triggered runs until stopped. Work pools and their job variables do not apply here:
a timeout override (BACKSTOP_<FLOW>_TIMEOUT_S) goes in this process's environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


def load_deployments(prefect_file: Path, only: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for the entries of a prefect.yaml (work pools are not used)."""
    from prefect.cli.deploy._schedules import (
        _schedule_config_to_deployment_schedule as schedule_from_config,
    )
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint

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
        flow = load_flow_from_entrypoint(entry["entrypoint"], use_placeholder_flow=False)
        limit = entry.get("concurrency_limit")
        # Read as `prefect deploy` reads them (cron, interval or rrule; active: false
        # kept off), so one prefect.yaml means the same served or deployed.
        schedules = [schedule_from_config(s) for s in entry.get("schedules") or []]
        deployments.append(
            flow.to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                parameters=entry.get("parameters") or {},
                schedules=schedules,
                concurrency_limit=ConcurrencyLimitConfig(**limit)
                if isinstance(limit, dict)
                else limit,
            )
        )
    return deployments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Required: the shipped template names example hosts (zk1.internal, ...) and would
    # schedule hourly backups of them; the operator's edited copy is what to serve.
    parser.add_argument(
        "--prefect-file",
        type=Path,
        required=True,
        help="the edited prefect.yaml (`backstop deployments init DIR` writes one)",
    )
    parser.add_argument("--only", action="append", metavar="NAME", help="serve only these")
    args = parser.parse_args()
    from prefect import serve

    serve(*load_deployments(args.prefect_file, args.only))


if __name__ == "__main__":
    main()
