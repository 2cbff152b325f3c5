"""The `backstop` command: ad hoc runs of the same flows deployments run.

Exit codes: 0 done; 1 the operation failed (unreachable after retries, verification
failed); 2 bad usage or bad input. With --json, exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.drivers.redact import (
    mask_secrets,
    resolve_placeholders,
    stash_option_secrets,
    stash_url_secrets,
)
from backstop.flows.signals import Interrupted, exit_if_stuck, stop_on_signals

TECH_HELP = "zookeeper, docstore or schemaless"


# -- parsing -------------------------------------------------------------------------
def _key_values(pairs: list[str], flag: str, shape: str = "KEY=VALUE") -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError(f"{flag} takes {shape}, got {pair!r}")
        options[key] = value
    return options


def _options(args: argparse.Namespace, stash: bool = True) -> dict[str, Any]:
    """The driver options of a backup, restore or drill, plain-text secrets moved into
    the environment (references in their place, like URLs' passwords); a backup's
    --include/--exclude travel as options too."""
    options = _key_values(args.option, "--option")
    if args.command == "backup":
        options |= {"include": args.include} if args.include else {}
        options |= {"exclude": args.exclude} if args.exclude else {}
    return stash_option_secrets(options) if stash else options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backstop",
        description="Backup and restore of ZooKeeper, Docstore and Schemaless as Prefect flows.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sub

    def store_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--store", required=True, help="store URL or path (file://, s3://, ...)")
        sub.add_argument(
            "--store-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="fsspec filesystem option, e.g. endpoint_url=http://127.0.0.1:9000",
        )

    def source_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--source",
            action="append",
            required=True,
            metavar="URL",
            help="source URL; one per shard",
        )

    def source_filter_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--source",
            action="append",
            default=[],
            metavar="URL",
            help="latest means the newest backup of these sources (as backed up; "
            "repeatable); needed when the store holds backups of several sources",
        )

    sub = command("backup", "back up a source into a store")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    source_args(sub)
    store_args(sub)
    sub.add_argument("--incremental", action="store_true")
    sub.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="back up only these parts (zookeeper: subtree patterns like /app/*)",
    )
    sub.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="leave these parts out"
    )
    sub.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver option, e.g. tables=cells",
    )

    sub = command("restore", "restore a backup into targets, then verify them")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    store_args(sub)
    sub.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="URL",
        help="target URL; one per shard, in the backup's order",
    )
    sub.add_argument("--backup", default="latest", metavar="ID", help="backup id or latest")
    source_filter_args(sub)
    sub.add_argument(
        "--mode", default="fail-if-exists", choices=["fail-if-exists", "overwrite", "merge"]
    )
    sub.add_argument("--include", action="append", default=[], metavar="PATTERN")
    sub.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="restore under another name (Docstore: shop=shop_copy, shop.*=archive.*)",
    )
    sub.add_argument("--until", metavar="POINT")
    sub.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver option, e.g. ignore_extra_columns=true",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="verify the backup and check the targets; write nothing",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="restore a backup whose data-quality checks failed at backup time",
    )
    sub.add_argument(
        "--no-safety-backup",
        dest="safety_backup",
        action="store_false",
        help="with --mode overwrite: skip backing up the targets first (no rollback)",
    )

    sub = command("verify", "recompute every checksum of backups in a store")
    store_args(sub)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--backup", metavar="ID", help="backup id or latest (default: all)")
    source_filter_args(sub)

    sub = command("list", "list the complete backups in a store")
    store_args(sub)
    sub.add_argument("--technology", metavar="TECH")

    sub = command("drill", "back up, restore into a scratch target and verify: a restore test")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    source_args(sub)
    sub.add_argument(
        "--scratch",
        action="append",
        required=True,
        metavar="URL",
        help="throwaway target, overwritten; one per shard",
    )
    store_args(sub)
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")

    sub = command("status", "the newest backup of each source: its age, size and state")
    store_args(sub)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument(
        "--stale-hours",
        type=float,
        default=26.0,
        metavar="H",
        help="a source whose newest backup is older than this is stale (default 26)",
    )

    sub = command("prune", "delete the backups a retention policy no longer keeps")
    store_args(sub)
    sub.add_argument("--keep-last", type=int, metavar="N", help="newest N backups per source")
    sub.add_argument("--keep-days", type=float, metavar="D", help="backups finished within D days")
    sub.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="incomplete backups younger than this are left alone (default 24)",
    )
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")

    sub = command("export", "write a backup's files, decompressed and checked, into a folder")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    store_args(sub)
    sub.add_argument("--backup", default="latest", metavar="ID", help="backup id or latest")
    source_filter_args(sub)
    sub.add_argument("--dir", required=True, help="an empty or new local folder")

    sub = command("demo", "back up, restore and compare a generated Schemaless datastore")
    sub.add_argument("--cells", type=int, default=100_000, help="cells in total (default 100000)")
    sub.add_argument("--shards", type=int, default=2)
    sub.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    return parser


# -- running ---------------------------------------------------------------------------
def _configure_prefect(verbose: bool) -> None:
    """Before Prefect is imported: the CLI prints its own summary, Prefect only warnings."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # This machine may have no route out; the ephemeral server should not try.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _hide_passwords(urls: list[str], role: str) -> list[str]:
    """Plain-text secrets in the `role` URLs (passwords, secret query parameters) move
    to this process's environment; the flow's parameters get ${env:} references."""
    return [stash_url_secrets(url) for url in urls]


def _store(args: argparse.Namespace):
    from backstop.tasks.store import StoreSpec

    # The store URL and options travel as flow parameters too: same treatment.
    options = _key_values(args.store_option, "--store-option")
    return StoreSpec(url=stash_url_secrets(args.store), options=stash_option_secrets(options))


def _progress(args: argparse.Namespace):
    if args.json or not sys.stderr.isatty():
        return nullcontext()
    from backstop.tasks.progress import RichProgress, reporting

    stack = ExitStack()
    stack.enter_context(reporting(stack.enter_context(RichProgress())))
    return stack


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


def cmd_backup(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.backup import backup
    from backstop.flows.params import BackupRequest

    request = BackupRequest(
        technology=args.technology,
        sources=_hide_passwords(args.source, "source"),
        store=_store(args),
        incremental=args.incremental,
        options=_options(args),
    )
    with _progress(args):
        outcome = backup(request=request)
    data = outcome.model_dump(mode="json")
    text = (
        f"backup {outcome.technology}/{outcome.backup_id} completed: {outcome.records:,} records, "
        f"{_human_size(outcome.raw_bytes)} -> {_human_size(outcome.bytes)} stored in "
        f"{outcome.files} files, {outcome.duration_s:.1f} s, consistency {outcome.consistency}"
    )
    return data, text


def cmd_restore(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.params import RestoreRequest
    from backstop.flows.restore import restore

    request = RestoreRequest(
        technology=args.technology,
        store=_store(args),
        targets=_hide_passwords(args.target, "target"),
        backup=args.backup,
        sources=_hide_passwords(args.source, "source"),
        mode=args.mode,
        include=args.include,
        until=args.until,
        rename=_key_values(args.rename, "--rename", "FROM=TO"),
        options=_options(args),
        dry_run=args.dry_run,
        force=args.force,
        safety_backup=args.safety_backup,
    )
    with _progress(args):
        outcome = restore(request=request)
    data = outcome.model_dump(mode="json")
    if outcome.status == "dry-run":
        text = (
            f"dry run: backup {outcome.technology}/{outcome.backup_id} verified "
            f"({outcome.records:,} records); targets accepted for mode {outcome.mode.value}; "
            "nothing written"
        )
    else:
        text = (
            f"restored {outcome.technology}/{outcome.backup_id}: {outcome.records:,} records "
            f"written, {outcome.records_skipped:,} skipped, into {len(outcome.targets)} "
            f"target(s) in {outcome.duration_s:.1f} s; verified equal to the backup"
        )
        if outcome.safety_backup:
            text += f" (the targets' previous content is in backup {outcome.safety_backup})"
    return data, text


def cmd_verify(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.params import VerifyRequest
    from backstop.flows.verify import VerificationFailed, verify

    request = VerifyRequest(
        store=_store(args),
        technology=args.technology,
        backup=args.backup,
        sources=_hide_passwords(args.source, "source"),
    )
    try:
        outcome = verify(request=request)
    except VerificationFailed as failed:
        raise _Reported(failed.outcome.model_dump(mode="json"), str(failed), 1) from None
    text = (
        f"ok: {len(outcome.backups)} backup(s), {outcome.files} files, "
        f"{_human_size(outcome.bytes)} checked in {outcome.duration_s:.1f} s"
    )
    return outcome.model_dump(mode="json"), text


def cmd_list(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    scan = _store(args).open().scan(args.technology)
    backups = [
        {
            "backup_id": m.backup_id,
            "technology": m.technology,
            "finished_at": m.finished_at.isoformat(),
            "records": m.totals.records,
            "bytes": m.totals.bytes,
            "files": m.totals.files,
            "consistency": m.consistency.kind,
            "parent": m.parent,
            "role": m.role.value,
            "sources": m.sources,
        }
        for m in scan.manifests
    ]
    # A manifest that cannot be read is named, and the others listed all the same.
    unreadable = [
        {"backup_id": f.backup_id, "technology": f.technology, "problem": problem}
        for f, problem in scan.unreadable.items()
    ]
    lines = [
        f"{'BACKUP':<22} {'TECHNOLOGY':<11} {'ROLE':<9} {'RECORDS':>12} {'SIZE':>10}  CONSISTENCY"
    ]
    lines += [
        f"{b['backup_id']:<22} {b['technology']:<11} {b['role']:<9} {b['records']:>12,} "
        f"{_human_size(b['bytes']):>10}  {b['consistency']}"
        for b in backups
    ]
    if not backups:
        lines = ["no complete backups"]
    lines += [
        f"{u['backup_id']:<22} {u['technology']:<11} UNREADABLE MANIFEST: {u['problem']}"
        for u in unreadable
    ]
    return {"backups": backups, "unreadable": unreadable}, "\n".join(lines)


def cmd_drill(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.drill import drill
    from backstop.flows.params import DrillRequest

    request = DrillRequest(
        technology=args.technology,
        sources=_hide_passwords(args.source, "source"),
        scratch=_hide_passwords(args.scratch, "target"),
        store=_store(args),
        options=_options(args),
    )
    with _progress(args):
        outcome = drill(request=request)
    text = (
        f"drill PASSED for {outcome.technology}: backup {outcome.backup_id} "
        f"({outcome.records:,} records, {_human_size(outcome.bytes)} stored, consistency "
        f"{outcome.consistency}) in {outcome.backup_s:.1f} s; restored into the scratch "
        f"target and verified equal in {outcome.restore_s:.1f} s"
    )
    return outcome.model_dump(mode="json"), text


def cmd_status(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from datetime import UTC, datetime, timedelta

    from backstop.tasks.retention import status_rows, take_inventory

    if args.stale_hours <= 0:
        raise BadInputError(f"--stale-hours must be more than 0, got {args.stale_hours}")
    inventory = take_inventory(_store(args).open(), args.technology)
    rows = status_rows(inventory, datetime.now(UTC), timedelta(hours=args.stale_hours))
    data = {
        "sources": rows,
        "stale": sum(r["stale"] for r in rows),
        "incomplete": [f"{f.technology}/{f.backup_id}" for f in inventory.incomplete],
        "unreadable": {f"{f.technology}/{f.backup_id}": p for f, p in inventory.unreadable.items()},
    }
    if not rows:
        return data, "no complete backups"
    lines = [
        f"{'TECHNOLOGY':<11} {'NEWEST BACKUP':<22} {'ROLE':<9} {'AGE':>8} {'SIZE':>10}  STATE  "
        "SOURCES"
    ]
    for r in rows:
        state = "BROKEN" if r["broken_chain"] else "STALE" if r["stale"] else "ok"
        lines.append(
            f"{r['technology']:<11} {r['newest_backup']:<22} {r['role']:<9} "
            f"{r['age_hours']:>7.1f}h {_human_size(r['bytes']):>10}  {state:<5}  "
            f"{', '.join(r['sources'])}"
        )
    if data["incomplete"]:
        lines.append(f"incomplete backup folders: {', '.join(data['incomplete'])}")
    for r in rows:
        if r["broken_chain"]:
            lines.append(f"{r['newest_backup']} cannot be restored: {r['broken_chain']}")
    return data, "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.params import PruneRequest
    from backstop.flows.prune import prune
    from backstop.tasks.retention import check_policy

    check_policy(args.keep_last, args.keep_days, args.grace_hours)
    outcome = prune(
        request=PruneRequest(
            store=_store(args),
            keep_last=args.keep_last,
            keep_days=args.keep_days,
            grace_hours=args.grace_hours,
            technology=args.technology,
            dry_run=args.dry_run,
        )
    )
    verb = "would delete" if outcome.dry_run else "deleted"
    lines = [
        f"{verb} {len(outcome.deleted)} backup folder(s), {_human_size(outcome.freed_bytes)}; "
        f"kept {len(outcome.kept)}"
    ]
    lines += [
        f"  {verb} {d['technology']}/{d['backup_id']}: {d['reason']}" for d in outcome.deleted
    ]
    return outcome.model_dump(mode="json"), "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.export import ExportRequest, export

    outcome = export(
        request=ExportRequest(
            technology=args.technology,
            store=_store(args),
            backup=args.backup,
            sources=_hide_passwords(args.source, "source"),
            dir=args.dir,
        )
    )
    text = (
        f"exported {outcome.technology}/{outcome.backup_id}: {outcome.files} files, "
        f"{_human_size(outcome.bytes)} into {outcome.dir}"
    )
    return outcome.model_dump(mode="json"), text


def cmd_demo(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.backup import backup
    from backstop.flows.demo import compare_shards, make_schemaless_datastore
    from backstop.flows.params import BackupRequest, RestoreRequest
    from backstop.flows.restore import restore
    from backstop.tasks.store import StoreSpec

    if args.cells < 1 or args.shards < 1:
        raise BadInputError("--cells and --shards must be at least 1")
    wall = time.perf_counter()
    workdir = (
        nullcontext(args.keep)
        if args.keep
        else tempfile.TemporaryDirectory(prefix="backstop-demo-")
    )
    with workdir as folder:
        root = Path(folder).resolve()
        started = time.perf_counter()
        sources = make_schemaless_datastore(root / "source", args.shards, args.cells)
        generate_s = time.perf_counter() - started
        store = StoreSpec(url=(root / "store").as_uri())
        targets = [f"sqlite:///{root / 'restored' / f'shard{i}.db'}" for i in range(args.shards)]
        (root / "restored").mkdir(exist_ok=True)
        with _progress(args):
            backed_up = backup(
                request=BackupRequest(technology="schemaless", sources=sources, store=store)
            )
            restored = restore(
                request=RestoreRequest(technology="schemaless", store=store, targets=targets)
            )
        comparison = compare_shards(sources, targets)
    wall_s = round(time.perf_counter() - wall, 3)
    data = {
        "status": "passed" if comparison.equal else "failed",
        "shards": args.shards,
        "cells": comparison.cells,
        "equal": comparison.equal,
        "differences": comparison.differences,
        "backup_id": backed_up.backup_id,
        "raw_bytes": backed_up.raw_bytes,
        "stored_bytes": backed_up.bytes,
        "generate_s": round(generate_s, 3),
        "backup_s": backed_up.duration_s,
        "restore_s": restored.duration_s,
        "wall_time_s": wall_s,
    }
    text = "\n".join(
        [
            f"demo {'PASSED' if comparison.equal else 'FAILED'}: {comparison.cells:,} cells in "
            f"{args.shards} SQLite shards",
            f"  generated in {generate_s:.1f} s ({_human_size(backed_up.raw_bytes)} of cells)",
            f"  backup {backed_up.backup_id}: {backed_up.duration_s:.1f} s, "
            f"{_human_size(backed_up.bytes)} stored (zstd), consistency {backed_up.consistency} "
            f"at watermarks {backed_up.consistency_point}",
            f"  restore into fresh shards + verify: {restored.duration_s:.1f} s",
            "  cell-by-cell comparison: "
            + (
                "every column of every cell equal"
                if comparison.equal
                else str(comparison.differences)
            ),
            f"  wall time {wall_s:.1f} s",
        ]
    )
    if not comparison.equal:
        raise _Reported(data, text, 1)
    return data, text


class _Reported(Exception):
    """A failure whose JSON and text are already composed."""

    def __init__(self, data: dict[str, Any], text: str, exit_code: int) -> None:
        super().__init__(text)
        self.data, self.text, self.exit_code = data, text, exit_code


COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {
    "backup": cmd_backup,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "list": cmd_list,
    "drill": cmd_drill,
    "status": cmd_status,
    "prune": cmd_prune,
    "export": cmd_export,
    "demo": cmd_demo,
}


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str, error: bool = False) -> None:
    if args.json:
        print(mask_secrets(json.dumps(data, default=str)))
    else:
        print(mask_secrets(text), file=sys.stderr if error else sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_prefect(args.verbose)
    with stop_on_signals():
        return _run(args)


def run() -> None:
    """The `backstop` executable: main(), then an exit without the interpreter's
    teardown (flows/startup.py exit_now)."""
    from backstop.flows.startup import exit_now

    exit_now(main())


def _get_ready(args: argparse.Namespace) -> dict[str, float]:
    """Once the input is known good: start Prefect's temporary server (unless one is
    configured) and import what the flow needs while it starts."""
    from backstop.flows import startup

    startup.start_server(args.command)
    return startup.prepare(args.command, getattr(args, "technology", None))


def _check_input(args: argparse.Namespace) -> None:
    """URLs that cannot be right are bad input, said before Prefect starts (seconds):
    the store URL's shape, and each source/target URL as its driver reads it."""
    from backstop.tasks.store import check_store_url

    if getattr(args, "store", None) is not None:
        check_store_url(args.store)
    if getattr(args, "technology", None):  # a typo is named with the known ones, at once
        from backstop.drivers.registry import get_driver

        get_driver(args.technology)
    roles = {"backup": ("source",), "drill": ("source", "scratch"), "restore": ("target",)}
    if args.command in roles:
        from backstop.drivers.registry import get_driver

        driver = get_driver(args.technology)
        # A typo, or a secret given where no option takes one, refused before it is stored.
        operation = "restore" if args.command == "restore" else "backup"
        driver.check_options(_options(args, stash=False), operation)
        for attr in roles[args.command]:
            urls = getattr(args, attr)
            if any("${secret:" in url for url in urls):
                continue  # resolved through Prefect: the flow checks them, resolved
            # A driver reads resolved URLs only (${env:} references, e.g. a whole host).
            resolved = [resolve_placeholders(url) for url in urls]
            driver.check_urls(resolved, "target" if attr == "scratch" else attr)


def _run(args: argparse.Namespace) -> int:
    try:
        _check_input(args)
        startup = _get_ready(args)
        data, text = COMMANDS[args.command](args)
        if startup:  # where the fixed cost went (--json): imports, server start
            data["startup_s"] = startup
    except _Reported as reported:
        _emit(args, reported.data, reported.text, error=True)
        return reported.exit_code
    except BackstopError as exc:
        message = f"backstop {args.command}: {exc}"
        _emit(
            args,
            {"status": "failed", "error": str(exc), "exit_code": exc.exit_code},
            message,
            error=True,
        )
        return exc.exit_code
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (Interrupted): cleaned up by now
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        _emit(args, {"status": "interrupted", "exit_code": code}, "interrupted", error=True)
        exit_if_stuck(code)
        return code
    except Exception as exc:  # a bug or an unclassified failure: exit 1, say what it was
        message = f"{type(exc).__name__}: {exc}"
        _emit(
            args,
            {"status": "failed", "error": mask_secrets(message), "exit_code": 1},
            f"backstop {args.command}: unexpected error: {message}",
            error=True,
        )
        return 1
    _emit(args, data, text)
    return 0


if __name__ == "__main__":
    run()
