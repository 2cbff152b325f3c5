"""Resumable backups: what a failed multi-shard backup keeps, and what `--resume` reads.

While a backup of a driver with `Capabilities.resumable` is written, its folder holds,
beside the data files:

    resume.json           the mark: what the backup is of (sources as shown, their
                          identities, a digest of the options, the recipients'
                          fingerprints). It names no shard and holds no secret.
    done-<20 hex>.json    one record per unit whose files are all stored: the unit as
                          the manifest will list it and its quality verdicts; sealed
                          (age, to the backup's recipients) when the backup is
                          encrypted, and signed when the host signs.

A folder without a manifest is incomplete whatever it holds: list and restore never
see it, prune removes it after the grace period. `backup --resume ID` reads the
records back, reads every kept unit's files back, and backs up only the other units,
each at its own consistency point. Both files go before the manifest is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyrage
from pydantic import BaseModel, ValidationError

from backstop.drivers.contract import StoredUnit
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks import signing
from backstop.tasks.leases import LEASE_PREFIX
from backstop.tasks.manifest import MANIFEST_NAME
from backstop.tasks.store import ArtifactStore

RESUME_NAME = "resume.json"
DONE_NAME = re.compile(r"^done-[0-9a-f]{20}\.json\Z")
MAX_RECORD_BYTES = 64 << 20  # a unit of tens of thousands of files; never more


class ResumeMark(BaseModel):
    """What the backup in this folder is of: a resume must be asked for the same."""

    technology: str
    backup_id: str
    started_at: datetime
    sources: list[str]  # as shown (redacted), for the error that names a mismatch
    source_ids: list[str]
    options_sha256: str
    parent: str | None = None
    role: str
    recipients: list[str] = []  # fingerprints; empty: not encrypted


class Snapshot(BaseModel):
    """What snapshot_unit returns, and what a unit's record keeps: the stored unit, and
    the verdicts of the quality suite when the driver handed it the records as they were
    packaged (None: the validation's read-back runs the suite)."""

    unit: StoredUnit
    checks: list[dict[str, Any]] | None = None


def options_digest(options: Mapping[str, Any]) -> str:
    """The options as asked (references, not what they resolve to)."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- writing -----------------------------------------------------------------------------
def write_mark(store: ArtifactStore, mark: ResumeMark) -> None:
    path = posixpath.join(store.backup_dir(mark.technology, mark.backup_id), RESUME_NAME)
    store._write_small(path, mark.model_dump_json(indent=2).encode())


def record_done(store: ArtifactStore, technology: str, backup_id: str, done: Snapshot) -> None:
    """Written by the unit's own task once its last file is stored: a process killed a
    moment later keeps the unit. A plain backup's record is named for its unit (a
    re-run replaces it); an encrypted one's name is random, as its files' names are."""
    body = done.model_dump_json().encode()
    sealed = bool(store.keys.recipients)
    if sealed:
        body = pyrage.encrypt(body, store.keys.recipients)
        key = secrets.token_hex(10)
    else:
        key = hashlib.sha256(done.unit.name.encode()).hexdigest()[:20]
    record: dict[str, Any] = {"sealed": sealed, "body": base64.b64encode(body).decode()}
    if store.keys.signing_key is not None:
        # A store writer must not be able to plant a unit that this host then signs.
        record["signature"] = base64.b64encode(
            signing.signature_for(store.keys.signing_key, body)
        ).decode()
    path = posixpath.join(store.backup_dir(technology, backup_id), f"done-{key}.json")
    store._write_small(path, json.dumps(record).encode())


# -- reading -----------------------------------------------------------------------------
def read_mark(store: ArtifactStore, technology: str, backup_id: str) -> ResumeMark:
    """The mark of an incomplete backup; BadInputError saying why it cannot be resumed."""
    folder = store.backup_dir(technology, backup_id)
    where = f"backup {technology}/{backup_id} in {store.relative(store.root) or 'the store'}"
    if store.fs.exists(posixpath.join(folder, MANIFEST_NAME)):
        raise BadInputError(f"--resume: {where} is complete (it has a manifest); nothing to resume")
    raw = store._read_optional(posixpath.join(folder, RESUME_NAME), 1 << 20, where)
    if raw is None:
        if not store.fs.exists(folder):
            raise BadInputError(f"--resume: there is no {where}")
        raise BadInputError(
            f"--resume: {where} cannot be resumed: it has no {RESUME_NAME} (its driver does "
            "not keep finished units, or it failed before any unit was stored)"
        )
    try:
        mark = ResumeMark.model_validate_json(raw)
    except (ValueError, ValidationError, RecursionError) as exc:
        raise IntegrityError(f"--resume: {where}: {RESUME_NAME} is unreadable: {exc}") from None
    if (mark.technology, mark.backup_id) != (technology, backup_id):
        raise IntegrityError(
            f"--resume: {where}: its {RESUME_NAME} describes {mark.technology}/{mark.backup_id}"
        )
    return mark


def check_same_backup(mark: ResumeMark, asked: ResumeMark) -> None:
    """A resume finishes the backup that was started: same sources in the same order
    (by identity), same options, same parent, same recipients."""
    problems = []
    if mark.source_ids != asked.source_ids:
        problems.append(
            f"it is of the sources {', '.join(mark.sources)}, not {', '.join(asked.sources)} "
            "(give the same --source URLs, in the same order)"
        )
    if mark.options_sha256 != asked.options_sha256:
        problems.append("it was started with other --option values")
    if mark.parent != asked.parent:
        problems.append(
            f"it was started as {'an incremental on ' + mark.parent if mark.parent else 'a full backup'}"
        )
    if sorted(mark.recipients) != sorted(asked.recipients):
        problems.append(
            f"it is encrypted to {', '.join(mark.recipients) or 'no one'}, not to "
            f"{', '.join(asked.recipients) or 'no one'} (give the same recipients)"
        )
    if problems:
        raise BadInputError(
            f"--resume {mark.backup_id}: this is not the backup that was started: "
            + "; ".join(problems)
        )


def done_units(
    store: ArtifactStore, technology: str, backup_id: str, warn: Any
) -> dict[str, tuple[str, Snapshot]]:
    """The units the folder's records say are stored: unit name -> (record path, unit).
    A record that cannot be read or checked is passed over (its unit is backed up
    again) and said through `warn`; one that the identities given cannot open stops the
    resume (BadInputError): backing every unit up again would not be what was asked."""
    folder = store.backup_dir(technology, backup_id)
    found: dict[str, tuple[str, Snapshot]] = {}
    for path in sorted(store.fs.ls(folder, detail=False)):
        name = posixpath.basename(path.rstrip("/"))
        if not DONE_NAME.match(name):
            continue
        try:
            done = _read_record(store, posixpath.join(folder, name))
        except IntegrityError as exc:
            warn(f"{name} is passed over, its unit is backed up again: {exc}")
            continue
        found.setdefault(done.unit.name, (posixpath.join(folder, name), done))
    return found


def _read_record(store: ArtifactStore, path: str) -> Snapshot:
    raw = store._read_optional(path, MAX_RECORD_BYTES, path)
    if raw is None:
        raise IntegrityError("it is gone")
    try:
        record = json.loads(raw)
        body = base64.b64decode(record["body"], validate=True)
        signature = record.get("signature")
        sealed = record["sealed"] is True
    except (ValueError, TypeError, KeyError, RecursionError):
        raise IntegrityError("it is unreadable") from None
    if store.keys.signing_key is not None:
        if not isinstance(signature, str):
            raise IntegrityError("it is not signed, and this host signs")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except ValueError:
            raise IntegrityError("its signature is unreadable") from None
        own = signing.verify_key_of(store.keys.signing_key)
        signing.check_signature(own, body, raw_signature, "the record")
    if sealed != bool(store.keys.recipients):
        raise IntegrityError("it is sealed" if sealed else "it is not sealed, and the backup is")
    if sealed:
        if not store.keys.identities:
            raise BadInputError(
                "--resume: the backup is encrypted: give --identity to resume it (its "
                "finished units are recorded sealed)"
            )
        try:
            body = pyrage.decrypt(body, store.keys.identities)
        except pyrage.DecryptError:
            raise BadInputError(
                f"--resume: no identity given opens {posixpath.basename(path)}, a record of "
                "the backup's finished units: give the --identity of its recipients"
            ) from None
    try:
        return Snapshot.model_validate_json(body)
    except (ValueError, ValidationError, RecursionError) as exc:
        raise IntegrityError(f"it is unreadable: {str(exc)[:200]}") from None


# -- cleaning up -------------------------------------------------------------------------
def clear_unkept(store: ArtifactStore, technology: str, backup_id: str, keep: set[str]) -> int:
    """Before the missing units are backed up again: remove every file of the folder
    but the kept units' files and records (`keep`, relative to the folder), the mark
    and the leases. What a failed unit left half written goes; nothing of a kept one."""
    folder = store.backup_dir(technology, backup_id)
    removed = 0
    for path in store.fs.find(folder):
        relative = posixpath.relpath(path, folder)
        name = posixpath.basename(relative)
        if relative in keep or relative == RESUME_NAME or name.startswith(LEASE_PREFIX):
            continue
        store.fs.rm_file(path)
        removed += 1
    return removed


def remove_records(store: ArtifactStore, technology: str, backup_id: str) -> None:
    """The mark and the records go before the manifest is written: a complete backup
    holds no more than its manifest names (a crash between the two leaves an
    incomplete folder that is no longer resumable, which prune removes)."""
    folder = store.backup_dir(technology, backup_id)
    for path in store.fs.ls(folder, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name == RESUME_NAME or DONE_NAME.match(name):
            store.fs.rm_file(posixpath.join(folder, name))


def kept_count(store: ArtifactStore, technology: str, backup_id: str) -> int:
    """How many unit records a failed backup's folder holds (not opened)."""
    folder = store.backup_dir(technology, backup_id)
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in store.fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if DONE_NAME.match(n))
