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
from backstop.tasks.manifest import MANIFEST_NAME, Role
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
    role: Role
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
    body = mark.model_dump_json(indent=2).encode()
    record = _envelope(store, mark.technology, mark.backup_id, "mark", body, sealed=False)
    store._write_small(_path(store, mark.technology, mark.backup_id, RESUME_NAME), record)


def record_done(store: ArtifactStore, technology: str, backup_id: str, done: Snapshot) -> None:
    """Written by the unit's own task once its last file is stored: a process killed a
    moment later keeps the unit. A plain backup's record is named for its unit (a
    re-run replaces it); an encrypted one's name is random, as its files' names are."""
    sealed = bool(store.keys.recipients)
    body = done.model_dump_json().encode()
    if sealed:
        body = pyrage.encrypt(body, store.keys.recipients)
        key = secrets.token_hex(10)
    else:
        key = hashlib.sha256(done.unit.name.encode()).hexdigest()[:20]
    record = _envelope(store, technology, backup_id, "done", body, sealed=sealed)
    store._write_small(_path(store, technology, backup_id, f"done-{key}.json"), record)


def _envelope(
    store: ArtifactStore, technology: str, backup_id: str, kind: str, body: bytes, *, sealed: bool
) -> bytes:
    """The file's content: the body, which backup it belongs to, and, on a host that
    signs, a signature over all of it: a store writer can neither plant a record this
    host then signs into a manifest, nor replay one from another backup."""
    record: dict[str, Any] = {
        "kind": kind,
        "technology": technology,
        "backup_id": backup_id,
        "sealed": sealed,
        "body": base64.b64encode(body).decode(),
    }
    if store.keys.signing_key is not None:
        signed = _signed_bytes(kind, technology, backup_id, sealed, body)
        record["signature"] = base64.b64encode(
            signing.signature_for(store.keys.signing_key, signed)
        ).decode()
    return json.dumps(record).encode()


def _signed_bytes(kind: str, technology: str, backup_id: str, sealed: bool, body: bytes) -> bytes:
    head = f"backstop-{kind}/1\0{technology}\0{backup_id}\0{int(sealed)}\0"
    return head.encode() + body


def _path(store: ArtifactStore, technology: str, backup_id: str, name: str) -> str:
    return posixpath.join(store.backup_dir(technology, backup_id), name)


# -- reading -----------------------------------------------------------------------------
def read_mark(store: ArtifactStore, technology: str, backup_id: str) -> ResumeMark:
    """The mark of an incomplete backup; BadInputError saying why it cannot be resumed.
    Read again once the resume holds the folder's lease (another resume may have
    finished it meanwhile)."""
    folder = store.backup_dir(technology, backup_id)
    where = f"backup {technology}/{backup_id} in {store.relative(store.root) or 'the store'}"
    if has_manifest(store, technology, backup_id):
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
        body, _ = _open_envelope(store, technology, backup_id, "mark", raw)
        return ResumeMark.model_validate_json(body)
    except (ValueError, ValidationError, RecursionError, IntegrityError) as exc:
        raise IntegrityError(f"--resume: {where}: {RESUME_NAME} is refused: {exc}") from None


def stored_units(store: ArtifactStore, technology: str, backup_id: str) -> int | None:
    """How many units an incomplete folder's records say are stored, by their file names
    alone (nothing is opened or trusted: status only points at `--resume`, which checks
    everything); None when the folder has no mark, so cannot be resumed."""
    folder = store.backup_dir(technology, backup_id)
    try:
        names = {posixpath.basename(p.rstrip("/")) for p in store.fs.ls(folder, detail=False)}
    except OSError:
        return None
    if RESUME_NAME not in names or MANIFEST_NAME in names:
        return None
    return sum(1 for name in names if DONE_NAME.match(name))


