"""The backup flow: quiesce -> snapshot/package/upload -> validate -> release -> manifest."""

from __future__ import annotations

import dataclasses
import posixpath
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, unmapped
from pydantic import SecretStr

import backstop
from backstop.drivers.contract import StoredUnit, Unit
from backstop.drivers.errors import BackstopError, BadInputError, IntegrityError, QualityError
from backstop.drivers.registry import get_driver
from backstop.flows.params import BackupOutcome, BackupRequest
from backstop.flows.runtime import Stopwatch, per_task, run_each, task_runner
from backstop.flows.timeouts import flow_timeout
from backstop.tasks import crypto, resume
from backstop.tasks.artifacts import publish_quality, publish_table
from backstop.tasks.backup import (
    READ_BACK,
    Snapshot,
    backup_units,
    commit_manifest,
    discard_partial,
    plan_backup,
    quiesce,
    release_quiesce,
    snapshot_unit,
    validate_unit,
)
from backstop.tasks.events import reported
from backstop.tasks.identity import identify
from backstop.tasks.leases import Lease, fresh_leases
from backstop.tasks.logs import install_log_masking
from backstop.tasks.manifest import (
    ConsistencyInfo,
    DriverInfo,
    EncryptionInfo,
    Manifest,
    Role,
    totals_of,
)
from backstop.tasks.quality import quality_of
from backstop.tasks.secrets import refuse_literal_secrets, resolve_urls, shown_url, shown_urls
from backstop.tasks.store import ArtifactStore


@flow(
    name="backstop-backup",
    task_runner=task_runner(),
    flow_run_name="backup-{request.technology}",
    timeout_seconds=flow_timeout("backup"),
)
def backup(request: BackupRequest) -> BackupOutcome:
    # The role rides on the events: a staleness automation counts ordinary backups only.
    role = request.role or default_role()
    with reported("backup", request.technology, request.sources, role=role) as report:
        report.sources = shown_urls(request.sources)  # a block's URL, as in the manifest
        outcome = _backup(request.model_copy(update={"role": role}))
        report.payload = outcome.model_dump(
            mode="json", include={"backup_id", "records", "bytes", "duration_s", "consistency"}
        )
    return outcome


