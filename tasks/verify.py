"""Verification tasks: the stored files against the manifest, a target against the backup."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import task

from backstop.drivers.contract import QualityChunk, RestorePlan, StoredUnit, TargetCheck
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks.host_limits import connection_slots
from backstop.tasks.logs import log_figures
from backstop.tasks.manifest import Manifest
from backstop.tasks.packaging import StoreSource, check_file
from backstop.tasks.quality import checked_parts, run_suite
from backstop.tasks.retry import RETRYING, classified
from backstop.tasks.secrets import resolve_url
from backstop.tasks.store import ArtifactStore, StoreSpec


def _check_files(
    store: StoreSpec, manifest: Manifest, *, unopenable: bool
) -> tuple[list[str], int]:
    """(problems, files whose stored bytes alone were checked). `unopenable`: a file
    the identity given cannot decrypt is checked by its stored bytes (verify after a
    key rotation) instead of refusing with BadInputError (restore)."""
    opened = store.open()
    source = StoreSource(opened, manifest.technology, manifest.backup_id)
    problems, stored_only = [], 0
    try:
        opened.check_sealed_part(manifest)  # an envelope's: an opened one was checked to open
    except IntegrityError as exc:
        problems.append(str(exc))
    for file in manifest.files:
        try:
            try:
                stored_only += not check_file(source, file)
            except BadInputError:
                if not unopenable or file.encryption is None:
                    raise
                source.check_stored(file)
                stored_only += 1
        except IntegrityError as exc:
            problems.append(str(exc))
    return problems, stored_only


@task(name="verify-backup-files", task_run_name="verify-{manifest.backup_id}", **RETRYING)
def verify_backup_files(store: StoreSpec, manifest: Manifest) -> list[str]:
    """Recompute every file's size and SHA-256 (stored and decompressed); list problems.
    An encrypted file the identity cannot open is bad input: nothing to restore with."""
    return _check_files(store, manifest, unopenable=False)[0]


@task(name="check-backup-files", task_run_name="check-{manifest.backup_id}", **RETRYING)
def check_backup_files(store: StoreSpec, manifest: Manifest) -> tuple[list[str], int]:
    """What `verify` reports of one backup: its problems, and how many encrypted files
    it could check by their stored bytes only (no identity, or one that does not open
    them)."""
    return _check_files(store, manifest, unopenable=True)


def chain_problem(store: ArtifactStore, manifest: Manifest) -> str | None:
    """Why an incremental's chain cannot be restored (a parent missing, incomplete,
    unreadable or looping back), or None when it can (a full backup always can)."""
    if not manifest.parent:
        return None
    try:
        store.chain(manifest)
    except (IntegrityError, BadInputError) as exc:
        return f"{manifest.technology}/{manifest.backup_id}: cannot be restored: {exc}"
    return None


def broken_chains(store: ArtifactStore, manifests: list[Manifest]) -> list[str]:
    """The chain problem of each incremental among `manifests`."""
    return [p for m in manifests if (p := chain_problem(store, m)) is not None]


def restore_reads(store: ArtifactStore, manifest: Manifest) -> list[Manifest]:
    """The backups one backup's restore reads (its chain, full backup first); when the
    chain is broken, just the backup itself (`broken_chains` reports the break)."""
    if chain_problem(store, manifest) is not None:
        return [manifest]
    return store.chain(manifest)


@dataclass
class TargetVerdict:
    """A restored unit compared with the backup, and its target's quality checks when
    the same read of the target gave them (None: run `target_quality` for them)."""

    check: TargetCheck
    quality: list[dict[str, Any]] | None = None


@task(name="verify-target", task_run_name="verify-target-{unit.name}", **RETRYING)
def verify_target(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    target: str,
    plan: RestorePlan,
) -> TargetVerdict:
    """One unit's target, verified once every unit is loaded (verified_target)."""
    return verified_target(technology, store, backup_id, unit, target, plan)


def verified_target(
    technology: str,
    store: StoreSpec,
    backup_id: str,
    unit: StoredUnit,
    target: str,
    plan: RestorePlan,
) -> TargetVerdict:
    """Compare the target with the backup; where the driver reads the target once for
    both (verify_with_quality), run the quality suite on the chunks of that same read."""
    driver = get_driver(technology)
    started = time.monotonic()
    source = StoreSource(store.open(), technology, backup_id)
    url = resolve_url(target)
    with_quality = checked_parts(driver, unit) is not None
    with (
        connection_slots(driver, "verify+quality" if with_quality else "verify", url),
        classified(driver, f"verifying {unit.name} in {redact_url(target)}"),
    ):
        if with_quality:
            try:
                reading = driver.verify_with_quality(unit, url, source, plan)
            except NotImplementedError:
                pass
            else:
                returned: list[TargetCheck] = []
                chunks = _keeping_return(reading, returned)
                quality = run_suite(technology, chunks, None, unit.name)
                for _ in chunks:  # read to its end whatever the suite left
                    pass
                return _logged(TargetVerdict(returned[0], quality), target, started)
        return _logged(TargetVerdict(driver.verify_unit(unit, url, source, plan)), target, started)


def _logged(verdict: TargetVerdict, target: str, started: float) -> TargetVerdict:
    log_figures(
        f"verify {verdict.check.unit}",
        target=redact_url(target),
        records=verdict.check.records,
        equal=verdict.check.ok,
        problems=len(verdict.check.problems),
        seconds=round(time.monotonic() - started, 3),
    )
    return verdict


def _keeping_return(
    generator: Generator[QualityChunk, None, TargetCheck], into: list[TargetCheck]
) -> Iterator[QualityChunk]:
    """The generator's items; its return value goes into `into` once it ends."""
    into.append((yield from generator))


@task(name="target-quality", task_run_name="target-quality-{unit.name}", **RETRYING)
def target_quality(
    technology: str, unit: StoredUnit, target: str, plan: RestorePlan
) -> list[dict[str, Any]]:
    """The technology's data-quality suite on what a restore left in the target (no
    checks when the technology, or this backup's mode, has no suite)."""
    driver = get_driver(technology)
    if checked_parts(driver, unit) is None:
        return []
    with (
        connection_slots(driver, "quality", resolve_url(target)),
        classified(driver, f"checking the data quality of {unit.name} in {redact_url(target)}"),
    ):
        chunks = driver.target_quality_chunks(unit, resolve_url(target), plan)
        return run_suite(technology, chunks, None, unit.name)
