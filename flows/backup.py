"""The backup flow: quiesce -> snapshot/package/upload -> validate -> release -> manifest."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, unmapped

import backstop
from backstop.drivers.contract import StoredUnit
from backstop.drivers.errors import BadInputError, IntegrityError, QualityError
from backstop.drivers.registry import get_driver
from backstop.flows.params import BackupOutcome, BackupRequest
from backstop.flows.runtime import Stopwatch, gather, task_runner
from backstop.flows.timeouts import flow_timeout
from backstop.tasks import crypto
from backstop.tasks.artifacts import publish_quality, publish_table
from backstop.tasks.backup import (
    READ_BACK,
    Snapshot,
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
from backstop.tasks.leases import Lease
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
from backstop.tasks.secrets import refuse_literal_secrets, resolve_urls, shown_urls


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

    parent = None
    options = dict(request.options)
    if request.incremental:
        parent = store.newest_parent(technology, sources, source_ids)
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

    # A folder of its own (ids can collide), then a lease held while it is written:
    # prune leaves a leased folder alone.
    backup_id = store.claim_backup_id(technology)
    logger.info("backup %s/%s of %s into %s", technology, backup_id, sources, spec.display())
    try:
        lease = Lease(store, technology, backup_id, "backup").acquire()
    except BaseException:
        discard_partial(spec, technology, backup_id)
        raise
    # An encrypted backup's one-time read-back key (tasks/crypto.py read_back_pair).
    read_back, read_back_recipient = crypto.read_back_pair() if store.keys.recipients else (None, None)
    try:
        snapshots, handle = _snapshot(request, options, backup_id, read_back_recipient)
        stored = [s.unit for s in snapshots]
        phases = {"snapshot": clock.seconds}
        # Where the suite ran as a unit was packaged, the read-back checks its bytes only.
        checked = [s.checks is not None for s in snapshots]
        read_back = gather(
            validate_unit.map(
                technology, unmapped(spec), unmapped(backup_id), stored, checked,
                unmapped(read_back),
            )
        )
        phases["validate"] = round(clock.seconds - phases["snapshot"], 3)
        quality = quality_of(
            [
                c
                for s, more in zip(snapshots, read_back, strict=True)
                for c in (s.checks or []) + more
            ]
        )
        unreadable = [
            c["problem"] for c in quality.checks if c["check"] == READ_BACK and not c["passed"]
        ]
        if unreadable:  # the stored bytes are wrong: this is no backup at all
            raise IntegrityError(f"backup {backup_id} failed its read-back: {unreadable}")
        consistency = driver.consistency(handle, stored)
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
    except BaseException:
        lease.release()  # first: a last heartbeat must not recreate the removed folder
        logger.error("backup %s failed; removing its partial files", backup_id)
        discard_partial(spec, technology, backup_id)
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


def _snapshot(
    request: BackupRequest, options: dict[str, Any], backup_id: str, read_back: str | None
) -> tuple[list[Snapshot], Any]:
    """Quiesce, stream every unit into the store, and release the quiesce on every path."""
    technology, spec = request.technology, request.store
    units = plan_backup(technology, request.sources, options)
    handle = quiesce(technology, request.sources, options)
    if handle is not None:  # e.g. the cluster time every unit's snapshot reads at
        units = [dataclasses.replace(u, options={**u.options, "quiesce": handle}) for u in units]
    try:
        stored = gather(snapshot_unit.map(technology, unmapped(spec), unmapped(backup_id), units,
                                          unmapped(read_back)))  # fmt: skip
    except BaseException:
        try:
            release_quiesce(technology, request.sources, handle)
        except Exception as exc:  # the original failure matters more; still say it loudly
            get_run_logger().error("releasing the quiesce failed too: %s", exc)
        raise
    release_quiesce(technology, request.sources, handle)
    return stored, handle


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