def _backup(request: BackupRequest) -> BackupOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    logger = get_run_logger()
    clock = Stopwatch()
    driver = get_driver(request.technology)
    driver.check_options(request.options, "backup")
    driver.check_urls(resolve_urls(request.sources), "source")
    if request.incremental and not driver.capabilities.incremental:
        raise BadInputError(f"{driver.name} does not support incremental backups")
    store = request.store.open()
    technology, spec = driver.name, request.store
    role = request.role or default_role()
    source_ids = identify(technology, request.sources)
    started = datetime.now(UTC)
    sources = shown_urls(request.sources)  # a block's URL, redacted, not its name

    if request.resume and not driver.capabilities.resumable:
        raise BadInputError(
            f"--resume: {driver.name} backups cannot be resumed (their units share one "
            "consistency point); take the backup again"
        )
    mark = resume.read_mark(store, technology, request.resume) if request.resume else None
    parent = None
    options = dict(request.options)
    if mark is not None:
        role = mark.role  # the backup that was started: a scheduled one stays so
    if request.incremental:
        parent = (
            _resumed_parent(store, mark, source_ids)
            if mark is not None and mark.parent
            else store.newest_parent(technology, sources, source_ids)
        )
        if parent is None:
            raise BadInputError(
                f"--incremental: no complete {technology} backup of {sources} in "
                f"{spec.display()} to build on; take a full backup first"
            )
        if parent.encryption is not None and not store.keys.recipients:
            raise BadInputError(
                f"--incremental: the parent backup {parent.backup_id} is encrypted "
                f"(recipients {', '.join(parent.encryption.recipients)}); give --recipient "
                "so that this link is not stored in clear"
            )
        if parent.sealed is not None:
            raise BadInputError(
                f"--incremental: the parent backup {parent.backup_id} is encrypted and its "
                "consistency point is in its sealed manifest: give --identity that opens it "
                f"(recipients {', '.join(parent.encryption.recipients)}), or take a full backup"
            )
        # The driver reads from the parent's consistency point on; the manifest keeps
        # only the parent's id.
        options["parent"] = {
            "backup_id": parent.backup_id,
            "units": {u.name: u.point for u in parent.units},
        }
        logger.info("incremental on top of %s", parent.backup_id)
    asked = resume.ResumeMark(
        technology=technology,
        backup_id=mark.backup_id if mark else "",
        started_at=started,
        sources=sources,
        source_ids=source_ids,
        options_sha256=resume.options_digest(request.options),
        parent=parent.backup_id if parent else None,
        role=role,
        recipients=store.keys.fingerprints if store.keys.recipients else [],
    )
    if mark is not None:
        resume.check_same_backup(mark, asked)
        _refuse_older_than_newest(store, mark, sources, source_ids)
        started = mark.started_at

    # A folder of its own (ids can collide), then a lease held while it is written:
    # prune leaves a leased folder alone.
    backup_id = mark.backup_id if mark else store.claim_backup_id(technology)
    logger.info("backup %s/%s of %s into %s", technology, backup_id, sources, spec.display())
    try:
        lease = Lease(store, technology, backup_id, "backup").acquire()
    except BaseException:
        if mark is None:
            discard_partial(spec, technology, backup_id)
        raise
    if mark is not None:
        try:  # with the lease held: no other run is at it, and it is still unfinished
            _refuse_running(store, technology, backup_id, lease)
            resume.check_same_backup(resume.read_mark(store, technology, backup_id), asked)
        except BaseException:
            lease.release()  # the folder is not this run's to remove
            raise
    # An encrypted backup's one-time read-back key (tasks/crypto.py read_back_pair).
    read_back, read_back_recipient = (
        crypto.read_back_pair() if store.keys.recipients else (None, None)
    )
    planned: list[Unit] = []
    try:
        kept: list[tuple[Snapshot, list[dict[str, Any]]]] = []
        if mark is None and driver.capabilities.resumable:
            resume.write_mark(store, asked.model_copy(update={"backup_id": backup_id}))
        planned = plan_backup(technology, request.sources, options)
        if mark is not None:
            kept = _kept_units(request, backup_id, planned, logger)
        taken = {s.unit.name for s, _ in kept}
        snapshots, read_back_checks, handle, phases = _snapshot_and_read_back(
            request,
            [u for u in planned if u.name not in taken],
            options,
            backup_id,
            (read_back_recipient, read_back),
            clock,
        )
        done = {
            s.unit.name: (s, more)
            for s, more in [*kept, *zip(snapshots, read_back_checks, strict=True)]
        }
        ordered = [done[u.name] for u in planned]
        stored = [s.unit for s, _ in ordered]
        quality = quality_of([c for s, more in ordered for c in (s.checks or []) + more])
        unreadable = [
            c["problem"] for c in quality.checks if c["check"] == READ_BACK and not c["passed"]
        ]
        if unreadable:  # the stored bytes are wrong: this is no backup at all
            raise IntegrityError(f"backup {backup_id} failed its read-back: {unreadable}")
        consistency = driver.consistency(handle, stored)
        if kept:
            consistency.warnings.append(
                f"resumed: {len(kept)} of {len(stored)} units were stored by the attempt "
                f"started at {started:%Y-%m-%dT%H:%M:%SZ}, the others by the resume; each "
                "unit is at its own point"
            )
        for warning in consistency.warnings:
            logger.warning(warning)
        manifest = Manifest(
            technology=technology,
            backup_id=backup_id,
            backstop_version=backstop.__version__,
            driver=DriverInfo(name=driver.name, version=driver.version),
            sources=sources,
            role=role,
            source_ids=source_ids,
            started_at=started,
            finished_at=datetime.now(UTC),
            parent=parent.backup_id if parent else None,
            consistency=ConsistencyInfo(
                kind=consistency.kind.value,
                point=consistency.point,
                warnings=consistency.warnings,
            ),
            options=request.options,
            units=stored,
            totals=totals_of(stored),
            quality=quality,
            encryption=(
                EncryptionInfo(recipients=store.keys.fingerprints)
                if store.keys.recipients
                else None
            ),
        )
        commit_manifest(spec, manifest)
    except BaseException as exc:
        lease.release()  # first: a last heartbeat must not recreate the removed folder
        # A resumed backup's folder is never removed: it holds what earlier runs stored.
        _keep_or_discard(request, backup_id, len(planned), exc, logger, resuming=mark is not None)
        raise
    finally:
        lease.release()
    publish_quality("backup", technology, f"backup {technology}/{backup_id}", quality,
                    sources, role)  # fmt: skip
    if quality.status != "passed":
        # A faithful copy of data that breaks the suite: kept, so the data is not lost,
        # but marked, so restore and incrementals refuse it unless told otherwise.
        failed = [c["problem"] for c in quality.checks if not c["passed"]]
        raise QualityError(
            f"backup {backup_id} is complete but failed its data-quality checks "
            f"(restore refuses it without --force): " + "; ".join(failed[:10])
        )

    outcome = BackupOutcome(
        backup_id=backup_id,
        technology=technology,
        status="completed",
        parent=manifest.parent,
        role=manifest.role,
        records=manifest.totals.records,
        bytes=manifest.totals.bytes,
        raw_bytes=manifest.totals.raw_bytes,
        files=manifest.totals.files,
        duration_s=clock.seconds,
        kept_units=len(kept),
        consistency=manifest.consistency.kind,
        consistency_point=manifest.consistency.point,
        store=store.relative(store.backup_dir(technology, backup_id)),
        phases_s=phases,
    )
    publish_table(
        "backup",
        technology,
        [_unit_row(u) for u in stored],
        f"Backup {backup_id} of {technology}: {outcome.records} records, {outcome.bytes} bytes "
        f"stored, consistency {outcome.consistency}, {outcome.duration_s} s, into {spec.display()}",
        places=sources,
        role=role,
    )
    logger.info(
        "backup %s completed: %s records in %.1f s", backup_id, outcome.records, outcome.duration_s
    )
    return outcome


