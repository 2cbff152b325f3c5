"""The input checks of the `backstop` command, made before Prefect is imported or started."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import resolve_placeholders
from backstop.flows.cli_args import _key_values, _keys, _limits, _options, _store
from backstop.flows.cli_parser import TECH_HELP


def _check_input(args: argparse.Namespace) -> None:
    """Everything that needs no server, said before Prefect is imported or started (a
    second, not the many a flow takes to start): the store URL, numbers, the backup id's
    shape, the technology (found in the store for a bare --backup ID), options, each
    source/target URL as its driver reads it, and what a backup or restore asks of its
    driver (--incremental, --include, --until, --rename). The flows check all of it again:
    a deployment's run does not pass through here."""
    from backstop.tasks.secrets import BLOCK_PREFIX, block_name
    from backstop.tasks.store import check_store_url

    for url in [*getattr(args, "source", []), *getattr(args, "target", []),
                *getattr(args, "scratch", [])]:  # fmt: skip
        block_name(url)  # block:NAME spelt as Prefect names blocks

    if getattr(args, "store", None) is not None:
        check_store_url(args.store)
        _key_values(args.store_option, "--store-option")
        _keys(args)  # recipients and the identity file, before Prefect
        _limits(args)
    _check_numbers(args)
    _check_backup_ref(args)
    from backstop.flows.startup import runs_a_flow

    if runs_a_flow(args.command):  # importing the flows reads them, after the slow start
        from backstop.flows.timeouts import check_timeouts
        from backstop.tasks.host_limits import host_connections

        check_timeouts()
        host_connections()  # read by every shard task: a bad one failed them all
    _choose_runner(args)
    if args.command == "drill":
        from backstop.tasks.signing import check_reads_own_signature

        keys = _keys(args)
        check_reads_own_signature(keys["signing_key"], keys["verify_key"])
    if args.command == "rekey":
        if not (args.recipient or args.recipients_file):
            raise BadInputError("rekey needs the new recipients: --recipient / --recipients-file")
        if not args.identity:
            raise BadInputError("rekey needs the identity that opens the backups now: --identity")
    if args.command == "keys":
        from backstop.flows.keys import check_keys_target

        check_keys_target(args.dir)
    if args.command == "deployments":
        from backstop.flows.deployments_init import check_init_target

        check_init_target(args.dir, args.force)
    if args.command == "metrics":
        from backstop.flows.metrics import check_local_store, check_output, parse_listen

        if args.listen:
            parse_listen(args.listen)
        if args.output:
            check_output(args.output)
        check_local_store(args.store)
    if args.command == "restore":
        _key_values(args.rename, "--rename", "FROM=TO")
    if args.command in ("restore", "export", "verify") and not args.technology:
        _find_technology(args)
    if not getattr(args, "technology", None):
        return
    from backstop.drivers.registry import get_driver

    driver = get_driver(args.technology)  # a typo is named with the known ones, at once
    roles = {"backup": ("source",), "drill": ("source", "scratch"), "restore": ("target",)}
    if args.command in roles:
        # A typo, or a secret given where no option takes one, refused before it is stored.
        operation = "restore" if args.command == "restore" else "backup"
        driver.check_options(_options(args, stash=False), operation)
        for attr in roles[args.command]:
            urls = getattr(args, attr)
            if any("${secret:" in url or url.startswith(BLOCK_PREFIX) for url in urls):
                continue  # resolved through Prefect: the flow checks them, resolved
            # A driver reads resolved URLs only (${env:} references, e.g. a whole host).
            resolved = [resolve_placeholders(url) for url in urls]
            driver.check_urls(resolved, "target" if attr == "scratch" else attr)
    if args.command == "backup":
        _check_backup_request(driver, args)
    elif args.command == "restore":
        _check_restore_request(driver, args)


