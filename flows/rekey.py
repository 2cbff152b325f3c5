"""The rekey flow: re-encrypt stored backups to new recipients (key rotation).

The store's identity opens them, its recipients are the new ones, its signing key signs
the replaced manifests (tasks/rekey.py says how a backup is rewritten safely). One
backup by id, or every encrypted backup of a technology, or of the store.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from backstop.drivers.errors import BadInputError
from backstop.flows.runtime import Stopwatch
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.artifacts import publish_table
from backstop.tasks.logs import install_log_masking
from backstop.tasks.manifest import BACKUP_ID
from backstop.tasks.rekey import rekey_backup
from backstop.tasks.retry import RETRYING
from backstop.tasks.secrets import refuse_literal_secrets
from backstop.tasks.store import StoreSpec


class RekeyRequest(BaseModel):
    store: StoreSpec = Field(
        description="identity: the key that opens the backups now; recipients: the new ones"
    )
    technology: str | None = None
    backup: str | None = Field(None, description="a backup id; every encrypted backup when empty")


class RekeyOutcome(BaseModel):
    backups: list[dict[str, str]]
    recipients: list[str]
    duration_s: float


@task(name="rekey-backup", task_run_name="rekey-{technology}-{backup_id}", **RETRYING)
def rekey_one(store: StoreSpec, technology: str, backup_id: str) -> str:
    """Idempotent: a run cut short is finished by running it again."""
    return rekey_backup(store.open(), technology, backup_id)


@flow(name="backstop-rekey", timeout_seconds=flow_timeout("rekey"))
def rekey(request: RekeyRequest) -> RekeyOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    logger = get_run_logger()
    clock = Stopwatch()
    spec = request.store
    if not spec.recipients:
        raise BadInputError("rekey needs the new recipients (--recipient / --recipients-file)")
    if not spec.identity:
        raise BadInputError("rekey needs the identity that opens the backups now (--identity)")
    store = spec.open()
    if request.backup:
        if not BACKUP_ID.match(request.backup):
            raise BadInputError(f"--backup {request.backup!r} is not a backup id")
        technologies = (
            [request.technology] if request.technology else store.technologies_holding(request.backup)
        )
        if len(technologies) != 1:
            raise BadInputError(f"no single backup {request.backup} in {spec.display()}")
        chosen = [(technologies[0], request.backup)]
    else:
        scan = store.scan(request.technology)
        chosen = [(m.technology, m.backup_id) for m in scan.manifests if m.encryption is not None]
        for problem in scan.unreadable.values():
            logger.warning("not re-encrypted: %s", problem)
    done = []
    for technology, backup_id in chosen:
        what = rekey_one(spec, technology, backup_id)
        logger.info("%s/%s: %s", technology, backup_id, what)
        done.append({"technology": technology, "backup_id": backup_id, "done": what})
    publish_table("rekey", request.technology or "all", done,
                  f"re-encrypted to {', '.join(store.keys.fingerprints)}",
                  places=[spec.display()], what="Store")  # fmt: skip
    return RekeyOutcome(
        backups=done, recipients=list(store.keys.fingerprints), duration_s=clock.seconds
    )
