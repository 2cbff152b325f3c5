"""The `backstop` command: ad hoc runs of the same flows deployments run.

Exit codes: 0 done; 1 the operation failed (unreachable after retries, verification
failed); 2 bad usage or bad input. With --json, exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, NoReturn

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.drivers.redact import (
    mask_secrets,
    resolve_placeholders,
    stash_option_secrets,
    stash_url_secrets,
)
from backstop.flows.signals import Interrupted, exit_if_stuck, stop_on_signals

TECH_HELP = "zookeeper, docstore or schemaless"
TECH_BY_ID_HELP = TECH_HELP + "; may be left out with --backup ID (the store knows it)"


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


class _Parser(argparse.ArgumentParser):
    """argparse's own usage errors (an unknown flag, a missing argument) still exit 2;
    with --json on the command line they are one JSON object on stdout, like every other
    error. Subcommand parsers are of this class too (argparse makes them of the parent's)."""

    _json_requested = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = sys.argv[1:] if args is None else list(args)
        self._json_requested = "--json" in argv
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if not self._json_requested:
            super().error(message)
        error = f"{self.prog}: {message}"
        print(json.dumps({"status": "failed", "error": error, "exit_code": 2}))
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    def key_args(sub: argparse.ArgumentParser, *, write: bool, read: bool) -> None:
        """Encryption (docs/security.md): public keys to write with, an identity to read."""
        if write:
            sub.add_argument(
                "--recipient",
                action="append",
                default=[],
                metavar="AGE1...",
                help="encrypt the backup's files to this age public key (repeatable; add an "
                "offline recovery key as a second recipient)",
            )
            sub.add_argument(
                "--recipients-file",
                metavar="FILE",
                help="encrypt to every age public key in FILE (one per line, # comments)",
            )
            sub.add_argument(
                "--signing-key",
                metavar="FILE",
                help="Ed25519 private key (PEM; backstop keys generate) that signs the "
                "manifests written, or a ${secret:BLOCK} reference to one",
            )
        if read:
            sub.add_argument(
                "--identity",
                metavar="FILE",
                help="age identity file (age-keygen) that decrypts an encrypted backup, or a "
                "${secret:BLOCK} reference to one",
            )
            sub.add_argument(
                "--verify-key",
                metavar="KEY",
                help="Ed25519 public key (a PEM file, its ed25519:... line, or a reference): "
                "refuse manifests it did not sign",
            )

    def limit_args(sub: argparse.ArgumentParser, *, upload: bool, download: bool) -> None:
        """Bandwidth limits of the store's data streams (docs/operations.md)."""
        shared = "MB = 10^6 bytes; one limit for all parallel streams of the process together"
        if upload:
            sub.add_argument(
                "--limit-upload",
                metavar="MB/S",
                help=f"write the backup's files to the store at most this fast ({shared})",
            )
        if download:
            sub.add_argument(
                "--limit-download",
                metavar="MB/S",
                help=f"read the backup's files from the store at most this fast ({shared})",
            )

    def runner_args(sub: argparse.ArgumentParser) -> None:
        """Where the units (shards) run: this process's threads, or Dask (docs/scale.md)."""
        sub.add_argument(
            "--runner",
            choices=("threads", "dask"),
            help="run the units on this process's threads (default) or on Dask workers "
            "(prefect-dask; a temporary LocalCluster unless --dask-address)",
        )
        sub.add_argument(
            "--dask-address", metavar="ADDR", help="a Dask scheduler, e.g. tcp://10.0.0.5:8786"
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
    key_args(sub, write=True, read=True)  # read: an incremental's encrypted, signed parent
    limit_args(sub, upload=True, download=True)  # download: the read-back of its files
    runner_args(sub)
    sub.add_argument("--incremental", action="store_true")
    sub.add_argument(
        "--resume",
        metavar="ID",
        help="finish a failed backup: keep the shards it stored, take the others (give the "
        "same sources, options and keys; schemaless)",
    )
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
    sub.add_argument("technology", metavar="TECH", nargs="?", help=TECH_BY_ID_HELP)
    store_args(sub)
    runner_args(sub)
    key_args(sub, write=True, read=True)
    limit_args(sub, upload=True, download=True)  # an overwrite's safety backup uploads
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
    key_args(sub, write=False, read=True)
    limit_args(sub, upload=False, download=True)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--backup", metavar="ID", help="backup id or latest (default: all)")
    source_filter_args(sub)

    sub = command("list", "list the complete backups in a store")
    store_args(sub)
    key_args(sub, write=False, read=True)
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
    key_args(sub, write=True, read=True)
    limit_args(sub, upload=True, download=True)
    runner_args(sub)
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")

    sub = command("status", "the newest backup of each source: its age, size and state")
    store_args(sub)
    key_args(sub, write=False, read=True)
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
    key_args(sub, write=False, read=True)  # --verify-key: only signed backups count as kept
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
    sub.add_argument("technology", metavar="TECH", nargs="?", help=TECH_BY_ID_HELP)
    store_args(sub)
    key_args(sub, write=False, read=True)
    limit_args(sub, upload=False, download=True)
    sub.add_argument("--backup", default="latest", metavar="ID", help="backup id or latest")
    source_filter_args(sub)
    sub.add_argument("--dir", required=True, help="an empty or new local folder")

    sub = command(
        "rekey", "re-encrypt stored backups to new recipients (key rotation; docs/security.md)"
    )
    store_args(sub)
    key_args(sub, write=True, read=True)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--backup", metavar="ID", help="one backup (default: every encrypted one)")

    sub = command("metrics", "print or serve Prometheus metrics of what a store holds")
    store_args(sub)
    where = sub.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        metavar="FILE",
        help="write the text exposition to FILE atomically (node_exporter's textfile "
        "collector, e.g. /var/lib/prometheus/node-exporter/backstop.prom)",
    )
    where.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics there until stopped")

    sub = command("demo", "back up, restore and compare a generated Schemaless datastore")
    sub.add_argument("--cells", type=int, default=100_000, help="cells in total (default 100000)")
    sub.add_argument("--shards", type=int, default=2)
    sub.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")

    # No --json here: a sub-subparser's defaults would overwrite it; init takes it.
    help_text = "write the deployment templates to edit and `prefect deploy`"
    sub = commands.add_parser("deployments", help=help_text, description=help_text)
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write prefect.yaml, automations.yaml and .env.example into DIR",
        description="write prefect.yaml, automations.yaml and .env.example into DIR",
    )
    init.add_argument("dir", metavar="DIR", help="folder to write them in (made if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files already there")
    init.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    help_text = "make the keys of an encrypted, signed store (docs/security.md)"
    sub = commands.add_parser("keys", help=help_text, description=help_text)
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="write an age identity and recipient, and an Ed25519 signing and verify key, "
        "into DIR (never over existing keys)",
        description="write age-identity.txt, age-recipient.txt, signing-key.pem and "
        "verify-key.pem into DIR (made if missing, 0700; private files 0600)",
    )
    generate.add_argument("dir", metavar="DIR", help="folder to write them in")
    generate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