def default_role() -> Role:
    """Scheduled when the run belongs to a deployment (its schedule, the UI's run
    button, an automation), ad hoc otherwise (the CLI, a script calling the flow)."""
    from prefect.runtime import deployment

    return Role.SCHEDULED if deployment.id else Role.ADHOC


def _snapshot_and_read_back(
    request: BackupRequest,
    units: list[Unit],
    options: dict[str, Any],
    backup_id: str,
    read_back_key: tuple[str | None, SecretStr | None],
    clock: Stopwatch,
) -> tuple[list[Snapshot], list[list[dict[str, Any]]], Any, dict[str, float]]:
    """Quiesce, stream the units into the store, release the quiesce on every path, and
    read every unit back: (snapshots, read-back checks, quiesce handle, phases).

    Without a quiesce, each unit is read back as soon as it is stored, in the same task
    run (backup_units): one task run per unit (or per pack of small units), not two. With one, the read-backs wait
    for its release, so that the source is held no longer than its snapshots take."""
    technology, spec = request.technology, request.store
    recipient, identity = read_back_key
    started = time.time() - clock.seconds
    handle = quiesce(technology, request.sources, options)
    if handle is not None:  # e.g. the cluster time every unit's snapshot reads at
        units = [dataclasses.replace(u, options={**u.options, "quiesce": handle}) for u in units]
    try:
        if handle is None:
            backed_up = run_each(backup_units, technology, unmapped(spec), unmapped(backup_id),
                                 units, unmapped(recipient), unmapped(identity),
                                 packs_of=per_task(len(units)))  # fmt: skip
        else:
            stored = run_each(snapshot_unit, technology, unmapped(spec), unmapped(backup_id),
                                              units, unmapped(recipient))  # fmt: skip
    except BaseException:
        try:
            release_quiesce(technology, request.sources, handle)
        except Exception as exc:  # the original failure matters more; still say it loudly
            get_run_logger().error("releasing the quiesce failed too: %s", exc)
        raise
    release_quiesce(technology, request.sources, handle)
    if handle is None:
        # The snapshot phase lasts until the last unit was stored, whatever read-backs
        # overlapped it; the validate phase is what the flow waited for after that.
        now = clock.seconds
        stored_at = max((b.snapshot_done_at - started for b in backed_up), default=now)
        snapshot_s = round(min(max(0.0, stored_at), now), 3)
        phases = {"snapshot": snapshot_s, "validate": round(max(0.0, now - snapshot_s), 3)}
        return [b.snapshot for b in backed_up], [b.read_back for b in backed_up], None, phases
    phases = {"snapshot": clock.seconds}
    # Where the suite ran as a unit was packaged, the read-back checks its bytes only.
    checked = [s.checks is not None for s in stored]
    read_back_checks = run_each(
        validate_unit, technology, unmapped(spec), unmapped(backup_id), [s.unit for s in stored],
        checked, unmapped(identity),
    )  # fmt: skip
    phases["validate"] = round(clock.seconds - phases["snapshot"], 3)
    return stored, read_back_checks, handle, phases


def _refuse_older_than_newest(
    store: ArtifactStore, mark: resume.ResumeMark, sources: list[str], source_ids: list[str]
) -> None:
    """A resumed backup is as new as its first attempt; once a newer one of the same
    sources is complete, finishing it would make an older state `latest`."""
    newest = store.newest_parent(mark.technology, sources, source_ids)
    if newest is not None and newest.started_at > mark.started_at:
        raise BadInputError(
            f"--resume {mark.backup_id}: backup {newest.backup_id} of the same sources was "
            f"started later ({newest.started_at:%Y-%m-%d %H:%M:%S} UTC) and is complete; "
            "finishing the older one would make it the latest. Take a new backup instead; "
            "prune removes the incomplete one."
        )