def has_manifest(store: ArtifactStore, technology: str, backup_id: str) -> bool:
    folder = store.backup_dir(technology, backup_id)
    return store.fs.exists(posixpath.join(folder, MANIFEST_NAME))


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
    again) and said through `warn`. Sealed records that the identities given open
    none of stop the resume (BadInputError): backing every unit up again, or worse,
    removing them as unkept, would not be what was asked."""
    folder = store.backup_dir(technology, backup_id)
    found: dict[str, tuple[str, Snapshot]] = {}
    unopened: list[str] = []
    for path in sorted(store.fs.ls(folder, detail=False)):
        name = posixpath.basename(path.rstrip("/"))
        if not DONE_NAME.match(name):
            continue
        try:
            done = _read_record(store, technology, backup_id, posixpath.join(folder, name))
        except _Unopened:
            unopened.append(name)
            continue
        except IntegrityError as exc:
            warn(f"{name} is passed over, its unit is backed up again: {exc}")
            continue
        found.setdefault(done.unit.name, (posixpath.join(folder, name), done))
    if unopened and not found:
        raise BadInputError(
            "--resume: the backup is encrypted and its finished units are recorded sealed: "
            + ("give --identity to resume it" if not store.keys.identities
               else "no identity given opens them; give the --identity of its recipients")
        )  # fmt: skip
    for name in unopened:
        warn(f"{name} is passed over (no identity given opens it), its unit is backed up again")
    return found


class _Unopened(Exception):
    """A sealed record that the identities given do not open."""


def _open_envelope(
    store: ArtifactStore, technology: str, backup_id: str, kind: str, raw: bytes
) -> tuple[bytes, bool]:
    """(body, sealed) of a mark or record written by _envelope for this very backup;
    IntegrityError naming what is wrong. A host that signs accepts only its own
    signature over it."""
    try:
        record = json.loads(raw)
        body = base64.b64decode(record["body"], validate=True)
        sealed = record["sealed"] is True
        signature = record.get("signature")
        belongs = (record["kind"], record["technology"], record["backup_id"])
    except (ValueError, TypeError, KeyError, RecursionError):
        raise IntegrityError("it is unreadable") from None
    if belongs != (kind, technology, backup_id):
        raise IntegrityError(
            f"it is a {belongs[0]} of {belongs[1]}/{belongs[2]}, not of this backup"
        )
    if store.keys.signing_key is not None:
        if not isinstance(signature, str):
            raise IntegrityError("it is not signed, and this host signs")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except ValueError:
            raise IntegrityError("its signature is unreadable") from None
        signed = _signed_bytes(kind, technology, backup_id, sealed, body)
        own = signing.verify_key_of(store.keys.signing_key)
        signing.check_signature(own, signed, raw_signature, "it")
    return body, sealed


def _read_record(store: ArtifactStore, technology: str, backup_id: str, path: str) -> Snapshot:
    raw = store._read_optional(path, MAX_RECORD_BYTES, path)
    if raw is None:
        raise IntegrityError("it is gone")
    body, sealed = _open_envelope(store, technology, backup_id, "done", raw)
    if sealed != bool(store.keys.recipients):
        raise IntegrityError("it is sealed" if sealed else "it is not sealed, and the backup is")
    if sealed:
        if not store.keys.identities:
            raise _Unopened
        try:
            body = pyrage.decrypt(body, store.keys.identities)
        except pyrage.DecryptError:
            raise _Unopened from None
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
    names = {posixpath.basename(p.rstrip("/")) for p in store.fs.ls(folder, detail=False)}
    if RESUME_NAME not in names or MANIFEST_NAME in names:
        # Another resume finished (or is finishing) it: nothing here is ours to remove.
        raise BadInputError(
            f"--resume {backup_id}: the backup was completed or changed by another run "
            "meanwhile; nothing was removed"
        )
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
    """The mark and the records go once the manifest is written (a complete backup
    holds no more than its manifest names); a crash before leaves them in a complete
    folder, where nothing reads them and --resume refuses (it has a manifest)."""
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
