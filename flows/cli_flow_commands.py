"""The commands that run a flow: backup, restore, verify, drill, prune, export, rekey, demo."""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from backstop.flows.cli_args import _hide_passwords, _key_values, _options, _store
from backstop.flows.cli_output import _human_size, _progress, _Reported


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
