"""The drill flow: prove the newest backup restores. Back up the source, restore it
into a scratch target (overwritten), and verify the target equals the backup."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BadInputError
from backstop.drivers.identity import check_apart, check_distinct
from backstop.drivers.registry import get_driver
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, DrillOutcome, DrillRequest, RestoreRequest
from backstop.flows.restore import restore
from backstop.flows.runtime import Stopwatch
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.artifacts import publish_table
from backstop.tasks.events import reported
from backstop.tasks.identity import identify, probe_apart
from backstop.tasks.manifest import Role
from backstop.tasks.secrets import refuse_literal_secrets, resolve_urls, shown_urls
from backstop.tasks.store import StoreSpec


def drill_store(store: StoreSpec) -> StoreSpec:
    """A drill restores what it backed up: with recipients it needs an identity
    (refused before the backup, which would be left behind otherwise), and with an
    identity alone its backup is encrypted to that identity's public key (a drill's
    copy of production is no reason for clear text in the store)."""
    from backstop.tasks.signing import check_reads_own_signature

    check_reads_own_signature(store.signing_key, store.verify_key)
    if store.recipients and not store.identity:
        raise BadInputError(
            "a drill of an encrypted backup restores it: give --identity as well as --recipient"
        )
    if store.identity and not store.recipients:
        from backstop.tasks import crypto

        own = [str(i.to_public()) for i in crypto.load_identities(store.identity)]
        return store.model_copy(update={"recipients": own})
    return store


def check_scratch(technology: str, sources: list[str], scratch: list[str]) -> None:
    """A drill overwrites its scratch targets: never one of its sources, nor one place
    twice, compared by identity (a symlink, a hard link, `./`, another host name for the
    same server all name the same place), before anything is read or written."""
    driver = get_driver(technology)
    driver.check_urls(resolve_urls(sources), "source")
    driver.check_urls(resolve_urls(scratch), "scratch")
    source_ids = identify(technology, sources)
    scratch_ids = identify(technology, scratch, "scratch")
    check_distinct(scratch_ids, scratch, "scratch")
    check_apart(scratch_ids, scratch, source_ids, sources, "scratch", "source")
    probe_apart(technology, scratch, scratch, "scratch", "scratch")
    probe_apart(technology, scratch, sources, "scratch", "source")


@flow(
    name="backstop-drill",
    flow_run_name="drill-{request.technology}",
    timeout_seconds=flow_timeout("drill"),
)
def drill(request: DrillRequest) -> DrillOutcome:
    with reported(
        "drill", request.technology, request.sources, ok="passed", role=Role.DRILL
    ) as report:
        report.sources = shown_urls(request.sources)  # a block's URL, as in the manifest
        refuse_literal_secrets(request)
        get_driver(request.technology).check_options(request.options, "backup")
        check_scratch(request.technology, request.sources, request.scratch)
        store = drill_store(request.store)
        clock = Stopwatch()
        backed_up = backup(
            request=BackupRequest(
                technology=request.technology,
                sources=request.sources,
                store=store,
                options=request.options,
                role=Role.DRILL,  # the drill's own: never what `latest` means
            )
        )
        report.payload = {"backup_id": backed_up.backup_id}
        restored = restore(
            request=RestoreRequest(
                technology=request.technology,
                store=store,
                targets=request.scratch,
                backup=backed_up.backup_id,
                mode=RestoreMode.OVERWRITE,
                safety_backup=False,  # scratch targets are throwaway by definition
            )
        )
        outcome = DrillOutcome(
            status="passed",
            technology=backed_up.technology,
            backup_id=backed_up.backup_id,
            records=restored.records,
            bytes=backed_up.bytes,
            consistency=backed_up.consistency,
            backup_s=backed_up.duration_s,
            restore_s=restored.duration_s,
            verified=restored.verified,
            duration_s=clock.seconds,
        )
        report.payload = outcome.model_dump(mode="json")
        _record_drill(request, outcome)
        publish_table(
            "drill",
            outcome.technology,
            [outcome.model_dump(mode="json")],
            f"Drill PASSED: backup {outcome.backup_id} ({outcome.records} records) restored "
            f"into the scratch target and verified equal in {outcome.restore_s} s",
            places=request.sources,
        )
        get_run_logger().info(
            "drill passed: %s records backed up in %.1f s, restored and verified in %.1f s",
            outcome.records,
            outcome.backup_s,
            outcome.restore_s,
        )
    return outcome


def _record_drill(request: DrillRequest, outcome: DrillOutcome) -> None:
    """The store's record that this drill passed (`backstop metrics` reads it as
    backstop_drill_last_success_timestamp_seconds). Monitoring is not the drill: a store
    that refuses the record is said loudly, and the drill still passed."""
    record = outcome.model_dump(mode="json") | {"passed_at": datetime.now(UTC).isoformat()}
    try:
        request.store.open().write_drill_record(outcome.technology, outcome.backup_id, record)
    except Exception as exc:
        get_run_logger().warning("could not record the passed drill in the store: %s", exc)
