"""The prune flow: apply a retention policy per backed-up source, never breaking a chain."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger, task

from backstop.flows.params import PruneOutcome, PruneRequest
from backstop.flows.runtime import Stopwatch
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.artifacts import publish_table
from backstop.tasks.leases import fresh_leases
from backstop.tasks.logs import install_log_masking
from backstop.tasks.retention import (
    Decision,
    check_policy,
    plan_retention,
    spare_if_leased,
    take_inventory,
)
from backstop.tasks.retry import RETRYING
from backstop.tasks.secrets import refuse_literal_secrets
from backstop.tasks.store import StoreSpec


@task(name="delete-backup", task_run_name="delete-{technology}-{backup_id}", **RETRYING)
def delete_backup(store: StoreSpec, technology: str, backup_id: str) -> str | None:
    """Delete one backup folder, unless a backup or restore took a lease on it since the
    plan was made; then say what holds it (and delete nothing)."""
    opened = store.open()
    held = fresh_leases(opened, technology, backup_id)
    if held:
        return held[0].describe()
    opened.delete_backup(technology, backup_id)
    return None


@flow(name="backstop-prune", timeout_seconds=flow_timeout("prune"))
def prune(request: PruneRequest) -> PruneOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    logger = get_run_logger()
    clock = Stopwatch()
    check_policy(request.keep_last, request.keep_days, request.grace_hours)
    store = request.store.open()
    now = datetime.now(UTC)
    decisions = plan_retention(
        take_inventory(store, request.technology),
        keep_last=request.keep_last,
        keep_days=request.keep_days,
        now=now,
        grace=timedelta(hours=request.grace_hours),
    )
    # A folder in use (a backup still writing it, a restore reading it) is never
    # deleted, whatever the policy and grace period say.
    decisions = [spare_if_leased(store, d, now) for d in decisions]
    doomed = [d for d in decisions if not d.keep]
    # Incomplete folders have no manifest to say how big they are.
    doomed = [
        d
        if d.bytes is not None
        else dataclasses.replace(d, bytes=store.folder_bytes(d.technology, d.backup_id))
        for d in doomed
    ]
    spared: list[Decision] = []
    for decision in doomed:
        verb = "would delete" if request.dry_run else "deleting"
        logger.info("%s %s/%s: %s", verb, decision.technology, decision.backup_id, decision.reason)
        if not request.dry_run:
            held = delete_backup(request.store, decision.technology, decision.backup_id)
            if held:
                logger.info("kept %s/%s after all: %s", decision.technology,
                            decision.backup_id, held)  # fmt: skip
                spared.append(dataclasses.replace(decision, keep=True, reason=f"in use: {held}"))
    if spared:
        kept_ids = {(d.technology, d.backup_id) for d in spared}
        doomed = [d for d in doomed if (d.technology, d.backup_id) not in kept_ids]
        decisions = [d for d in decisions if (d.technology, d.backup_id) not in kept_ids] + spared
    outcome = PruneOutcome(
        dry_run=request.dry_run,
        deleted=[dataclasses.asdict(d) for d in doomed],
        kept=[dataclasses.asdict(d) for d in decisions if d.keep],
        freed_bytes=sum(d.bytes or 0 for d in doomed),
        duration_s=clock.seconds,
    )
    publish_table(
        "prune",
        request.technology or "all",
        [
            {
                "backup": f"{d.technology}/{d.backup_id}",
                "action": "keep" if d.keep else "delete",
                "reason": d.reason,
            }
            for d in decisions
        ],
        f"{'Dry run: would delete' if request.dry_run else 'Deleted'} {len(doomed)} backup "
        f"folder(s), {outcome.freed_bytes} bytes, in {request.store.display()}; "
        f"kept {len(outcome.kept)}",
        places=[request.store.url],
        what="Store",
    )
    return outcome
