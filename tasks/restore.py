"""Restore tasks: check the targets, then load each unit (and verify it, where it has a
target of its own)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect import task

from backstop.drivers.contract import RestorePlan, RestoreResult, StoredUnit
from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks.host_limits import connection_slots
from backstop.tasks.identity import identities
from backstop.tasks.logs import log_figures
from backstop.tasks.manifest import Manifest
from backstop.tasks.packaging import StoreSource
from backstop.tasks.packs import each_in_pack, pack_run_name
from backstop.tasks.progress import reporter
from backstop.tasks.retry import RETRYING, classified, two_steps
from backstop.tasks.secrets import resolve_url, shown_url
from backstop.tasks.store import StoreSpec
from backstop.tasks.verify import TargetVerdict, verified_target


@task(name="prepare-targets", **RETRYING)
def prepare_targets(
    technology: str, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
) -> dict[str, Any]:
    """Check the targets; what they held before any write, for every restore attempt."""
    driver = get_driver(technology)
    with classified(driver, "checking the restore targets"):
        return dict(driver.prepare_restore(units, [resolve_url(t) for t in targets], plan) or {})


@task(name="restore-parts", **RETRYING)
def restore_parts(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    units: Sequence[StoredUnit],
    plan: RestorePlan,
) -> list[str] | None:
    """The parts the restore writes; an --include that selects none of the backup is
    bad input, refused before any target is looked at."""
    driver = get_driver(technology)
    source = StoreSource(store.open(), technology, backup_id)
    with classified(driver, "reading which parts the backup holds"):
        parts = driver.restore_parts(units, source, plan)
    if plan.include and parts is not None and not parts:
        raise BadInputError(
            f"--include {' '.join(plan.include)} matches nothing in backup "
            f"{technology}/{backup_id}; nothing was restored"
        )
    return parts


@task(name="absent-parts", **RETRYING)
def absent_parts(technology: str, targets: Sequence[str], parts: Sequence[str]) -> list[str]:
    driver = get_driver(technology)
    with classified(driver, "looking at what the targets lack"):
        return driver.absent_parts([resolve_url(t) for t in targets], parts)


@task(name="drop-parts", **RETRYING)
def drop_parts(technology: str, targets: Sequence[str], parts: Sequence[str]) -> None:
    """Remove what a failed overwrite created (its rollback)."""
    driver = get_driver(technology)
    with classified(driver, f"removing {', '.join(parts)} (created by the failed restore)"):
        driver.drop_parts([resolve_url(t) for t in targets], parts)


@task(name="restore-unit", task_run_name="restore-{unit.name}", **RETRYING)
def restore_unit(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    target: str,
    plan: RestorePlan,
) -> RestoreResult:
    """One unit's load, where the target is shared by every unit: each is verified
    once all are loaded (verify_target)."""
    return load_unit(technology, store, backup_id, unit, target, plan)


@dataclass(frozen=True)
class Restored:
    """A unit loaded and its target verified; `loaded_at` (epoch seconds) times the
    flow's load phase: until the last unit was loaded."""

    result: RestoreResult
    verdict: TargetVerdict
    loaded_at: float


@task(name="restore-and-verify-units", task_run_name=pack_run_name("restore"), **RETRYING)
def restore_and_verify_units(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    units: list[StoredUnit],
    targets: list[str],
    plan: RestorePlan,
) -> list[Restored]:
    """Each unit's load and then its target's verification, in one task run, where each
    unit has a target of its own (a shard): one task run per unit, or per pack of small
    units (tasks/packs.py), instead of two per unit (docs/scale.md). A transient failure
    of a verification retries it alone (two_steps): a load re-run after its commit
    would count its cells as skipped."""

    def restore(index: int) -> Restored:
        unit, target = units[index], targets[index]
        result, loaded_at, verdict = two_steps(
            "load",
            unit.name,
            lambda: load_unit(technology, store, backup_id, unit, target, plan),
            lambda _: verified_target(technology, store, backup_id, unit, target, plan),
        )
        return Restored(result=result, verdict=verdict, loaded_at=loaded_at)

    return each_in_pack("restore", [u.name for u in units], restore)


def load_unit(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    target: str,
    plan: RestorePlan,
) -> RestoreResult:
    """Load one unit of the backup into its target, as the driver writes it."""
    driver = get_driver(technology)
    started = time.monotonic()
    progress = reporter()
    label = f"restore {unit.name}"
    advance = progress.start(label, total_bytes=sum(f.raw_bytes for f in unit.files))
    source = StoreSource(store.open(), technology, backup_id, progress=advance)
    try:
        with (
            connection_slots(driver, "restore", resolve_url(target)),
            classified(driver, f"restoring {unit.name} into {redact_url(target)}"),
        ):
            result = driver.restore_unit(unit, resolve_url(target), source, plan)
    finally:
        progress.finish(label)
    log_figures(
        f"restore {unit.name}",
        backup=backup_id,
        target=redact_url(target),
        records_written=result.records_written,
        records_skipped=result.records_skipped,
        bytes=sum(f.bytes for f in unit.files),
        seconds=round(time.monotonic() - started, 3),
    )
    return result


@task(name="load-manifest", **RETRYING)
def load_manifest(
    store: StoreSpec, technology: str, ref: str, sources: Sequence[str] = ()
) -> Manifest:
    """A backup id, or `latest` (of these sources, when given: see ArtifactStore.resolve)."""
    return store.open().resolve(
        technology,
        ref,
        [shown_url(s) for s in sources],
        identify=lambda: identities(technology, sources),
    )


@task(name="safety-options", **RETRYING)
def safety_options(
    technology: str, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
) -> dict | None:
    driver = get_driver(technology)
    with classified(driver, "looking at what the overwrite replaces"):
        return driver.safety_backup_options(units, [resolve_url(t) for t in targets], plan)
