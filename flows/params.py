"""Flow parameters and results as pydantic models, so the Prefect UI renders forms.

URLs here may carry ${env:NAME} or ${secret:BLOCK} in place of a password; never
put a password itself in a parameter, since Prefect stores parameters with the run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from backstop.drivers.contract import RestoreMode
from backstop.tasks.manifest import BACKUP_ID, Role
from backstop.tasks.store import StoreSpec

# Shown under every URL field of the forms: Prefect stores a run's parameters as typed,
# before the flow can refuse a password in them.
NO_PASSWORDS = (
    "; never type a password here (Prefect stores it with the run): write block:NAME, "
    "or ${secret:NAME} / ${env:NAME} where the password goes"
)


class BackupRequest(BaseModel):
    technology: str = Field(description="zookeeper, docstore or schemaless")
    sources: list[str] = Field(min_length=1, description="one URL per shard/cluster" + NO_PASSWORDS)
    store: StoreSpec
    incremental: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")
    role: Role | None = Field(
        None,
        description="why it is taken: scheduled, adhoc, safety or drill; empty: scheduled "
        "when run from a deployment, else adhoc",
    )
    resume: str | None = Field(
        None,
        description="finish this failed backup: keep the shards it stored, back up the "
        "others (same sources, options and recipients as it was started with)",
    )

    @field_validator("resume")
    @classmethod
    def _a_backup_id(cls, value: str | None) -> str | None:
        if value is not None and not BACKUP_ID.match(value):
            raise ValueError(f"{value[:40]!r} is not a backup id (like 20261128T120000Z-ab12)")
        return value


def source_filter() -> Any:
    """Restore, verify and export: which backup `latest` means in a store holding
    backups of several sources."""
    return Field(
        default_factory=list,
        description="with backup latest: the newest backup of these sources (URLs as backed up)",
    )


class RestoreRequest(BaseModel):
    technology: str
    store: StoreSpec
    targets: list[str] = Field(
        min_length=1, description="one URL per shard, in the backup's order" + NO_PASSWORDS
    )
    backup: str = Field("latest", description="a backup id, or latest")
    sources: list[str] = source_filter()
    mode: RestoreMode = RestoreMode.FAIL_IF_EXISTS
    include: list[str] = Field(default_factory=list)
    until: str | None = None
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="restore under other names: source pattern -> target pattern "
        "(Docstore: shop=shop_copy, shop.*=archive.*)",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")
    dry_run: bool = False
    force: bool = Field(False, description="restore a backup whose data-quality checks failed")
    safety_backup: bool = Field(
        True,
        description="with mode overwrite: back up what will be replaced first, and roll the "
        "targets back to it if the restore or its verification fails",
    )


class VerifyRequest(BaseModel):
    store: StoreSpec
    technology: str | None = None
    backup: str | None = Field(None, description="a backup id or latest; all when empty")
    sources: list[str] = source_filter()


class BackupOutcome(BaseModel):
    backup_id: str
    technology: str
    status: str
    parent: str | None = Field(None, description="the backup an incremental builds on")
    role: Role = Role.ADHOC
    records: int
    bytes: int
    raw_bytes: int
    files: int
    duration_s: float
    consistency: str
    consistency_point: dict[str, Any]
    store: str
    kept_units: int = Field(
        0, description="with --resume: units stored by the earlier attempt, not taken again"
    )
    phases_s: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per phase: snapshot (read, package, store), validate (read-back "
        "and the data-quality suite)",
    )


class RestoreOutcome(BaseModel):
    backup_id: str
    technology: str
    status: str  # "restored" | "dry-run"
    mode: RestoreMode
    records: int
    records_skipped: int
    bytes: int
    duration_s: float
    targets: list[str]
    verified: bool
    phases_s: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per phase: check (backup files re-hashed), load, verify, quality",
    )
    quality: str = Field("not run", description="the restored target's data-quality suite")
    safety_backup: str | None = Field(
        None, description="the backup of the targets taken before an overwrite"
    )


class VerifyOutcome(BaseModel):
    ok: bool
    problems: list[str]
    backups: list[str]
    files: int
    bytes: int
    duration_s: float
    # Encrypted files checked without an identity: their stored bytes (size, SHA-256)
    # only, not that they decrypt and decompress to what the manifest records.
    stored_bytes_only: int = 0


class PruneRequest(BaseModel):
    store: StoreSpec
    keep_last: int | None = Field(None, ge=1, description="newest backups kept per source")
    keep_days: float | None = Field(None, gt=0, description="backups younger than this kept")
    grace_hours: float = Field(
        24, ge=0, description="incomplete backups younger than this may still be running"
    )
    technology: str | None = Field(None, description="only this technology; all when empty")
    dry_run: bool = False


class PruneOutcome(BaseModel):
    dry_run: bool
    deleted: list[dict[str, Any]]
    kept: list[dict[str, Any]]
    freed_bytes: int
    duration_s: float


class DrillRequest(BaseModel):
    technology: str = Field(description="zookeeper, docstore or schemaless")
    sources: list[str] = Field(
        min_length=1, description="what is backed up: one URL per shard" + NO_PASSWORDS
    )
    scratch: list[str] = Field(
        min_length=1,
        description="throwaway targets the drill overwrites: one per shard" + NO_PASSWORDS,
    )
    store: StoreSpec
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")


class DrillOutcome(BaseModel):
    status: str  # "passed" | "failed"
    technology: str
    backup_id: str
    records: int
    bytes: int
    consistency: str
    backup_s: float
    restore_s: float
    verified: bool
    duration_s: float
