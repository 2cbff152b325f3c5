"""The commands that run no flow: list, status, metrics (a store); deployments, keys (files)."""

from __future__ import annotations

import argparse
from typing import Any

from backstop.flows.cli_args import _store
from backstop.flows.cli_output import _human_size


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
