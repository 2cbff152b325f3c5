"""The drill flow: prove the newest backup restores. Back up the source, restore it
into a scratch target (overwritten), and verify the target equals the backup."""

from __future__ import annotations

from prefect import flow, get_run_logger

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import redact_url
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, DrillOutcome, DrillRequest, RestoreRequest
from backstop.flows.restore import restore
from backstop.flows.runtime import Stopwatch
from backstop.tasks.artifacts import publish_table
from backstop.tasks.events import reported


def check_scratch(sources: list[str], scratch: list[str]) -> None:
    """A drill overwrites its scratch targets: never one of the sources."""
    shown = {redact_url(s) for s in sources}
    clashes = [redact_url(s) for s in scratch if redact_url(s) in shown]
    if clashes:
        raise BadInputError(
            f"--scratch {', '.join(clashes)} is also a --source; a drill overwrites its "
            "scratch targets, so they must be other servers, databases or paths"
        )


@flow(name="backstop-drill", flow_run_name="drill-{request.technology}")
def drill(request: DrillRequest) -> DrillOutcome:
    with reported("drill", request.technology, request.sources, ok="passed") as report:
        check_scratch(request.sources, request.scratch)
        clock = Stopwatch()
        backed_up = backup(
            request=BackupRequest(
                technology=request.technology,
                sources=request.sources,
                store=request.store,
                options=request.options,
            )
        )
        report.payload = {"backup_id": backed_up.backup_id}
        restored = restore(
            request=RestoreRequest(
                technology=request.technology,
                store=request.store,
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
        publish_table(
            "drill",
            outcome.technology,
            [outcome.model_dump(mode="json")],
            f"Drill PASSED: backup {outcome.backup_id} ({outcome.records} records) restored "
            f"into the scratch target and verified equal in {outcome.restore_s} s",
        )
        get_run_logger().info(
            "drill passed: %s records backed up in %.1f s, restored and verified in %.1f s",
            outcome.records,
            outcome.backup_s,
            outcome.restore_s,
        )
    return outcome