# -- running ---------------------------------------------------------------------------
def _configure_prefect(verbose: bool) -> None:
    """Before Prefect is imported: the CLI prints its own summary, Prefect only warnings
    (backstop's own, such as a consistency warning, go through Prefect's run logger), and
    no failure twice: the CLI says each failure once, so Prefect's console ERROR lines
    and tracebacks show only with -v (its API handler still sends them to the server)."""
    quiet = f"{__name__}.{QuietConsoleHandler.__name__}"
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", quiet)
    elif os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS") == quiet:
        del os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"]  # inherited from a quiet run
    # This machine may have no route out; the ephemeral server should not try.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class QuietConsoleHandler(logging.Handler):
    """Prefect's console handler, less the ERROR records of Prefect's own loggers ("Encountered
    exception during execution", "Finished in state Failed", their tracebacks): the CLI
    reports the failure itself. Named in Prefect's logging configuration by
    _configure_prefect, which must not import Prefect: the handler is made here, when
    Prefect configures its logging."""

    def __new__(cls, **kwargs: Any) -> logging.Handler:  # type: ignore[misc]
        from prefect.logging.handlers import PrefectConsoleHandler

        handler = PrefectConsoleHandler(**kwargs)
        handler.addFilter(_not_a_prefect_error)
        return handler


def _not_a_prefect_error(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.name.startswith("prefect"))


def _hide_passwords(urls: list[str], role: str) -> list[str]:
    """Plain-text secrets in the `role` URLs (passwords, secret query parameters) move
    to this process's environment; the flow's parameters get ${env:} references."""
    return [stash_url_secrets(url) for url in urls]


