"""Backup tasks: quiesce, snapshot (stream -> package -> upload), validate, commit."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from backstop.drivers.contract import Driver, QualityChunk, StoredUnit, Unit
from backstop.drivers.errors import IntegrityError, PermanentError
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks import crypto, resume
from backstop.tasks.host_limits import connection_slots
from backstop.tasks.logs import log_figures
from backstop.tasks.manifest import Manifest
from backstop.tasks.packaging import ReadBackSource, Stage, StoreSink, StoreSource, check_file
from backstop.tasks.packs import each_in_pack, pack_run_name
from backstop.tasks.progress import reporter
from backstop.tasks.quality import SuiteRun, checked_parts, run_suite
from backstop.tasks.resume import Snapshot
from backstop.tasks.retry import RETRYING, classified, two_steps
from backstop.tasks.secrets import resolve_options, resolve_url, shown_url
from backstop.tasks.store import ArtifactStore, StoreSpec

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


class PackagingSuite:
    """The suite's run over the chunks a driver observes while it backs up a unit.

    Each chunk is checked on a stage thread, so Great Expectations and the key ledgers
    overlap the driver's reading; the stage's queue holds one chunk, so memory stays
    a few chunks (the driver's, the queued one, the one being checked).
    """

    def __init__(self, technology: str, unit: str) -> None:
        self._run = SuiteRun(technology, unit, bounds_later=True)
        self._stage: Stage[QualityChunk] | None = None
        self.observed = False

    def add(self, chunk: QualityChunk) -> None:
        if self._stage is None:  # the first chunk starts the stage (and imports GX)
            self._stage = Stage("quality", self._run.add, maxsize=1)
        self.observed = True
        self._stage.put(chunk)

    def verdicts(self, driver: Driver, unit: StoredUnit) -> list[dict[str, Any]] | None:
        """The suite's checks, now that the unit's parts are known; None when nothing
        was observed or this unit's kind has no suite (the read-back decides)."""
        if self._stage is not None:
            self._stage.close()  # every chunk checked; a chunk's error is raised here
        parts = checked_parts(driver, unit)
        if not self.observed or parts is None:
            return None
        return self._run.verdicts(parts)

    def close(self) -> None:
        if self._stage is not None:
            with contextlib.suppress(BaseException):  # the driver's failure matters more
                self._stage.close()
        self._run.close()


def _writing_for_read_back(store: ArtifactStore, recipient: str | None) -> ArtifactStore:
    """An encrypted backup's files are also encrypted to its one-time read-back key
    (crypto.read_back_pair), which the read-back decrypts with."""
    if recipient is not None and store.keys.recipients:
        extra = crypto.parse_recipients([recipient])
        store.keys = dataclasses.replace(store.keys, recipients=[*store.keys.recipients, *extra])
    return store


def _reading_for_read_back(store: ArtifactStore, identity: SecretStr | None) -> ArtifactStore:
    if identity is not None and store.keys.recipients:
        keys = crypto.parse_identities(identity.get_secret_value(), "the read-back key")
        store.keys = dataclasses.replace(store.keys, identities=keys)
    return store


@task(name="snapshot-unit", task_run_name="snapshot-{unit.name}", **RETRYING)
def snapshot_unit(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: Unit,
    read_back_recipient: str | None = None,
) -> Snapshot:
    """One unit's snapshot, where the flow holds a quiesce: every unit's read-back
    waits until the quiesce is released (validate_unit)."""
    return take_snapshot(technology, store, backup_id, unit, read_back_recipient)


@dataclasses.dataclass(frozen=True)
class BackedUp:
    """A unit stored and read back; `snapshot_done_at` (epoch seconds) times the flow's
    snapshot phase: until the last unit's snapshot was done."""

    snapshot: Snapshot
    read_back: list[dict[str, Any]]
    snapshot_done_at: float


@task(name="backup-units", task_run_name=pack_run_name("backup"), **RETRYING)
def backup_units(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    units: list[Unit],
    read_back_recipient: str | None = None,
    read_back_identity: SecretStr | None = None,
) -> list[BackedUp]:
    """Each unit's snapshot and then its read-back, in one task run, where no quiesce is
    held (nothing to release first): one task run per unit, or per pack of small units
    (tasks/packs.py), instead of two per unit; a task run is most of a small shard's
    cost (docs/scale.md). A transient failure of a read-back retries that read-back
    alone (two_steps)."""

    def back_up(index: int) -> BackedUp:
        unit = units[index]
        taken, done_at, checks = two_steps(
            "snapshot",
            unit.name,
            lambda: take_snapshot(technology, store, backup_id, unit, read_back_recipient),
            lambda snapshot: read_back(technology, store, backup_id, snapshot.unit,
                                       snapshot.checks is not None, read_back_identity),
        )  # fmt: skip
        return BackedUp(snapshot=taken, read_back=checks, snapshot_done_at=done_at)

    return each_in_pack("backup", [u.name for u in units], back_up)


def take_snapshot(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: Unit,
    read_back_recipient: str | None = None,
) -> Snapshot:
    """Snapshot one unit and package it into the store as it streams; where the driver
    observes its records' columns on the way (FileSink.observe), run the quality suite
    in the same pass."""
    driver = get_driver(technology)
    started = time.monotonic()
    progress = reporter()
    label = f"backup {unit.name}"
    suite = PackagingSuite(technology, unit.name) if driver.quality_suite else None
    writing = _writing_for_read_back(store.open(), read_back_recipient)
    sink = StoreSink(
        writing,
        technology,
        backup_id,
        progress=progress.start(label),
        observe=suite.add if suite else None,
    )
    # An option may hold a reference too (a password in admin_url): resolved here only.
    resolved = dataclasses.replace(
        unit, source=resolve_url(unit.source), options=resolve_options(unit.options)
    )
    try:
        try:
            with (
                connection_slots(driver, "backup", resolved.source),
                classified(driver, f"{unit.name} ({redact_url(unit.source)})"),
            ):
                result = driver.backup_unit(resolved, sink)
        finally:
            progress.finish(label)
        stored = StoredUnit(
            name=unit.name,
            source=shown_url(unit.source),
            records=result.records,
            point=result.point,
            meta=result.meta,
            files=sink.files,
        )
        checks = suite.verdicts(driver, stored) if suite else None
    finally:
        if suite:
            suite.close()
    if driver.capabilities.resumable:  # kept if another unit fails (tasks/resume.py)
        resume.record_done(writing, technology, backup_id, Snapshot(unit=stored, checks=checks))
    log_figures(
        f"snapshot {unit.name}",
        source=stored.source,
        records=stored.records,
        bytes=sum(f.bytes for f in stored.files),
        raw_bytes=sum(f.raw_bytes for f in stored.files),
        files=len(stored.files),
        seconds=round(time.monotonic() - started, 3),
        consistency=stored.point,
    )
    return Snapshot(unit=stored, checks=checks)


@task(name="validate-unit", task_run_name="validate-{unit.name}", **RETRYING)
def validate_unit(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    checked: bool = False,
    read_back_identity: SecretStr | None = None,
) -> list[dict[str, Any]]:
    """One unit's read-back, after the quiesce was released (read_back)."""
    return read_back(technology, store, backup_id, unit, checked, read_back_identity)


def read_back(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    checked: bool = False,
    read_back_identity: SecretStr | None = None,
) -> list[dict[str, Any]]:
    """Read back every file of a unit: its stored bytes must be the ones hashed on the
    way in (size, SHA-256), and decode to what was compressed (zstd's frame checksum).
    `checked`: the suite already ran as the unit was packaged (snapshot_unit), so no
    record is parsed again. Otherwise, where the technology has a data-quality suite,
    the read is the suite's pass over the records (tasks/quality.py); other files are
    read back alone."""
    driver = get_driver(technology)
    reader = _reading_for_read_back(store.open(), read_back_identity)
    source = StoreSource(reader, technology, backup_id)
    reading = ReadBackSource(source)
    checks: list[dict[str, Any]] = []
    parts = None if checked else checked_parts(driver, unit)
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
                if not check_file(source, file, rehash_raw=False):
                    # Encrypted, read back where its read-back key is not (another
                    # process): its stored bytes alone were checked. Said, not hidden.
                    check["stored_bytes_only"] = True
            except IntegrityError as exc:
                check |= {"passed": False, "problem": str(exc)}
        checks.append(check)
    return checks


@task(name="commit-manifest", **RETRYING)
def commit_manifest(store: StoreSpec, manifest: Manifest) -> str:
    opened = store.open()
    if manifest.encryption is not None:
        # A unit's task run twice (a Dask worker died, a retry) wrote its files twice
        # under random names: only the attempt that returned is the backup's.
        named = {f.path for f in manifest.files if f.path}
        opened.remove_unnamed(manifest.technology, manifest.backup_id, named)
    path = opened.write_manifest(manifest)
    try:  # the backup is complete: its resume mark and records have served
        resume.remove_records(opened, manifest.technology, manifest.backup_id)
    except Exception as exc:  # harmless leftovers: nothing reads them beside a manifest
        get_run_logger().warning("removing the resume records of %s failed: %s",
                                 manifest.backup_id, exc)  # fmt: skip
    return path


@task(name="discard-partial-backup", cache_policy=NO_CACHE)
def discard_partial(store: StoreSpec, technology: str, backup_id: str) -> None:
    """Best effort: remove a failed backup's files (it has no manifest either way)."""
    store.open().delete_backup(technology, backup_id)
