"""The manifest: the last file written, the proof that a backup is complete."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from backstop.drivers.contract import StoredFile, StoredUnit

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4}\Z")  # \Z: `$` passes a final newline
TECHNOLOGY_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}\Z")


def new_backup_id(now: datetime | None = None) -> str:
    """A time-sortable id: UTC second + 4 random hex digits, e.g. 20261126T120501Z-3fa2."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


class Role(StrEnum):
    """Why a backup was taken. Only ordinary backups (scheduled and ad hoc) are what
    `latest` and incrementals mean; a safety backup holds a target's content from
    before an overwrite, a drill's backup is the drill's own."""

    SCHEDULED = "scheduled"  # run from a deployment
    ADHOC = "adhoc"  # run by hand (the CLI, a script)
    SAFETY = "safety"  # taken of the targets before an overwrite restore
    DRILL = "drill"  # taken by a restore drill


ORDINARY_ROLES = frozenset({Role.SCHEDULED, Role.ADHOC})


class DriverInfo(BaseModel):
    name: str
    version: str


class ConsistencyInfo(BaseModel):
    kind: str
    point: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class Totals(BaseModel):
    files: int
    records: int
    bytes: int
    raw_bytes: int


class EncryptionInfo(BaseModel):
    """An encrypted backup: its data files are age files (tasks/crypto.py)."""

    format: Literal["age"] = "age"
    recipients: list[str]  # fingerprints of the recipients' public keys, never a key

    # A manifest that says it is encrypted holds no plain file: one rewritten to hold
    # some is refused, not restored (model_validator on Manifest).


class SealedPart(BaseModel):
    """An encrypted backup's full manifest, age-encrypted beside its plain envelope
    (tasks/sealed.py)."""

    name: str
    bytes: int
    sha256: str


class QualityResult(BaseModel):
    status: str  # "passed" | "failed"
    checks: list[dict[str, Any]] = Field(default_factory=list)


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    technology: str
    backup_id: str
    backstop_version: str
    driver: DriverInfo
    sources: list[str]  # redacted
    # Manifests written before roles existed were all taken by hand or on schedule.
    role: Role = Role.ADHOC
    source_ids: list[str] = Field(
        default_factory=list, description="each source's identity (Driver.identity)"
    )
    started_at: datetime
    finished_at: datetime
    consistency: ConsistencyInfo
    parent: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    units: list[StoredUnit]
    totals: Totals
    quality: QualityResult
    encryption: EncryptionInfo | None = None
    sealed: SealedPart | None = None

    @model_validator(mode="after")
    def _encrypted_throughout(self) -> Manifest:
        if self.encryption is not None:
            plain = [f.name for f in self.files if f.encryption is None]
            if plain:
                raise ValueError(
                    f"the manifest says the backup is encrypted, yet {len(plain)} file(s) "
                    f"are not (first: {plain[0]!r})"
                )
        elif self.sealed is not None:
            raise ValueError("the manifest has a sealed part yet says it is not encrypted")
        return self

    @property
    def files(self) -> list[StoredFile]:
        return [f for unit in self.units for f in unit.files]

    @property
    def ordinary(self) -> bool:
        """A scheduled or ad hoc backup: what `latest` and incrementals may mean."""
        return self.role in ORDINARY_ROLES

    @property
    def source_set(self) -> tuple[str, ...]:
        """The sources this backup is of, by identity where recorded."""
        return tuple(self.source_ids or self.sources)

    @property
    def duration_s(self) -> float:
        return round((self.finished_at - self.started_at).total_seconds(), 3)


def totals_of(units: list[StoredUnit]) -> Totals:
    files = [f for unit in units for f in unit.files]
    return Totals(
        files=len(files),
        records=sum(u.records for u in units),
        bytes=sum(f.bytes for f in files),
        raw_bytes=sum(f.raw_bytes for f in files),
    )


def chained_units(chain: list[Manifest]) -> list[StoredUnit]:
    """One unit per shard whose files are every link's, full backup first; each file
    names the backup it lives in."""
    if len(chain) == 1:
        return chain[0].units
    merged = []
    for index, unit in enumerate(chain[-1].units):
        files = [
            file.model_copy(update={"meta": {**file.meta, "backup_id": link.backup_id}})
            for link in chain
            for file in link.units[index].files
        ]
        records = sum(link.units[index].records for link in chain)
        merged.append(unit.model_copy(update={"files": files, "records": records}))
    return merged
