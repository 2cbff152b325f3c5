"""Backup tasks: quiesce, snapshot (stream -> package -> upload), validate, commit."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from backstop.drivers.contract import StoredUnit, Unit
from backstop.drivers.errors import IntegrityError, PermanentError
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks.manifest import Manifest
from backstop.tasks.packaging import ReadBackSource, StoreSink, StoreSource, check_file
from backstop.tasks.progress import reporter
from backstop.tasks.quality import checked_parts, run_suite
from backstop.tasks.retry import RETRYING, classified
from backstop.tasks.secrets import resolve_options, resolve_url
from backstop.tasks.store import StoreSpec

READ_BACK = "read-back"  # a check of the stored bytes, as opposed to the data's quality


@task(name="plan-backup", **RETRYING)
def plan_backup(technology: str, sources: Sequence[str], options: dict[str, Any]) -> list[Unit]:
    """The driver plans with resolved URLs; the units it returns travel on as task
    parameters, so each carries its source as given (references, not secrets)."""
    driver = get_driver(technology)
    resolved = [resolve_url(s) for s in sources]
    with classified(driver, "planning the backup"):
        units = driver.plan_backup(resolved, options)
    as_given = dict(zip(resolved, sources, strict=True))
    for unit in units:
        if unit.source not in as_given:
            raise PermanentError(
                f"driver {driver.name} planned unit {unit.name} with a source that is none "
                f"of the URLs it was given ({redact_url(unit.source)})"
            )
    return [dataclasses.replace(u, source=as_given[u.source]) for u in units]


@task(name="quiesce", **RETRYING)
def quiesce(
    technology: str, sources: Sequence[str], options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    driver = get_driver(technology)
    with classified(driver, "quiescing the source"):
        return driver.quiesce([resolve_url(s) for s in sources], options or {})


@task(name="release-quiesce", **RETRYING)
def release_quiesce(technology: str, sources: Sequence[str], handle: dict[str, Any] | None) -> None:
    driver = get_driver(technology)
    with classified(driver, "releasing the quiesce"):
        driver.release(handle, [resolve_url(s) for s in sources])


@task(name="snapshot-unit", task_run_name="snapshot-{unit.name}", **RETRYING)
def snapshot_unit(technology: str, store: StoreSpec, backup_id: str, unit: Unit) -> StoredUnit:
    """Snapshot one unit and package it into the store as it streams."""
    driver = get_driver(technology)
    progress = reporter()
    label = f"backup {unit.name}"
    sink = StoreSink(store.open(), technology, backup_id, progress=progress.start(label))
    # An option may hold a reference too (a password in admin_url): resolved here only.
    resolved = dataclasses.replace(
        unit, source=resolve_url(unit.source), options=resolve_options(unit.options)
    )
    try:
        with classified(driver, f"{unit.name} ({redact_url(unit.source)})"):
            result = driver.backup_unit(resolved, sink)
    finally:
        progress.finish(label)
    return StoredUnit(
        name=unit.name,
        source=redact_url(unit.source),
        records=result.records,
        point=result.point,
        meta=result.meta,
        files=sink.files,
    )


@task(name="validate-unit", task_run_name="validate-{unit.name}", **RETRYING)
def validate_unit(
    technology: str, store: StoreSpec, backup_id: str, unit: StoredUnit
) -> list[dict[str, Any]]:
    """Read back every file of a unit: it must decompress to what was hashed on the
    way in. Where the technology has a data-quality suite, that read is the suite's
    pass over the records (tasks/quality.py); other files are read back alone."""
    driver = get_driver(technology)
    source = StoreSource(store.open(), technology, backup_id)
    reading = ReadBackSource(source)
    checks: list[dict[str, Any]] = []
    parts = checked_parts(driver, unit)
    if parts is not None:
        try:
            checks += run_suite(technology, driver.quality_chunks(unit, reading), parts, unit.name)
        except IntegrityError as exc:
            checks.append({"check": READ_BACK, "part": unit.name, "passed": False,
                           "problem": str(exc)})  # fmt: skip
    for file in unit.files:
        check: dict[str, Any] = {"check": READ_BACK, "file": file.name, "passed": True}
        if file.name not in reading.checked:  # not read to its end by the suite
            try:
                check_file(source, file, rehash_raw=False)
            except IntegrityError as exc:
                check |= {"passed": False, "problem": str(exc)}
        checks.append(check)
    return checks


@task(name="commit-manifest", **RETRYING)
def commit_manifest(store: StoreSpec, manifest: Manifest) -> str:
    return store.open().write_manifest(manifest)


@task(name="discard-partial-backup", cache_policy=NO_CACHE)
def discard_partial(store: StoreSpec, technology: str, backup_id: str) -> None:
    """Best effort: remove a failed backup's files (it has no manifest either way)."""
    store.open().delete_backup(technology, backup_id)
