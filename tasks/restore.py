"""Restore tasks: check the targets, then load each unit."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import task

from backstop.drivers.contract import RestorePlan, RestoreResult, StoredUnit
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks.manifest import Manifest
from backstop.tasks.packaging import StoreSource
from backstop.tasks.progress import reporter
from backstop.tasks.retry import RETRYING, classified
from backstop.tasks.secrets import resolve_url
from backstop.tasks.store import StoreSpec


@task(name="prepare-targets", **RETRYING)
def prepare_targets(
    technology: str, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
) -> None:
    driver = get_driver(technology)
    with classified(driver, "checking the restore targets"):
        driver.prepare_restore(units, [resolve_url(t) for t in targets], plan)


@task(name="restore-unit", task_run_name="restore-{unit.name}", **RETRYING)
def restore_unit(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    target: str,
    plan: RestorePlan,
) -> RestoreResult:
    driver = get_driver(technology)
    progress = reporter()
    label = f"restore {unit.name}"
    advance = progress.start(label, total_bytes=sum(f.raw_bytes for f in unit.files))
    source = StoreSource(store.open(), technology, backup_id, progress=advance)
    try:
        with classified(driver, f"restoring {unit.name} into {redact_url(target)}"):
            return driver.restore_unit(unit, resolve_url(target), source, plan)
    finally:
        progress.finish(label)


@task(name="load-manifest", **RETRYING)
def load_manifest(store: StoreSpec, technology: str, ref: str) -> Manifest:
    return store.open().resolve(technology, ref)


@task(name="safety-options", **RETRYING)
def safety_options(
    technology: str, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
) -> dict | None:
    driver = get_driver(technology)
    with classified(driver, "looking at what the overwrite replaces"):
        return driver.safety_backup_options(units, [resolve_url(t) for t in targets], plan)