def _store(args: argparse.Namespace):
    from backstop.tasks.store import StoreSpec

    # The store URL and options travel as flow parameters too: same treatment.
    options = _key_values(args.store_option, "--store-option")
    return StoreSpec(
        url=stash_url_secrets(args.store),
        options=stash_option_secrets(options),
        **_keys(args),
        **_limits(args),
    )


def _keys(args: argparse.Namespace) -> dict[str, Any]:
    """The store's encryption settings from the command line, checked here (exit 2):
    public keys travel as parameters; an identity or a signing key only as where to
    find it."""
    from backstop.tasks import crypto, signing

    recipients = list(getattr(args, "recipient", None) or [])
    if getattr(args, "recipients_file", None):
        recipients += crypto.recipients_in_file(args.recipients_file)
    crypto.parse_recipients([r for r in recipients if not crypto.is_reference(r)])
    identity = getattr(args, "identity", None)
    if identity:
        crypto.refuse_literal_identity(identity)
        if "${" not in identity:
            identity = os.path.abspath(os.path.expanduser(identity))
            crypto.load_identities(identity)  # readable, and an identity: before any flow
    signing_key = getattr(args, "signing_key", None)
    if signing_key:
        signing.refuse_literal_signing_key(signing_key)
        if "${" not in signing_key:
            signing_key = os.path.abspath(os.path.expanduser(signing_key))
            signing.load_signing_key(signing_key)
    verify_key = getattr(args, "verify_key", None)
    if verify_key:
        if "${" not in verify_key and not verify_key.strip().startswith(signing.ONE_LINE_PREFIX):
            verify_key = os.path.abspath(os.path.expanduser(verify_key))
        if "${" not in verify_key:
            signing.load_verify_key(verify_key)
    return {
        "recipients": recipients,
        "identity": identity,
        "signing_key": signing_key,
        "verify_key": verify_key,
    }


def _limits(args: argparse.Namespace) -> dict[str, float | None]:
    """--limit-upload and --limit-download, checked here (exit 2): MB/s, more than 0."""
    return {
        "limit_upload_mb_s": _rate(getattr(args, "limit_upload", None), "--limit-upload"),
        "limit_download_mb_s": _rate(getattr(args, "limit_download", None), "--limit-download"),
    }