def _resumed_parent(
    store: ArtifactStore, mark: resume.ResumeMark, source_ids: list[str]
) -> Manifest:
    """The parent the first attempt built on, held to what newest_parent asks of one."""
    parent = store.read_manifest(mark.technology, mark.parent)
    if parent.quality.status != "passed" or (parent.source_ids and parent.source_ids != source_ids):
        raise BadInputError(
            f"--resume {mark.backup_id}: its parent {mark.parent} is not a validated backup "
            "of the same sources; take a new backup instead"
        )
    return parent


def _refuse_running(store: ArtifactStore, technology: str, backup_id: str, lease: Lease) -> None:
    """A resume takes its lease first, then looks for another's: of two at once, at
    least one sees the other and stops (both may), never both write."""
    others = [
        info
        for info in fresh_leases(store, technology, backup_id)
        if info.kind == "backup" and posixpath.basename(info.name) != posixpath.basename(lease.path)
    ]
    if others:
        raise BadInputError(
            f"--resume {backup_id}: the backup is still being written: {others[0].describe()}"
        )


def _kept_units(
    request: BackupRequest,
    backup_id: str,
    planned: list[Unit],
    logger: Any,
) -> list[tuple[Snapshot, list[dict[str, Any]]]]:
    """The units an earlier attempt stored, each read back again (its files' sizes and
    SHA-256 as recorded, and, where its suite did not run while it was packaged, the
    suite), with the identity given (an encrypted backup's earlier one-time read-back
    key is gone); what fails is backed up again. Every other file of the folder goes."""
    technology, spec = request.technology, request.store
    store = spec.open()
    records = resume.done_units(store, technology, backup_id, logger.warning)
    # A record counts for the unit planned under its name, from the same source.
    sources = {u.name: shown_url(u.source) for u in planned}
    candidates = [
        (path, s) for name, (path, s) in records.items() if sources.get(name) == s.unit.source
    ]
    checks = run_each(
        validate_unit, technology, unmapped(spec), unmapped(backup_id),
        [s.unit for _, s in candidates], [s.checks is not None for _, s in candidates],
        unmapped(None),
    )  # fmt: skip
    kept = []
    for (path, snapshot), more in zip(candidates, checks, strict=True):
        failed = [c["problem"] for c in more if c["check"] == READ_BACK and not c["passed"]]
        if failed:
            logger.warning("%s is backed up again: %s", snapshot.unit.name, failed[0])
        else:
            kept.append((path, snapshot, more))
    folder = store.backup_dir(technology, backup_id)
    keep = {posixpath.relpath(path, folder) for path, _, _ in kept}
    keep |= {f.path or f.name for _, s, _ in kept for f in s.unit.files}
    removed = resume.clear_unkept(store, technology, backup_id, keep)
    logger.info(
        "resuming %s: %d of %d units kept, %d to back up (%d leftover files removed)",
        backup_id, len(kept), len(planned), len(planned) - len(kept), removed,
    )  # fmt: skip
    return [(s, more) for _, s, more in kept]


def _keep_or_discard(
    request: BackupRequest,
    backup_id: str,
    units: int,
    exc: BaseException,
    logger: Any,
    *,
    resuming: bool,
) -> None:
    """A failed backup keeps its folder when units of it are stored and its driver can
    resume (the error then says how); otherwise its partial files are removed."""
    technology, spec = request.technology, request.store
    kept = 0
    if get_driver(technology).capabilities.resumable:
        try:
            kept = resume.kept_count(spec.open(), technology, backup_id)
        except Exception as count_failed:  # the store is what failed: say so, keep it
            logger.error("counting the stored units of %s failed: %s", backup_id, count_failed)
            kept = 1
    if not kept and not resuming:
        logger.error("backup %s failed; removing its partial files", backup_id)
        discard_partial(spec, technology, backup_id)
        return
    hint = (
        f"{min(kept, units) if units else kept} of {units or '?'} units are stored and kept "
        f"in the incomplete backup {technology}/{backup_id}: once the cause is fixed, run the "
        f"same backup with --resume {backup_id} to take only the others"
    )
    logger.error("backup %s failed; %s", backup_id, hint)
    if isinstance(exc, BackstopError):
        exc.args = (f"{exc}; {hint}",)


def _unit_row(unit: StoredUnit) -> dict[str, Any]:
    return {
        "unit": unit.name,
        "source": unit.source,
        "records": unit.records,
        "files": len(unit.files),
        "bytes": sum(f.bytes for f in unit.files),
        "raw_bytes": sum(f.raw_bytes for f in unit.files),
        "point": unit.point,
    }
