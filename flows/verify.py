"""The verify flow: recompute every checksum of one or all backups in a store."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from backstop.drivers.errors import BadInputError, PermanentError
from backstop.flows.params import VerifyOutcome, VerifyRequest
from backstop.flows.runtime import Stopwatch, run_each, task_runner
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.artifacts import publish_table
from backstop.tasks.events import emit
from backstop.tasks.logs import install_log_masking
from backstop.tasks.restore import load_manifest
from backstop.tasks.secrets import refuse_literal_secrets
from backstop.tasks.verify import broken_chains, check_backup_files, restore_reads


class VerificationFailed(PermanentError):
    def __init__(self, outcome: VerifyOutcome) -> None:
        super().__init__("verification failed:\n  " + "\n  ".join(outcome.problems))
        self.outcome = outcome


@flow(name="backstop-verify", task_runner=task_runner(), timeout_seconds=flow_timeout("verify"))
def verify(request: VerifyRequest) -> VerifyOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    logger = get_run_logger()
    clock = Stopwatch()
    spec = request.store
    if request.backup or request.sources:
        if not request.technology:
            raise BadInputError("--backup and --source need --technology")
        ref = request.backup or "latest"  # --source alone: the latest of those sources
        chosen = load_manifest(spec, request.technology, ref, request.sources)
        # An incremental is restorable only with its parents: their files are checked too.
        manifests = restore_reads(spec.open(), chosen)
        unreadable = {}
    else:
        # A manifest that cannot be read is a problem to report, and no reason to leave
        # the other backups unchecked.
        scan = spec.open().scan(request.technology)
        manifests, unreadable = scan.manifests, scan.unreadable

    checked = run_each(check_backup_files, unmapped(spec), manifests) if manifests else []
    results = [found for found, _ in checked]
    problems = [p for found in results for p in found]
    problems += broken_chains(spec.open(), manifests)
    problems += list(unreadable.values())  # each names its manifest
    if not manifests and not unreadable:
        problems.append(f"no complete backup found in {spec.display()}")
    outcome = VerifyOutcome(
        ok=not problems,
        problems=problems,
        backups=[f"{m.technology}/{m.backup_id}" for m in manifests],
        files=sum(m.totals.files for m in manifests),
        bytes=sum(m.totals.bytes for m in manifests),
        duration_s=clock.seconds,
        stored_bytes_only=sum(count for _, count in checked),
    )
    if outcome.stored_bytes_only:
        encrypted_to = sorted(
            {fp for m in manifests if m.encryption for fp in m.encryption.recipients}
        )
        logger.warning(
            "%d encrypted file(s) checked by their stored bytes only (no identity given, "
            "or one that opens none of them); recipients of the encrypted backups: %s",
            outcome.stored_bytes_only,
            ", ".join(encrypted_to),
        )
    publish_table(
        "verify",
        request.technology or "all",
        [
            {
                "backup": f"{m.technology}/{m.backup_id}",
                "files": m.totals.files,
                "bytes": m.totals.bytes,
                "problems": len(found) or "none",
            }
            for m, found in zip(manifests, results, strict=True)
        ],
        f"Verified {len(manifests)} backup(s): "
        + ("all checksums match" if outcome.ok else f"{len(problems)} problem(s)"),
        places=[spec.url],
        what="Store",
    )
    for manifest, found in zip(manifests, results, strict=True):
        if found:
            emit(
                "verify.failed",
                manifest.technology,
                manifest.sources,
                {"backup_id": manifest.backup_id, "stage": "backup files", "problems": found[:20]},
                manifest.role,
            )
    if not outcome.ok:
        raise VerificationFailed(outcome)
    logger.info("verified %s backups, %s files", len(manifests), outcome.files)
    return outcome
