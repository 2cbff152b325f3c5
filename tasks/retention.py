"""What a store holds, per backed-up source, and which backups a retention policy keeps.

A *series* is every complete backup of one technology from one set of sources (the
redacted URLs in the manifest) taken for one kind of reason (ordinary, safety, drill):
`status` reports the newest of each, and `prune` applies its policy per series, as
restic's `forget` does per host and path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.tasks.leases import fresh_leases
from backstop.tasks.manifest import Manifest
from backstop.tasks.store import ArtifactStore, BackupFolder, newest_key

SeriesKey = tuple[str, tuple[str, ...], str]  # (technology, sources, kind)


def series_kind(manifest: Manifest) -> str:
    """Ordinary backups of a source form one series, its safety backups (taken before
    restoring into it) and drill backups others: a policy keeping the newest N of a
    source must never count a safety backup among its ordinary backups."""
    return "ordinary" if manifest.ordinary else manifest.role.value


@dataclass(frozen=True)
class Inventory:
    """Complete backups grouped into series (newest first), incomplete folders, and
    folders whose manifest cannot be read (never touched)."""

    series: dict[SeriesKey, list[Manifest]]
    incomplete: list[BackupFolder]
    unreadable: dict[BackupFolder, str]


def take_inventory(store: ArtifactStore, technology: str | None = None) -> Inventory:
    series: dict[SeriesKey, list[Manifest]] = {}
    incomplete: list[BackupFolder] = []
    unreadable: dict[BackupFolder, str] = {}
    for folder in store.folders(technology):
        if not folder.complete:
            incomplete.append(folder)
            continue
        try:
            manifest = store.listed_manifest(folder)
        except BackstopError as exc:
            unreadable[folder] = str(exc)
            continue
        key = (manifest.technology, tuple(manifest.sources), series_kind(manifest))
        series.setdefault(key, []).append(manifest)
    for backups in series.values():
        backups.sort(key=newest_key, reverse=True)  # by finish time, not the id's suffix
    return Inventory(series=series, incomplete=incomplete, unreadable=unreadable)


def started_at(backup_id: str) -> datetime:
    """The UTC second a backup id was made at (ids are time-sortable by design)."""
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


# -- status -------------------------------------------------------------------------------
def status_rows(inventory: Inventory, now: datetime, stale_after: timedelta) -> list[dict]:
    """One row per series: its newest backup, how old it is, and whether that is too old."""
    rows = []
    known = {(m.technology, m.backup_id): m for ms in inventory.series.values() for m in ms}
    for (technology, sources, *_kind), backups in sorted(inventory.series.items()):
        newest = backups[0]
        age = now - newest.finished_at
        rows.append(
            {
                "technology": technology,
                "sources": list(sources),
                "newest_backup": newest.backup_id,
                "role": newest.role.value,
                "finished_at": newest.finished_at.isoformat(),
                "age_hours": round(age.total_seconds() / 3600, 2),
                "stale": age > stale_after,
                "incremental": newest.parent is not None,
                "broken_chain": chain_break(newest, known),
                "records": newest.totals.records,
                "bytes": newest.totals.bytes,
                "consistency": newest.consistency.kind,
                "validated": newest.quality.status,
                "backups": len(backups),
                "bytes_all_backups": sum(m.totals.bytes for m in backups),
            }
        )
    return rows


def chain_break(manifest: Manifest, known: dict[tuple[str, str], Manifest]) -> str | None:
    """Why an incremental cannot be restored, from the manifests already read: a parent
    that is not a complete, readable backup, or a chain that loops. None when it can."""
    seen = {manifest.backup_id}
    link = manifest
    while link.parent:
        parent = known.get((link.technology, link.parent))
        if parent is None:
            return f"parent {link.parent} of {link.backup_id} is missing or incomplete"
        if parent.backup_id in seen:
            return f"the chain loops back to {parent.backup_id}"
        seen.add(parent.backup_id)
        link = parent
    return None


# -- leases -------------------------------------------------------------------------------
def spare_if_leased(store: ArtifactStore, decision: Decision, now: datetime) -> Decision:
    """A folder the plan would delete is kept while a backup or restore holds a fresh
    lease on it (only doomed folders are looked at: one listing each)."""
    if decision.keep:
        return decision
    held = fresh_leases(store, decision.technology, decision.backup_id, now)
    if not held:
        return decision
    return dataclasses.replace(decision, keep=True, reason=f"in use: {held[0].describe()}")


# -- retention ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    technology: str
    backup_id: str
    keep: bool
    reason: str
    complete: bool
    bytes: int | None = None


def check_policy(keep_last: int | None, keep_days: float | None, grace_hours: float) -> None:
    if keep_last is None and keep_days is None:
        raise BadInputError(
            "prune needs a policy: --keep-last N and/or --keep-days D (it never deletes "
            "every backup of a source)"
        )
    if keep_last is not None and keep_last < 1:
        raise BadInputError(f"--keep-last must be at least 1, got {keep_last}")
    # Written so that nan and inf fail too (every comparison with nan is false).
    if keep_days is not None and not 0 < keep_days < math.inf:
        raise BadInputError(f"--keep-days must be more than 0 (a number of days), got {keep_days}")
    if not 0 <= grace_hours < math.inf:
        raise BadInputError(
            f"--grace-hours must be a number of hours, 0 or more, got {grace_hours}"
        )


def plan_retention(
    inventory: Inventory,
    *,
    keep_last: int | None,
    keep_days: float | None,
    now: datetime,
    grace: timedelta,
) -> list[Decision]:
    """Keep, per series, the newest `keep_last` and those finished within `keep_days`,
    plus every backup a kept incremental stands on; drop the rest, and incomplete
    folders older than `grace` (younger ones may be backups still running).

    The newest backup of a series is always kept, whatever the policy.
    """
    decisions: list[Decision] = []
    for backups in inventory.series.values():
        by_id = {m.backup_id: m for m in backups}
        reasons: dict[str, str] = {}
        for rank, manifest in enumerate(backups):
            if rank == 0:
                reasons[manifest.backup_id] = "newest of its sources"
            elif keep_last is not None and rank < keep_last:
                reasons[manifest.backup_id] = f"among the newest {keep_last}"
            elif keep_days is not None and now - manifest.finished_at <= timedelta(days=keep_days):
                reasons[manifest.backup_id] = f"finished within {keep_days:g} days"
        for kept in list(reasons):
            parent, child = by_id[kept].parent, kept
            while parent and parent in by_id:
                reasons.setdefault(parent, f"parent of kept incremental {child}")
                parent, child = by_id[parent].parent, parent
        for manifest in backups:
            reason = reasons.get(manifest.backup_id)
            decisions.append(
                Decision(
                    technology=manifest.technology,
                    backup_id=manifest.backup_id,
                    keep=reason is not None,
                    reason=reason or "outside the policy",
                    complete=True,
                    bytes=manifest.totals.bytes,
                )
            )
    for folder in inventory.incomplete:
        old = now - started_at(folder.backup_id) > grace
        decisions.append(
            Decision(
                technology=folder.technology,
                backup_id=folder.backup_id,
                keep=not old,
                reason=(
                    "incomplete (no manifest), older than the grace period"
                    if old
                    else "incomplete, within the grace period (may still be running)"
                ),
                complete=False,
            )
        )
    for folder, problem in inventory.unreadable.items():
        decisions.append(
            Decision(
                technology=folder.technology,
                backup_id=folder.backup_id,
                keep=True,
                reason=f"manifest unreadable, left for a person to look at: {problem}",
                complete=True,
            )
        )
    # Newest first: a prune stopped midway never leaves a kept child without its parent.
    return sorted(decisions, key=lambda d: (d.backup_id, d.technology), reverse=True)