def _rate(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    from backstop.tasks.bandwidth import MAX_MB_S, MIN_MB_S

    if not MIN_MB_S <= value <= MAX_MB_S:  # nan fails too
        raise BadInputError(
            f"{flag} takes a rate in MB/s (10^6 bytes a second) from {MIN_MB_S} to "
            f"{MAX_MB_S:g}, got {text!r}"
        )
    return value


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
        resume=args.resume,
    )
    with _progress(args):
        outcome = backup(request=request)
    data = outcome.model_dump(mode="json")
    text = (
        f"backup {outcome.technology}/{outcome.backup_id} completed: {outcome.records:,} records, "
        f"{_human_size(outcome.raw_bytes)} -> {_human_size(outcome.bytes)} stored in "
        f"{outcome.files} files, {outcome.duration_s:.1f} s, consistency {outcome.consistency}"
        + (
            f" (resumed: {outcome.kept_units} units kept from the failed attempt)"
            if outcome.kept_units
            else ""
        )
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
    if outcome.stored_bytes_only:
        text += (
            f"\n{outcome.stored_bytes_only} encrypted file(s): stored bytes checked only; "
            "give --identity to check their content too"
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


def _resumable(store: Any, incomplete: list[Any]) -> dict[str, dict[str, int]]:
    """The incomplete folders a failed backup left to resume (tasks/resume.py)."""
    from backstop.tasks.resume import stored_units

    found = {}
    for folder in incomplete:
        units = stored_units(store, folder.technology, folder.backup_id)
        if units is not None:
            found[f"{folder.technology}/{folder.backup_id}"] = {"units_stored": units}
    return found


def cmd_status(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from datetime import UTC, datetime, timedelta

    from backstop.tasks.retention import status_rows, take_inventory

    store = _store(args).open()
    inventory = take_inventory(store, args.technology)
    rows = status_rows(inventory, datetime.now(UTC), timedelta(hours=args.stale_hours))
    for row in rows:
        row["signed"] = store.is_signed(row["technology"], row["newest_backup"])
    data = {
        "sources": rows,
        "stale": sum(r["stale"] for r in rows),
        "incomplete": [f"{f.technology}/{f.backup_id}" for f in inventory.incomplete],
        "resumable": _resumable(store, inventory.incomplete),
        "unreadable": {f"{f.technology}/{f.backup_id}": p for f, p in inventory.unreadable.items()},
    }
    if not rows and not data["unreadable"] and not data["resumable"]:
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
    unsigned = [r for r in rows if not r["signed"]]
    if rows and len(unsigned) == len(rows):
        lines.append(
            "the store is unsigned: no newest backup carries a manifest signature "
            "(backstop keys generate; backup --signing-key)"
        )
    elif unsigned:
        lines.append(
            f"unsigned: {', '.join(r['newest_backup'] for r in unsigned)} "
            f"({len(unsigned)} of {len(rows)} newest backups carry no manifest signature)"
        )
    if data["incomplete"]:
        lines.append(f"incomplete backup folders: {', '.join(data['incomplete'])}")
    for name, found in data["resumable"].items():
        lines.append(
            f"resumable: {name} ({found['units_stored']} units stored): run the same backup "
            f"with --resume {name.split('/', 1)[1]} once its cause is fixed"
        )
    for name, problem in data["unreadable"].items():  # with --verify-key: failed signatures
        lines.append(f"UNREADABLE {name}: {problem}")
    for r in rows:
        if r["broken_chain"]:
            lines.append(f"{r['newest_backup']} cannot be restored: {r['broken_chain']}")
    return data, "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.params import PruneRequest
    from backstop.flows.prune import prune

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


def cmd_rekey(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.rekey import RekeyRequest, rekey

    outcome = rekey(
        request=RekeyRequest(store=_store(args), technology=args.technology, backup=args.backup)
    )
    lines = [f"{b['technology']}/{b['backup_id']}: {b['done']}" for b in outcome.backups]
    lines.append(
        f"{len(outcome.backups)} backup(s) in {outcome.duration_s:.1f} s; recipients now "
        + ", ".join(outcome.recipients)
    )
    return outcome.model_dump(mode="json"), "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.backup import backup
    from backstop.flows.demo import compare_shards, make_schemaless_datastore
    from backstop.flows.params import BackupRequest, RestoreRequest
    from backstop.flows.restore import restore
    from backstop.tasks.store import StoreSpec

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


def cmd_metrics(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows import metrics

    if args.listen:
        metrics.serve(_store(args), args.listen)
        return {"status": "stopped", "listen": args.listen}, "stopped"
    text = metrics.exposition(_store(args))
    if args.output:
        metrics.write_atomically(args.output, text)
        return {"output": args.output, "bytes": len(text)}, f"wrote {args.output}"
    return {"exposition": text.decode()}, text.decode().rstrip("\n")


def cmd_deployments(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.deployments_init import next_steps, write_templates

    return write_templates(args.dir, args.force), next_steps(args.dir)


def cmd_keys(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from backstop.flows.keys import generate_keys, next_steps

    result = generate_keys(args.dir)
    return result, next_steps(result)


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
    "deployments": cmd_deployments,
    "metrics": cmd_metrics,
    "keys": cmd_keys,
    "rekey": cmd_rekey,
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
    from backstop.flows.startup import DASK_ADDRESS_ENV, RUNNER_ENV

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


def _timed_out(args: argparse.Namespace, exc: Exception) -> int:
    """A run past its flow's time limit is an operation that failed (exit 1), and the
    operator needs the setting that made it, not Prefect's exception name."""
    from backstop.flows.timeouts import DEFAULT_TIMEOUTS_S, timeout_variable

    flow = args.command if args.command in DEFAULT_TIMEOUTS_S else "backup"
    error = (
        f"ran past its time limit ({exc}); the limit of a {flow} is "
        f"{timeout_variable(flow)} seconds (a restore's safety backup: "
        f"{timeout_variable('backup')}; 0: no limit)"
    )
    _emit(args, {"status": "failed", "error": error, "exit_code": 1},
          f"backstop {args.command}: {error}", error=True)  # fmt: skip
    return 1


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
        if type(exc).__name__ == "FlowRunTimeoutError":  # Prefect's flow timeout_seconds
            return _timed_out(args, exc)
        if args.verbose:
            print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="")
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
