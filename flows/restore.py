"""The restore flow: manifest -> verify checksums -> check targets -> restore -> verify target."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any, NoReturn

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction, transaction

from backstop.drivers.contract import RestoreMode, RestorePlan, RestoreResult, StoredUnit
from backstop.drivers.errors import (
    BackstopError,
    IntegrityError,
    PermanentError,
    QualityError,
)
from backstop.drivers.identity import check_distinct
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreOutcome, RestoreRequest
from backstop.flows.runtime import Stopwatch, per_task, run_each, task_runner
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.artifacts import publish_quality, publish_table
from backstop.tasks.events import Report, emit, reported
from backstop.tasks.identity import identify, probe_apart
from backstop.tasks.leases import Lease
from backstop.tasks.logs import install_log_masking
from backstop.tasks.manifest import Manifest, Role, chained_units
from backstop.tasks.packaging import check_decryptable
from backstop.tasks.quality import quality_of
from backstop.tasks.restore import (
    absent_parts,
    drop_parts,
    prepare_targets,
    restore_and_verify_units,
    restore_parts,
    restore_unit,
    safety_options,
)
from backstop.tasks.secrets import refuse_literal_secrets, resolve_urls, shown_urls
from backstop.tasks.store import StoreSpec
from backstop.tasks.verify import (
    TargetVerdict,
    target_quality,
    verify_backup_files,
    verify_target,
)


@flow(
    name="backstop-restore",
    task_runner=task_runner(),
    flow_run_name="restore-{request.technology}",
    timeout_seconds=flow_timeout("restore"),
)
def restore(request: RestoreRequest) -> RestoreOutcome:
    # The event is about the backed-up source once the backup is known; until then
    # (a bad request) about the targets.
    with (
        reported("restore", request.technology, request.targets) as report,
        ExitStack() as leases,  # read leases on the backups this restore reads
    ):
        outcome = _restore(request, report, leases)
        report.payload = outcome.model_dump(
            mode="json",
            include={"backup_id", "mode", "records", "records_skipped", "duration_s", "targets"},
        )
    return outcome


def _restore(request: RestoreRequest, report: Report, leases: ExitStack) -> RestoreOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    logger = get_run_logger()
    clock = Stopwatch()
    driver = get_driver(request.technology)
    driver.check_options(request.options, "restore")
    driver.check_urls(resolve_urls(request.targets), "target")
    driver.check_restore_features(request.include, request.until, request.rename)
    technology, spec, mode = driver.name, request.store, request.mode
    plan = RestorePlan(
        mode=mode,
        include=tuple(request.include),
        until=request.until,
        rename=tuple(request.rename.items()),
        options=dict(request.options),
    )

    if len(request.targets) > 1:  # before any slow step: two targets must be two places
        check_distinct(identify(technology, request.targets, "target"), request.targets, "target")
        probe_apart(technology, request.targets, request.targets, "target", "target")

    store = spec.open()
    manifest = store.resolve(
        technology,
        request.backup,
        shown_urls(request.sources),
        identify=lambda: identify(technology, request.sources),
        validated_only=not request.force,
    )
    backup_id = manifest.backup_id
    report.sources = manifest.sources
    report.role = manifest.role
    report.payload = {"backup_id": backup_id}
    chain = store.chain(manifest)  # an incremental restores with its parents
    check_decryptable(store, technology, chain)
    for link in chain:  # read leases: prune leaves what this restore reads alone
        lease = Lease(store, technology, link.backup_id, "restore")
        leases.callback(lease.acquire(required=False).release)
    for link in chain:
        problems = verify_backup_files(spec, link)
        if problems:
            raise IntegrityError(
                f"backup {technology}/{link.backup_id}"
                + (f" (in the chain of {backup_id})" if link is not manifest else "")
                + " failed verification; nothing was restored:\n  "
                + "\n  ".join(problems)
            )
        if link.quality.status != "passed":
            failed = [c.get("problem", c["check"]) for c in link.quality.checks if not c["passed"]]
            if not request.force:
                raise QualityError(
                    f"backup {technology}/{link.backup_id} failed its data-quality checks at "
                    f"backup time ({'; '.join(failed[:5])}); nothing was restored. Restore it "
                    "anyway with --force (the data is as the source held it)"
                )
            logger.warning(
                "restoring %s despite failed data-quality checks (--force)", link.backup_id
            )
    phases = {"check": clock.seconds}
    units = chained_units(chain)
    if len(chain) > 1:
        logger.info("restoring the chain %s", " -> ".join(m.backup_id for m in chain))

    targets = [redact_url(t) for t in request.targets]
    outcome = RestoreOutcome(
        backup_id=backup_id,
        technology=technology,
        status="dry-run",
        mode=mode,
        records=sum(u.records for u in units),
        records_skipped=0,
        bytes=sum(link.totals.raw_bytes for link in chain),
        duration_s=0.0,
        targets=targets,
        verified=False,
    )
    parts = restore_parts(technology, spec, backup_id, units, plan)
    before = prepare_targets(technology, units, request.targets, plan)
    plan = replace(plan, before=before)  # what every restore attempt must start from
    if request.dry_run:
        logger.info("dry run: backup %s verified and targets accepted; nothing written", backup_id)
        outcome.duration_s = clock.seconds
        return outcome

    safety, created = None, []
    if mode is RestoreMode.OVERWRITE and request.safety_backup:
        # What the overwrite would create counts as much as what it replaces: a rollback
        # removes the former and restores the latter.
        created = absent_parts(technology, request.targets, parts) if parts else []
        safety = _safety_backup(request, units, plan)
        outcome.safety_backup = safety
    if safety is None and not created:
        return _load_and_verify(request, units, plan, manifest, outcome, phases, clock)
    txn = None
    try:
        with transaction() as txn:
            guard_targets(technology, spec, safety, request.targets, created, request.options)
            with _outside_transaction():  # a retried unit must not roll the targets back
                return _load_and_verify(request, units, plan, manifest, outcome, phases, clock)
    except BackstopError as exc:
        # The guard's rollback hook left what it did on its own (child) transaction.
        notes = [c.get(_ROLLED_BACK, None) for c in (txn.children if txn else [])]
        note = next((n for n in notes if n), "rolling the targets back failed")
        exc.args = (f"{exc}\n{note}",)  # same error, same exit code, now saying so
        raise


def _load_and_verify(
    request: RestoreRequest,
    units: list[StoredUnit],
    plan: RestorePlan,
    manifest: Manifest,
    outcome: RestoreOutcome,
    phases: dict[str, float],
    clock: Stopwatch,
) -> RestoreOutcome:
    logger = get_run_logger()
    technology, mode = request.technology, plan.mode
    backup_id = outcome.backup_id
    targets = outcome.targets
    # One target per unit (Schemaless shards), or one target for every unit (a
    # deployment's collections); prepare_targets has checked which applies.
    own_targets = len(request.targets) == len(units)
    unit_targets = request.targets if own_targets else request.targets[:1] * len(units)
    shown_targets = [redact_url(t) for t in unit_targets]
    logger.info("restoring %s/%s into %s (mode %s)", technology, backup_id, targets, mode.value)
    results, verdicts = _load_and_verify_units(
        request, units, unit_targets, own_targets, plan, backup_id, phases, clock
    )
    checks = [v.check for v in verdicts]
    rows = [
        {
            "unit": unit.name,
            "target": target,
            "written": result.records_written,
            "skipped": result.records_skipped,
            "verified records": check.records,
            "verified": "yes" if check.ok else "NO: " + "; ".join(check.problems),
        }
        for unit, target, result, check in zip(units, shown_targets, results, checks, strict=True)
    ]
    failed = [p for check in checks for p in check.problems]
    publish_table(
        "restore",
        technology,
        rows,
        f"Restore of {backup_id} ({mode.value}) into {len(targets)} target(s): "
        + ("verified equal to the backup" if not failed else "VERIFICATION FAILED")
        + f" (a {manifest.role} backup of {', '.join(manifest.sources)})",
        places=targets,
        what="Targets",
    )
    if failed:
        _target_refused(
            manifest, "restored target", failed, PermanentError, "the restored target differs"
        )

    target_checks = _target_quality_checks(technology, units, unit_targets, plan, verdicts)
    quality = quality_of(target_checks)
    outcome.quality = quality.status if target_checks else "no suite"
    if target_checks:
        publish_quality("target", technology, f"the target of restore {backup_id}", quality,
                        targets, what="Targets")  # fmt: skip
    if quality.status != "passed":
        if not request.force:
            failed_quality = [c["problem"] for c in quality.checks if not c["passed"]]
            _target_refused(
                manifest, "target quality", failed_quality, QualityError,
                "the restored target fails its data-quality checks",
            )  # fmt: skip
        logger.warning("the restored target fails its data-quality checks, as forced")
        outcome.quality = "failed (forced)"
    phases["quality"] = round(clock.seconds - sum(phases.values()), 3)

    outcome.status = "restored"
    outcome.records = sum(r.records_written for r in results)
    outcome.records_skipped = sum(r.records_skipped for r in results)
    outcome.verified = True
    outcome.duration_s = clock.seconds
    outcome.phases_s = phases
    logger.info("restore of %s verified: %s records written", backup_id, outcome.records)
    return outcome


def _load_and_verify_units(
    request: RestoreRequest,
    units: list[StoredUnit],
    unit_targets: list[str],
    own_targets: bool,
    plan: RestorePlan,
    backup_id: str,
    phases: dict[str, float],
    clock: Stopwatch,
) -> tuple[list[RestoreResult], list[TargetVerdict]]:
    """Load every unit and verify its target; `phases` gains `load` and `verify`.

    A unit with a target of its own (a shard) is verified as soon as it is loaded, in
    the same task run (restore_and_verify_units): one task run per unit (or per pack of
    small units), not two. Units that share a target are verified once all are loaded."""
    technology, spec = request.technology, request.store
    args = (technology, unmapped(spec), unmapped(backup_id), units, unit_targets, unmapped(plan))
    began = sum(phases.values())
    if own_targets:
        started = time.time() - clock.seconds
        restored = run_each(restore_and_verify_units, *args, packs_of=per_task(len(units)))
        # The load phase lasts until the last unit was loaded, whatever verifications
        # overlapped it; the verify phase is what the flow waited for after that.
        now = clock.seconds
        loaded_at = max((r.loaded_at - started for r in restored), default=now)
        load_s = min(max(began, loaded_at), now) - began
        phases["load"] = round(max(0.0, load_s), 3)
        phases["verify"] = round(max(0.0, now - began - load_s), 3)
        return [r.result for r in restored], [r.verdict for r in restored]
    results = run_each(restore_unit, *args)
    phases["load"] = round(clock.seconds - began, 3)
    verdicts = run_each(verify_target, *args)
    phases["verify"] = round(clock.seconds - sum(phases.values()), 3)
    return results, verdicts


def _target_quality_checks(
    technology: str,
    units: list[StoredUnit],
    unit_targets: list[str],
    plan: RestorePlan,
    verdicts: list[TargetVerdict],
) -> list[dict[str, Any]]:
    """Every unit's target quality checks: those its verification's read gave, else
    from a read of their own (a driver that reads the target twice)."""
    unread = [i for i, v in enumerate(verdicts) if v.quality is None]
    if unread:
        read = run_each(
            target_quality,
            technology,
            [units[i] for i in unread],
            [unit_targets[i] for i in unread],
            unmapped(plan),
        )
        verdicts = list(verdicts)
        for i, checks in zip(unread, read, strict=True):
            verdicts[i] = replace(verdicts[i], quality=checks)
    return [c for v in verdicts for c in v.quality or []]


def _target_refused(
    manifest: Manifest, stage: str, problems: list[str], error: type[Exception], what: str
) -> NoReturn:
    """Say so as an event, then fail with every problem listed."""
    emit(
        "verify.failed",
        manifest.technology,
        manifest.sources,
        {"backup_id": manifest.backup_id, "stage": stage, "problems": problems[:20]},
    )
    raise error(f"{what}:\n  " + "\n  ".join(problems))


# -- safety before an overwrite -------------------------------------------------------------
_ROLLED_BACK = "rolled_back"  # what the rollback hook did, kept on its transaction


@contextmanager
def _outside_transaction() -> Iterator[None]:
    """Run the tasks started inside without the current Prefect transaction as parent.

    Prefect rolls a failed task run's transaction back and then its parent too
    (Transaction.reset), even when the run is about to be retried. Inside the restore's
    transaction, one unit's transient fault would so run the rollback hook at once, a
    safety restore racing the other units still loading (Docstore: the mutated
    documents back under the new ones; "index ... already exists"). Only the restore's
    own failure, raised out of `with transaction()`, once every unit has stopped (see
    `run_each`), may roll the targets back."""
    token = Transaction.__var__.set(None)
    try:
        yield
    finally:
        Transaction.__var__.reset(token)


def _safety_backup(
    request: RestoreRequest, units: list[StoredUnit], plan: RestorePlan
) -> str | None:
    """Back up what an overwrite will replace; None when the targets hold none of it."""
    options = safety_options(request.technology, units, request.targets, plan)
    if options is None:
        get_run_logger().info("the targets hold nothing the overwrite replaces: no safety backup")
        return None
    taken = backup(
        request=BackupRequest(
            technology=request.technology,
            sources=request.targets,
            store=_safety_store(request.store, units),
            options=options,
            role=Role.SAFETY,  # never what `latest` means: see ArtifactStore.resolve
        )
    )
    get_run_logger().info("safety backup of the targets before overwriting: %s", taken.backup_id)
    return taken.backup_id


def _safety_store(store: StoreSpec, units: list[StoredUnit]) -> StoreSpec:
    """Restoring an encrypted backup, the safety backup is encrypted too (a store
    holding encrypted backups gets no plain copy of a target): to the recipients given
    and always to the restoring identity's own public key, which a rollback reads it
    with."""
    encrypted = any(f.encryption for unit in units for f in unit.files)
    if not encrypted:
        return store
    from backstop.tasks import crypto

    identities = crypto.load_identities(store.identity) if store.identity else []
    own = [str(i.to_public()) for i in identities]
    return store.model_copy(update={"recipients": list(dict.fromkeys([*store.recipients, *own]))})


@task(name="guard-targets", cache_policy=NO_CACHE)
def guard_targets(
    technology: str,
    store: StoreSpec,
    safety: str | None,
    targets: list[str],
    created: list[str],
    options: dict[str, Any],
) -> None:
    """Holds the safety backup and the parts the restore creates in the restore's
    transaction: its rollback hook puts the targets back as they were if the restore or
    its verification fails."""
    txn = get_transaction()
    txn.set("technology", technology)
    txn.set("store", store.model_dump())
    txn.set("safety", safety)
    # The rollback trusts the safety backup because this run wrote it, not because it is
    # signed (a restore host holds a verify key, rarely the signing key): by its bytes.
    txn.set("safety_digest", store.open().manifest_digest(technology, safety) if safety else None)
    txn.set("targets", list(targets))
    txn.set("created", list(created))
    txn.set("options", dict(options))  # what the restore was allowed, its rollback is too


def _pinned_safety_store(store: StoreSpec, txn: Transaction, safety: str) -> StoreSpec:
    """The store to read the safety backup from: its manifest must be the bytes this run
    wrote (checked here), so no signature is asked of it."""
    if store.verify_key is None and store.signing_key is None:
        return store
    pinned = txn.get("safety_digest")
    found = store.model_copy(update={"verify_key": None, "signing_key": None})
    if pinned is None or found.open().manifest_digest(txn.get("technology"), safety) != pinned:
        raise IntegrityError(
            f"safety backup {safety}: its manifest changed since this restore wrote it"
        )
    return found


@guard_targets.on_rollback
def _roll_back_targets(txn: Transaction) -> None:
    safety, created = txn.get("safety"), txn.get("created", [])
    logger = get_run_logger()
    if created:
        logger.warning("restore failed: removing what it created (%s)", ", ".join(created))
        try:
            drop_parts(txn.get("technology"), txn.get("targets"), created)
        except Exception as exc:
            txn.set(_ROLLED_BACK, f"ROLLING BACK FAILED: removing {created} failed: {exc}")
            raise
    if safety is None:
        txn.set(_ROLLED_BACK, f"the targets were rolled back: {', '.join(created)} removed")
        return
    logger.warning("restore failed: rolling the targets back to safety backup %s", safety)
    try:
        store = _pinned_safety_store(StoreSpec(**txn.get("store")), txn, safety)
        with _outside_transaction():  # a retried task of the rollback must not rerun it
            back = restore(
                request=RestoreRequest(
                    technology=txn.get("technology"),
                    store=store,
                    targets=txn.get("targets"),
                    backup=safety,
                    mode=RestoreMode.OVERWRITE,
                    options=txn.get("options", {}),
                    force=True,
                    safety_backup=False,
                )
            )
    except Exception as exc:
        txn.set(_ROLLED_BACK, f"ROLLING BACK to safety backup {safety} FAILED too: {exc}")
        raise
    txn.set(
        _ROLLED_BACK,
        f"the targets were rolled back to safety backup {safety} "
        f"({back.records} records restored and verified"
        + (f"; {', '.join(created)} removed)" if created else ")"),
    )