def _choose_runner(args: argparse.Namespace) -> None:
    """--runner and --dask-address become the environment the flows read when they are
    imported (flows/runtime.py task_runner), as a deployment's job variables do."""
    from backstop.flows.startup import (
        DASK_ADDRESS_ENV,
        IN_FLIGHT_ENV,
        RUNNER_ENV,
        UNITS_PER_TASK_ENV,
        count_from_env,
    )

    for name in (IN_FLIGHT_ENV, UNITS_PER_TASK_ENV):
        count_from_env(name)  # a bad value: refused here, not once the flow runs
    runner = getattr(args, "runner", None)
    address = getattr(args, "dask_address", None)
    if address and runner not in (None, "dask"):
        raise BadInputError("--dask-address is for --runner dask")
    if address or runner == "dask":
        import importlib.util

        if importlib.util.find_spec("prefect_dask") is None:
            raise BadInputError("--runner dask needs prefect-dask: pip install 'backstop[dask]'")
        os.environ[RUNNER_ENV] = "dask"
        if address:
            os.environ[DASK_ADDRESS_ENV] = address
    elif runner == "threads":
        os.environ[RUNNER_ENV] = "threads"


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts and durations that cannot be right (written so that nan fails too)."""
    if args.command == "status" and not 0 < args.stale_hours < math.inf:
        raise BadInputError(f"--stale-hours must be more than 0, got {args.stale_hours}")
    if args.command == "prune":
        from backstop.tasks.retention import check_policy

        check_policy(args.keep_last, args.keep_days, args.grace_hours)
    if args.command == "demo" and (args.cells < 1 or args.shards < 1):
        raise BadInputError("--cells and --shards must be at least 1")


def _check_backup_ref(args: argparse.Namespace) -> None:
    """--backup is `latest` or an id as backups are named (it becomes part of a path)."""
    ref = getattr(args, "backup", None)
    if ref is None or ref == "latest":
        return
    from backstop.tasks.manifest import BACKUP_ID

    if not BACKUP_ID.match(ref):
        raise BadInputError(
            f"--backup {ref!r} is not a backup id (like 20261126T120501Z-3fa2) or 'latest'"
        )
    if getattr(args, "source", None):
        raise BadInputError(
            "--source chooses the latest backup of those sources; give either "
            "--source or --backup ID, not both"
        )


def _find_technology(args: argparse.Namespace) -> None:
    """restore, export and verify of one backup by id need no technology: the store holds
    each backup under its technology's folder, so the id says which (sets args.technology).
    `latest` and --source need it named: they choose among one technology's backups."""
    ref = args.backup
    if args.command == "verify" and ref is None and not args.source:
        return  # every backup of every technology
    if ref is None or ref == "latest":
        asked = "--source" if args.command == "verify" and ref is None else "--backup latest"
        named = "--technology TECH" if args.command == "verify" else f"TECH ({TECH_HELP})"
        raise BadInputError(f"{asked} needs the technology: give {named}, or --backup ID")
    spec = _store(args)
    found = spec.open().technologies_holding(ref)
    if not found:
        raise BadInputError(f"no complete backup {ref} in {spec.display()}")
    if len(found) > 1:
        how = "--technology TECH" if args.command == "verify" else "TECH"
        raise BadInputError(
            f"backup id {ref} is in {spec.display()} under {' and '.join(found)}: "
            f"name the one meant ({how})"
        )
    args.technology = found[0]


def _check_backup_request(driver: Any, args: argparse.Namespace) -> None:
    options = _options(args, stash=False)
    mode = options.get("mode")
    if "mode" in driver.backup_options and mode and mode not in driver.capabilities.modes:
        raise BadInputError(
            f"unknown {driver.name} mode {mode!r}; choose one of "
            f"{', '.join(driver.capabilities.modes)}"
        )
    if args.incremental and not driver.capabilities.incremental:
        raise BadInputError(f"{driver.name} does not support incremental backups")
    if args.resume is not None:
        from backstop.tasks.manifest import BACKUP_ID

        if not BACKUP_ID.match(args.resume):
            raise BadInputError(
                f"--resume {args.resume[:40]!r} is not a backup id (like 20261126T120501Z-3fa2)"
            )
        if not driver.capabilities.resumable:
            raise BadInputError(
                f"--resume: {driver.name} backups cannot be resumed (their units share one "
                "consistency point); take the backup again"
            )
    _check_driver_syntax(driver.name, args.include, args.exclude, {}, None)


def _check_restore_request(driver: Any, args: argparse.Namespace) -> None:
    """What the restore flow refuses first, refused here without a server (same words)."""
    rename = _key_values(args.rename, "--rename", "FROM=TO")
    driver.check_restore_features(args.include, args.until, rename)
    _check_driver_syntax(driver.name, args.include, [], rename, args.until)
    from backstop.flows.preflight import check_restore_targets

    options = _options(args, stash=False)
    check_restore_targets(args, driver, _store(args), options, rename)


def _check_driver_syntax(
    technology: str,
    include: list[str],
    exclude: list[str],
    rename: dict[str, Any],
    until: str | None,
) -> None:
    """Patterns and points in the syntax of the built-in drivers, checked by the very
    functions those drivers call later in the flow (a plugin driver checks its own there)."""
    if technology == "zookeeper" and (include or exclude):
        from backstop.drivers.zookeeper.paths import Selection

        Selection(include, exclude)
    elif technology == "docstore":
        from backstop.drivers.docstore.names import Renames, check_patterns

        check_patterns(include)
        check_patterns(exclude)
        Renames(list(rename.items()))
    elif technology == "schemaless" and until:
        from backstop.drivers.schemaless.until import parse_until

        parse_until(until, "shard-000")  # the shape only: any shard reads it the same way
