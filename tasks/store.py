"""The artifact store: backups as folders in any fsspec filesystem.

    <store>/<technology>/<backup_id>/manifest.json   written last
    <store>/<technology>/<backup_id>/<data files>

A folder without a manifest is an incomplete backup: invisible to list and restore.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import os
import posixpath
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, Field, ValidationError

from backstop.drivers.errors import (
    BackstopError,
    BadInputError,
    IntegrityError,
    QualityError,
    TransientError,
)
from backstop.drivers.files import fsync_dir, make_private_dirs, open_private
from backstop.drivers.redact import redact_url
from backstop.tasks import bandwidth, sealed, signing
from backstop.tasks.manifest import (
    BACKUP_ID,
    MANIFEST_NAME,
    TECHNOLOGY_NAME,
    Manifest,
    new_backup_id,
)

# An encrypted backup's data file as stored: a random name (tasks/packaging.py).
OPAQUE_FILE = re.compile(r"^[0-9a-f]{20}\.zst\.age\Z")
# Far above any real manifest (about 300 bytes per file), far below what hurts to read.
MAX_MANIFEST_BYTES = 256 << 20
DRILL_RECORD = "drill.json"  # beside a drill backup's manifest, once the drill passed
MAX_DRILL_RECORD_BYTES = 64 << 10


class StoreSpec(BaseModel):
    """Where backups live: an fsspec URL or a local path, plus filesystem options.

    This travels as a flow parameter, which Prefect stores: a secret in the URL or
    the options (s3fs `key`/`secret`/`token`, `client_kwargs` credentials, a URL
    password) is a `${env:NAME}` or `${secret:BLOCK}` reference, resolved by `open`
    in the process that talks to the store (the CLI turns plain-text ones into
    references; a flow refuses them). Credentials may also come from the environment
    (AWS_ACCESS_KEY_ID, ...) or fsspec's FSSPEC_S3_* variables.
    """

    url: str
    options: dict[str, Any] = Field(default_factory=dict)
    # Encryption (tasks/crypto.py). Recipients are public keys: backups written through
    # this spec are encrypted to them. `identity` says where the private key is (a file
    # on the machine that reads, or a ${secret:BLOCK} / ${env:NAME} reference), never
    # the key itself: it is needed to read an encrypted backup's content.
    recipients: list[str] = Field(default_factory=list)
    identity: str | None = None
    # Signed manifests (tasks/signing.py): where the Ed25519 signing key is (backup hosts;
    # a file or a reference, like `identity`), and the verify key (restore hosts; public:
    # a PEM file, a reference, or its one-line `ed25519:...` form).
    signing_key: str | None = None
    verify_key: str | None = None
    # Bandwidth limits of the data files' streams in MB/s (10^6 bytes), per process and
    # direction, shared by every stream (tasks/bandwidth.py); None: unlimited.
    limit_upload_mb_s: float | None = Field(
        default=None,
        ge=bandwidth.MIN_MB_S,
        le=bandwidth.MAX_MB_S,
        allow_inf_nan=False,
        description="cap on writing backups' data files, MB/s (10^6 bytes), 0.01 to 10^6; "
        "empty: none",
    )
    limit_download_mb_s: float | None = Field(
        default=None,
        ge=bandwidth.MIN_MB_S,
        le=bandwidth.MAX_MB_S,
        allow_inf_nan=False,
        description="cap on reading backups' data files, MB/s (10^6 bytes), 0.01 to 10^6; "
        "empty: none",
    )

    def open(self) -> ArtifactStore:
        from backstop.tasks.secrets import block_name, resolve_options, resolve_url

        name = block_name(self.url)
        if name is not None:  # a BackstopStore block: URL, options and credentials
            from backstop.tasks.blocks import load_store

            block = load_store(name)
            options = block.filesystem_options() | resolve_options(self.options)
            store = ArtifactStore(resolve_url(block.url), options)
        else:
            store = ArtifactStore(resolve_url(self.url), resolve_options(self.options))
        store.keys = self.encryption_keys()
        store.limit_bandwidth(self.limit_upload_mb_s, self.limit_download_mb_s)
        return store

    def encryption_keys(self) -> StoreKeys:
        # Not `keys`: Prefect takes any object with a keys() method for a mapping.
        from backstop.tasks import crypto, signing

        crypto.refuse_literal_identity(self.identity)
        signing.refuse_literal_signing_key(self.signing_key)
        recipients = crypto.expand_recipients(self.recipients)  # ${secret:...} too
        identities = crypto.load_identities(self.identity) if self.identity else []
        signing_key = signing.load_signing_key(self.signing_key) if self.signing_key else None
        verify_key = signing.load_verify_key(self.verify_key) if self.verify_key else None
        if verify_key is None and signing_key is not None:
            # A host that signs believes only what it signed: an incremental is never
            # built on a parent someone else planted in the store.
            verify_key = signing.verify_key_of(signing_key)
        return StoreKeys(
            recipients=crypto.parse_recipients(recipients),
            fingerprints=[crypto.fingerprint(r) for r in recipients],
            identities=identities,
            signing_key=signing_key,
            verify_key=verify_key,
            verify_key_implied=verify_key is not None and not self.verify_key,
        )

    def display(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class BackupFolder:
    technology: str
    backup_id: str
    complete: bool


@dataclass(frozen=True)
class StoreScan:
    manifests: list[Manifest]
    unreadable: dict[BackupFolder, str]


@dataclass(frozen=True)
class StoreKeys:
    """What a store's data files are encrypted to, and what decrypts them (none: plain)."""

    recipients: list[Any] = field(default_factory=list)  # pyrage x25519.Recipient
    fingerprints: list[str] = field(default_factory=list)
    identities: list[Any] = field(default_factory=list)  # pyrage x25519.Identity
    signing_key: Any = None  # Ed25519PrivateKey: manifests written are signed
    verify_key: Any = None  # signing.VerifyKey: manifests read must be signed by it
    verify_key_implied: bool = False  # the signing key's own, no verify key being given


class ArtifactStore:
    keys: StoreKeys

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.keys = StoreKeys()
        self.upload: bandwidth.TokenBucket | None = None  # no limit unless limit_bandwidth
        self.download: bandwidth.TokenBucket | None = None
        check_store_url(url)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ValueError, ImportError, TypeError) as exc:
            raise BadInputError(f"store {redact_url(url)!r} cannot be opened: {exc}") from None
        self.url = url
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            try:
                make_private_dirs(self.root)
            except OSError as exc:  # a file in the way, no permission
                raise BadInputError(
                    f"store folder {self.root!r} cannot be created: {exc.strerror or exc}"
                ) from None

    def __repr__(self) -> str:
        return f"ArtifactStore({redact_url(self.url)!r})"

    # -- paths --------------------------------------------------------------------
    def backup_dir(self, technology: str, backup_id: str) -> str:
        _check_name(technology, TECHNOLOGY_NAME, "technology")
        _check_name(backup_id, BACKUP_ID, "backup id")
        return posixpath.join(self.root, technology, backup_id)

    def file_path(self, technology: str, backup_id: str, name: str) -> str:
        return posixpath.join(
            self.backup_dir(technology, backup_id),
            check_file_name(name, f"backup {technology}/{backup_id}"),
        )

    # -- data files ---------------------------------------------------------------
    def limit_bandwidth(self, upload_mb_s: float | None, download_mb_s: float | None) -> None:
        """Meter this store's data streams through the process's buckets (the smallest
        limit asked for in the process holds; tasks/bandwidth.py)."""
        self.upload = bandwidth.bucket(bandwidth.UPLOAD, upload_mb_s)
        self.download = bandwidth.bucket(bandwidth.DOWNLOAD, download_mb_s)

    @contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        """A data file: on a local disk 0600 and fsynced when the block ends (the
        manifest that names it will be fsynced later, and must not outlive it); on an
        object store, one object whose upload completes when the block ends."""
        if self.is_local:
            with _store_errors(path):
                make_private_dirs(posixpath.dirname(path))
                with open_private(path) as fh:
                    yield bandwidth.metered(fh, self.upload)
            return
        with _store_errors(path), self.fs.open(path, "wb") as fh:
            yield bandwidth.metered(fh, self.upload)

    @contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        try:
            with _store_errors(path):
                fh = self._open_local(path) if self.is_local else self.fs.open(path, "rb")
        except FileNotFoundError:
            raise IntegrityError(f"{self.relative(path)}: file is missing from the store") from None
        with _store_errors(path), fh:
            yield bandwidth.metered(fh, self.download)

    def _open_local(self, path: str) -> IO[bytes]:
        """A data file on a local disk: a regular file, not a link followed or a FIFO
        waited on (planted in the store, either would hang or redirect the reader)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IntegrityError(
                    f"{self.relative(path)}: a symbolic link, not a file this store wrote"
                ) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IntegrityError(f"{self.relative(path)}: not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def size(self, path: str) -> int | None:
        try:
            return self.fs.size(path)
        except FileNotFoundError:
            return None

    # -- manifests ----------------------------------------------------------------
    def write_manifest(self, manifest: Manifest, *, replacing: bool = False) -> str:
        """The last files of a backup: an encrypted backup's sealed body, the signature,
        then the manifest itself, which makes the backup complete.

        `replacing` an existing manifest (tasks/rekey.py), whichever of the two a crash
        leaves stays whole and signed: the new sealed body gets a name of its own, and the
        signature file holds both manifests' signatures until the new one is in place."""
        folder = self.backup_dir(manifest.technology, manifest.backup_id)
        path = posixpath.join(folder, MANIFEST_NAME)
        sig_path = posixpath.join(folder, signing.SIGNATURE_NAME)
        if manifest.encryption is not None:
            if not self.keys.recipients:
                raise BackstopError("an encrypted backup's manifest is written with its recipients")
            name = (
                f"manifest.sealed.{secrets.token_hex(4)}.age" if replacing else sealed.SEALED_NAME
            )
            manifest, body = sealed.seal(manifest, self.keys.recipients, name)
            self._write_small(posixpath.join(folder, name), body)
        data = manifest.model_dump_json(indent=2).encode()
        signature = None
        if self.keys.signing_key is not None:
            signature = signing.signature_for(self.keys.signing_key, data)
            if replacing:
                old = self._read_optional(sig_path, signing.MAX_SIGNATURE_BYTES, path)
                both = signing.signatures_for_replacing(self.keys.signing_key, data, old)
                self._write_small(sig_path, both)
            else:
                self._write_small(sig_path, signature)
        with _store_errors(path):
            if self.is_local:
                self._commit_local_manifest(path, data)
            else:
                # One PUT of a small object is atomic on object stores; the flow writes
                # it only once every data file's upload has returned.
                self.fs.pipe_file(path, data)
        if replacing and signature is not None:
            self._write_small(sig_path, signature)
        return path

    def _write_small(self, path: str, data: bytes) -> None:
        """A small file beside the manifest, replaced whole or not at all (a signature
        is rewritten while a manifest is replaced: never seen half written)."""
        with _store_errors(path):
            if not self.is_local:
                self.fs.pipe_file(path, data)  # one PUT
                return
            folder = posixpath.dirname(path)
            make_private_dirs(folder)
            tmp = path + ".tmp"
            with open_private(tmp) as fh:
                fh.write(data)
            os.replace(tmp, path)
            fsync_dir(folder)

    def _commit_local_manifest(self, path: str, data: bytes) -> None:
        """Data files (fsynced as they closed) and their folders' entries reach the disk
        before the manifest does; the manifest appears by an atomic rename, whole or not
        at all, and the rename itself is made durable."""
        folder = posixpath.dirname(path)
        make_private_dirs(folder)
        for inner, _dirs, _files in os.walk(folder):
            fsync_dir(inner)
        for outer in (posixpath.dirname(folder), self.root):  # the backup folder's own entry
            fsync_dir(outer)
        tmp = path + ".tmp"
        with open_private(tmp) as fh:
            fh.write(data)
        os.replace(tmp, path)
        fsync_dir(folder)

    def read_manifest(self, technology: str, backup_id: str, *, unseal: bool = True) -> Manifest:
        """A backup's manifest, checked against the verify key when one is configured;
        an encrypted backup's full manifest when an identity is given (and `unseal`),
        else its plain envelope (tasks/sealed.py)."""
        folder = self.backup_dir(technology, backup_id)
        path = posixpath.join(folder, MANIFEST_NAME)
        label = f"{technology}/{backup_id}/{MANIFEST_NAME}"
        try:
            with _store_errors(path):
                raw = self._read_bounded(path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise BadInputError(
                f"no complete backup {technology}/{backup_id} in {redact_url(self.url)}"
            ) from None
        except OSError as exc:  # permissions, a folder in its place, a bad disk block
            raise IntegrityError(f"{label} is unreadable: {exc}") from None
        if raw is None:
            raise IntegrityError(f"{label} is unreadable: larger than {MAX_MANIFEST_BYTES} bytes")
        if self.keys.verify_key is not None:  # before anything in it is believed
            signature = self._read_optional(
                posixpath.join(folder, signing.SIGNATURE_NAME), signing.MAX_SIGNATURE_BYTES, label
            )
            signing.check_signature(self.keys.verify_key, raw, signature, label)
        try:
            manifest = Manifest.model_validate(json.loads(raw))
        except (ValueError, ValidationError, RecursionError) as exc:
            raise IntegrityError(f"{label} is unreadable: {exc}") from None
        check_manifest_names(manifest, technology, backup_id)
        if manifest.sealed is not None and unseal and self.keys.identities:
            body = self._read_optional(
                posixpath.join(folder, manifest.sealed.name), MAX_MANIFEST_BYTES, label
            )
            if body is None:
                raise IntegrityError(f"{label}: its sealed part {manifest.sealed.name} is missing")
            manifest = sealed.unseal(manifest, body, self.keys.identities, label)
            check_manifest_names(manifest, technology, backup_id)
        return manifest

    def manifest_digest(self, technology: str, backup_id: str) -> str:
        """SHA-256 of a manifest's bytes as stored: what pins a backup this run wrote
        itself (a restore's safety backup), whoever else could sign or not."""
        path = posixpath.join(self.backup_dir(technology, backup_id), MANIFEST_NAME)
        label = f"{technology}/{backup_id}/{MANIFEST_NAME}"
        raw = self._read_optional(path, MAX_MANIFEST_BYTES, label)
        if raw is None:
            raise IntegrityError(f"{label} is missing")
        return hashlib.sha256(raw).hexdigest()

    def check_sealed_part(self, manifest: Manifest) -> None:
        """An envelope's sealed part: present, and the size and SHA-256 it records (what
        `verify` proves of it without the identity). IntegrityError otherwise."""
        part = manifest.sealed
        if part is None:
            return
        label = f"{manifest.technology}/{manifest.backup_id}/{part.name}"
        folder = self.backup_dir(manifest.technology, manifest.backup_id)
        body = self._read_optional(posixpath.join(folder, part.name), MAX_MANIFEST_BYTES, label)
        if body is None:
            raise IntegrityError(f"{label}: the sealed manifest is missing from the store")
        if len(body) != part.bytes or hashlib.sha256(body).hexdigest() != part.sha256:
            raise IntegrityError(f"{label}: differs from the size and SHA-256 its manifest records")

    def is_signed(self, technology: str, backup_id: str) -> bool:
        """Whether a signature lies beside the manifest (checked only with a verify key)."""
        path = posixpath.join(self.backup_dir(technology, backup_id), signing.SIGNATURE_NAME)
        try:
            signature = self._read_optional(path, signing.MAX_SIGNATURE_BYTES, path)
        except IntegrityError:
            return False
        return signature is not None and signing.looks_signed(signature)

    def _read_optional(self, path: str, limit: int, label: str) -> bytes | None:
        """A small file beside a manifest; None when it does not exist."""
        try:
            with _store_errors(path):
                data = self._read_bounded(path, limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IntegrityError(f"{label}: {posixpath.basename(path)} is unreadable: {exc}") from None
        if data is None:
            raise IntegrityError(
                f"{label}: {posixpath.basename(path)} is larger than {limit} bytes"
            )
        return data

    def _read_bounded(self, path: str, limit: int) -> bytes | None:
        """A small file's content, or None when it is larger than `limit`. On a local
        disk a regular file only (OSError otherwise): a FIFO planted in the store would
        block the read for ever, a link to a device (/dev/zero) be read to the limit."""
        if self.is_local and not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if not self.is_local:
            # One ranged GET, where opening the file asks its size first (a HEAD, then a
            # GET): `backstop metrics` reads thousands of manifests. An empty object
            # refuses a range (S3: 416, an OSError): read as before.
            try:
                raw = self.fs.cat_file(path, start=0, end=limit + 1)
                return None if len(raw) > limit else raw
            except FileNotFoundError:
                raise
            except OSError:
                pass
        with self.fs.open(path, "rb") as fh:
            raw = fh.read(limit + 1)
        return None if len(raw) > limit else raw

    def folders(self, technology: str | None = None) -> list[BackupFolder]:
        """Every backup folder, complete or not, oldest first."""
        found = []
        for tech, backup_id in self.folder_names(technology):
            manifest = posixpath.join(self.root, tech, backup_id, MANIFEST_NAME)
            with _store_errors(manifest):
                complete = self.fs.exists(manifest)
            found.append(BackupFolder(tech, backup_id, complete))
        return found

    def folder_names(self, technology: str | None = None) -> list[tuple[str, str]]:
        """Every backup folder's (technology, backup id), oldest first: one listing per
        technology, no request per folder (whether it is complete is not looked at)."""
        techs = [technology] if technology else self._children(self.root)
        found = [
            (tech, backup_id)
            for tech in techs
            if TECHNOLOGY_NAME.match(tech)
            for backup_id in self._children(posixpath.join(self.root, tech))
            if BACKUP_ID.match(backup_id)
        ]
        return sorted(found, key=lambda name: (name[1], name[0]))

    def technologies_holding(self, backup_id: str) -> list[str]:
        """The technologies under whose folder a complete backup (one with a manifest) of
        this id lies: how a backup is found by its id alone. Two is possible (a store put
        together from copies): the caller asks which one is meant."""
        _check_name(backup_id, BACKUP_ID, "backup id")
        found = []
        for tech in self._children(self.root):
            if TECHNOLOGY_NAME.match(tech):
                manifest = posixpath.join(self.root, tech, backup_id, MANIFEST_NAME)
                with _store_errors(manifest):
                    if self.fs.exists(manifest):
                        found.append(tech)
        return found

    def list_backups(self, technology: str | None = None) -> list[Manifest]:
        """Complete backups (those with a manifest), oldest first."""
        return [
            self.read_manifest(f.technology, f.backup_id)
            for f in self.folders(technology)
            if f.complete
        ]

    def scan(self, technology: str | None = None) -> StoreScan:
        """Complete backups, oldest first, and the folders whose manifest cannot be read:
        one bad manifest is reported, never a reason to stop looking at the others."""
        manifests: list[Manifest] = []
        unreadable: dict[BackupFolder, str] = {}
        for folder in self.folders(technology):
            if folder.complete:
                try:
                    manifests.append(self.listed_manifest(folder))
                except IntegrityError as exc:
                    unreadable[folder] = str(exc)
                except BadInputError:  # deleted since the listing (a prune): not a backup
                    continue
        return StoreScan(manifests, unreadable)

    def _claims_ordinary(self, folder: BackupFolder) -> bool:
        """Whether a manifest that failed its check says it is an ordinary backup (a
        restore host's unsigned safety backup is not: it never stands for `latest`)."""
        unchecked = copy.copy(self)
        unchecked.keys = dataclasses.replace(self.keys, verify_key=None)
        try:
            return unchecked.read_manifest(folder.technology, folder.backup_id, unseal=False).ordinary
        except BackstopError:
            return True  # unreadable either way: as suspect as a forged one

    def listed_manifest(self, folder: BackupFolder) -> Manifest:
        """A manifest for a listing: its envelope when the identity given does not open
        it (a backup from before a key rotation is still listed, and a restore of it
        says which keys it needs)."""
        try:
            return self.read_manifest(folder.technology, folder.backup_id)
        except sealed.WrongIdentityError:
            return self.read_manifest(folder.technology, folder.backup_id, unseal=False)

    def newest_parent(
        self, technology: str, sources: list[str], source_ids: list[str]
    ) -> Manifest | None:
        """The newest complete, validated backup of exactly these sources, in this order:
        what an incremental builds on. Identities decide (`sqlite:///a.db` run from two
        folders is two files); a manifest from before identities were recorded matches
        by its (redacted) URLs only."""
        candidates = [
            m
            for m in self._ordinary_backups(technology, latest=False)
            # A safety or drill backup may be of the same sources, but holds a target's
            # old content or a drill's copy: never what the next incremental continues.
            if m.quality.status == "passed" and _same_sources(m, sources, source_ids)
        ]
        return newest_of(candidates)

    def chain(self, manifest: Manifest) -> list[Manifest]:
        """The backups an incremental stands on, full backup first, ending with itself.

        A missing or incomplete link makes the whole chain unrestorable: say which.
        """
        links = [manifest]
        while links[0].parent:
            parent = links[0].parent
            if not BACKUP_ID.match(parent) or any(m.backup_id == parent for m in links):
                raise IntegrityError(f"backup {links[0].backup_id} names a bad parent {parent!r}")
            try:
                links.insert(0, self.read_manifest(manifest.technology, parent))
            except BadInputError:
                raise IntegrityError(
                    f"backup {manifest.backup_id} is incremental and its chain is broken: "
                    f"{parent} (parent of {links[0].backup_id}) is missing or incomplete; "
                    "restore an older complete chain or take a new full backup"
                ) from None
        return links

    def resolve(
        self,
        technology: str,
        ref: str = "latest",
        sources: Sequence[str] = (),
        identify: Callable[[], list[str]] | None = None,
        validated_only: bool = True,
    ) -> Manifest:
        """A backup by id, or `latest`: the newest complete, validated, ordinary
        (scheduled or ad hoc) backup, never a safety or drill backup. With
        `validated_only` off (restore --force), one that failed its data-quality
        checks counts too.

        `sources` (redacted URLs) narrows `latest` to backups of those sources;
        `identify` gives their identities, asked only when no backup's URLs match. With
        no `sources`, a store holding backups of different sources has no one latest:
        refused, naming each source set's newest backup.
        """
        if ref != "latest":
            if sources:
                raise BadInputError(
                    "--source chooses the latest backup of those sources; give either "
                    "--source or --backup ID, not both"
                )
            if not BACKUP_ID.match(ref):
                raise BadInputError(
                    f"{ref!r} is not a backup id (like 20261126T120501Z-3fa2) or 'latest'"
                )
            return self.read_manifest(technology, ref)
        candidates = sorted(self._ordinary_backups(technology), key=newest_key)
        if sources:  # one place, checked for ambiguity by _of_sources
            chosen = _of_sources(candidates, technology, sources, identify, self.url)
        else:
            # Grouped by source before the quality rule: a source whose backups all
            # failed it must not leave another source's backup as the only "latest".
            groups: dict[tuple[str, ...], list[Manifest]] = {}
            for manifest in candidates:
                groups.setdefault(manifest.source_set, []).append(manifest)
            if not groups:
                raise BadInputError(
                    f"no complete {technology} backup in {redact_url(self.url)} to take as "
                    "latest (safety and drill backups are restored only by --backup ID)"
                )
            if len(groups) > 1:
                raise BadInputError(
                    f"{redact_url(self.url)} holds {technology} backups of {len(groups)} "
                    "different sources, so 'latest' could restore the wrong one; choose with "
                    "--source URL (repeatable) or --backup ID:\n  "
                    + "\n  ".join(
                        f"{', '.join(group[-1].sources)} -> {group[-1].backup_id}"
                        for group in sorted(
                            groups.values(), key=lambda g: newest_key(g[-1]), reverse=True
                        )
                    )
                )
            [chosen] = groups.values()
        if validated_only:
            chosen = _validated(chosen, technology)
        return newest_of(chosen)

    def _ordinary_backups(self, technology: str, *, latest: bool = True) -> list[Manifest]:
        """Complete ordinary backups, oldest first. A manifest that cannot be read (or
        was pruned meanwhile) is no candidate: it could not be restored."""
        found, refused = [], []
        for folder in self.folders(technology):
            if not folder.complete:
                continue
            try:
                manifest = self.listed_manifest(folder)
            except IntegrityError as exc:
                if self._claims_ordinary(folder):
                    refused.append((folder.backup_id, str(exc)))
                continue
            except BadInputError:
                continue
            if manifest.ordinary:
                found.append(manifest)
        if latest and self.keys.verify_key is not None and refused:
            # With signatures checked, a newer backup that fails the check is someone's
            # forgery or a signing host's lost key: a restore of `latest` never silently
            # falls back to older data. (An incremental builds on what it signed.)
            newest = max(m.backup_id for m in found) if found else ""
            newer = [(i, why) for i, why in refused if i > newest]
            if newer:
                backup_id, why = max(newer)
                raise IntegrityError(
                    f"'latest' would skip {len(newer)} newer backup(s) that fail the signature "
                    f"check (newest: {backup_id}: {why}); restore an older one deliberately "
                    "with --backup ID"
                )
        return found

    def claim_backup_id(self, technology: str, attempts: int = 20) -> str:
        """A new backup id whose folder no other backup uses: ids are made to the second
        with 16 random bits, and two backups sharing a folder would write into each
        other. On a local disk the folder is created here, exclusively (mkdir fails if
        it exists). An object store has no folders to create: the best it offers is to
        check that nothing exists under the prefix yet, and the caller writes its lease
        there at once. Two writers racing within that gap are not excluded (best
        effort, as the id's random suffix already makes it unlikely)."""
        for _ in range(attempts):
            backup_id = new_backup_id()
            path = self.backup_dir(technology, backup_id)
            with _store_errors(path):
                if self.is_local:
                    make_private_dirs(posixpath.dirname(path))
                    try:
                        os.mkdir(path, 0o700)
                    except FileExistsError:
                        continue
                    return backup_id
                if not self.fs.exists(path) and not self.fs.find(path, maxdepth=1):
                    return backup_id
        raise TransientError(
            f"no free backup id in {redact_url(self.url)} after {attempts} tries; try again"
        )

    def remove_unnamed(self, technology: str, backup_id: str, named: set[str]) -> int:
        """Remove the backup folder's encrypted data files and sealed parts that `named`
        (names relative to the folder) does not hold: what a re-run task (a Dask worker
        that died, a retry) or a cut-short rekey left behind. Their names are random, so
        no later write replaces them; nothing else in the folder is touched."""
        folder = self.backup_dir(technology, backup_id)
        removed = 0
        with _store_errors(folder):
            for path in self.fs.ls(folder, detail=False):
                name = posixpath.basename(path.rstrip("/"))
                opaque = OPAQUE_FILE.match(name) or sealed.SEALED_NAMES.match(name)
                if opaque and name not in named:
                    self.fs.rm_file(posixpath.join(folder, name))
                    removed += 1
        return removed

    def delete_backup(self, technology: str, backup_id: str) -> None:
        """Remove a backup folder, its manifest first: a deletion cut short leaves an
        incomplete folder (invisible, pruned later), never a complete-looking one."""
        path = self.backup_dir(technology, backup_id)
        manifest = posixpath.join(path, MANIFEST_NAME)
        with _store_errors(path):
            if self.fs.exists(manifest):
                self.fs.rm(manifest)
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def folder_bytes(self, technology: str, backup_id: str) -> int:
        with _store_errors(self.backup_dir(technology, backup_id)):
            return int(self.fs.du(self.backup_dir(technology, backup_id), total=True))

    # -- drill records ------------------------------------------------------------
    def write_drill_record(self, technology: str, backup_id: str, record: dict[str, Any]) -> None:
        """Beside a drill's backup, once the drill has restored and verified it: the
        store's proof that the drill passed (`backstop metrics` reads it; a drill
        backup without one is a drill that failed after its backup)."""
        path = posixpath.join(self.backup_dir(technology, backup_id), DRILL_RECORD)
        with self.open_write(path) as fh:
            fh.write(json.dumps(record, default=str).encode())

    def read_drill_record(self, technology: str, backup_id: str) -> dict[str, Any] | None:
        """A drill's record, or None when there is none or it is not one (too large, not
        JSON); a store that cannot be reached raises as for any other file."""
        path = posixpath.join(self.backup_dir(technology, backup_id), DRILL_RECORD)
        try:
            with _store_errors(path):
                raw = self._read_bounded(path, MAX_DRILL_RECORD_BYTES)
            record = json.loads(raw) if raw is not None else None
        except (OSError, ValueError, RecursionError):  # absent, not a file, not JSON
            return None
        return record if isinstance(record, dict) else None

    # -- helpers ------------------------------------------------------------------
    def _children(self, path: str) -> list[str]:
        try:
            with _store_errors(path):
                entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without `refresh`
            with _store_errors(path):
                entries = self.fs.ls(path, detail=True)
        return sorted(
            posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"
        )

    def relative(self, path: str) -> str:
        """A store path as shown to people: technology/backup_id/file."""
        return path[len(self.root) :].lstrip("/")


# A stored file name is a relative path of short parts: longer ones are no backup's.
MAX_FILE_NAME_BYTES = 1024
MAX_NAME_PART_BYTES = 255


def check_file_name(name: object, where: str = "") -> str:
    """A file name read from a manifest, accepted only as a plain relative path that stays
    inside its folder. Every reader (restore, verify, export) goes through this before
    building a path from the name, so a crafted manifest cannot point outside a folder.
    `where` names the backup, for a whole-store verify that reads many."""
    problem = _file_name_problem(name)
    if problem:
        shown = repr(name)[:200]
        raise IntegrityError(f"unsafe file name in {where or 'backup'}: {shown} ({problem})")
    return name  # type: ignore[return-value]  # checked above


def _file_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > MAX_FILE_NAME_BYTES:
        return f"longer than {MAX_FILE_NAME_BYTES} bytes"
    if "\x00" in name:
        return "contains NUL"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "empty, '.' or '..' path part"
        if len(part.encode("utf-8")) > MAX_NAME_PART_BYTES:
            return f"a path part longer than {MAX_NAME_PART_BYTES} bytes"
    return None


_SCHEMES = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(::[A-Za-z][A-Za-z0-9+.\-]*)*$")


def check_store_url(url: str) -> None:
    """The shape of a store URL, checked before anything starts: a scheme that is one,
    a location after it (an object store's bucket; never the whole filesystem), no
    `..` and no NUL."""
    shown = redact_url(url) if url else url
    if not url or not url.strip():
        raise BadInputError("--store is empty")
    from backstop.tasks.secrets import block_name

    if block_name(url) is not None:
        return  # a BackstopStore block: its URL is checked when it is loaded
    if "\x00" in url:
        raise BadInputError(f"store {shown!r} contains a NUL character")
    scheme, sep, rest = url.partition("://")
    if sep:
        if not _SCHEMES.match(scheme):
            raise BadInputError(
                f"store {shown!r}: {scheme!r} is not a URL scheme (use a path, "
                "file:///path or s3://BUCKET/PREFIX)"
            )
        location = rest.split("?", 1)[0].strip("/")
        if not location and scheme.rsplit("::", 1)[-1].lower() != "memory":
            raise BadInputError(
                f"store {shown!r} names no location: use {scheme}://BUCKET[/PREFIX]"
                if scheme.lower() not in ("file", "local")
                else f"store {shown!r} names no folder: use file:///path/to/folder"
            )
    else:
        rest = url
    if ".." in rest.split("?", 1)[0].split("/"):
        raise BadInputError(f"store {shown!r}: '..' is not allowed in a store location")


def check_manifest_names(manifest: Manifest, technology: str, backup_id: str) -> None:
    """Everything in a manifest that becomes part of a path is checked when it is read:
    its own technology and id (they must be its folder's: a manifest copied or edited
    into another folder is not that backup) and every file name."""
    label = f"{technology}/{backup_id}/{MANIFEST_NAME}"
    if manifest.technology != technology or manifest.backup_id != backup_id:
        raise IntegrityError(
            f"{label} describes {manifest.technology!r}/{manifest.backup_id!r}, not the "
            "backup of its folder: the manifest was moved or altered"
        )
    if manifest.sealed is not None and not sealed.SEALED_NAMES.match(manifest.sealed.name):
        raise IntegrityError(f"{label}: its sealed part has a name no backup writes")
    for file in manifest.files:
        check_file_name(file.name, f"backup {technology}/{backup_id}")
        if file.path is not None:
            check_file_name(file.path, f"backup {technology}/{backup_id}")
        linked = file.meta.get("backup_id")
        if linked is not None and not (isinstance(linked, str) and BACKUP_ID.match(linked)):
            raise IntegrityError(f"{label}: file {file.name!r} names a bad backup {linked!r}")


def _validated(candidates: list[Manifest], technology: str) -> list[Manifest]:
    """Those that passed their data-quality checks; when none did, say how to restore
    the newest anyway rather than that there is nothing."""
    passed = [m for m in candidates if m.quality.status == "passed"]
    if candidates and not passed:
        raise QualityError(
            f"no {technology} backup passed its data-quality checks; the newest, "
            f"{candidates[-1].backup_id}, failed them at backup time. Restore it anyway "
            "with --force (the data is as the source held it)"
        )
    return passed


def _of_sources(
    candidates: list[Manifest],
    technology: str,
    sources: Sequence[str],
    identify: Callable[[], list[str]] | None,
    store_url: str,
) -> list[Manifest]:
    """The candidates backed up from these sources, oldest first. Where identities are known
    they decide (one URL text from two working folders is two places; two spellings of
    one place are one); a manifest without recorded identities matches by its URLs."""
    wanted = set(sources)
    ids = _identities_if_reachable(identify)
    matching = [
        m
        for m in candidates
        if (
            set(m.source_ids) == ids
            if m.source_ids and ids is not None
            else set(m.sources) == wanted
        )
    ]
    if ids is None and len({m.source_set for m in matching}) > 1:
        raise BadInputError(
            f"{', '.join(sorted(wanted))} could not be identified, and backups of "
            f"{len({m.source_set for m in matching})} different places were taken under "
            "these URLs (a relative path run from different folders, a host name moved): "
            "choose with --backup ID:\n  "
            + "\n  ".join(f"{', '.join(m.source_set)} -> {m.backup_id}" for m in matching)
        )
    if not matching:
        known = sorted({", ".join(m.sources) for m in candidates})
        raise BadInputError(
            f"no complete {technology} backup of {', '.join(sorted(wanted))} in "
            f"{redact_url(store_url)}"
            + (f"; its backups are of: {'; '.join(known)}" if known else "")
        )
    return matching


def newest_of(manifests: Sequence[Manifest]) -> Manifest | None:
    """The newest by when it finished (ties: the id). A backup id's time is only to the
    second and its suffix is random: two backups in one second are ordered by the
    manifest, not by chance."""
    return max(manifests, key=newest_key, default=None)


def newest_key(manifest: Manifest) -> tuple[Any, str]:
    return (manifest.finished_at, manifest.backup_id)


def _identities_if_reachable(identify: Callable[[], list[str]] | None) -> set[str] | None:
    """The sources' identities; None when they cannot be had (a lost server is what a
    restore is for): then URLs decide, and only where they name one place."""
    if identify is None:
        return None
    try:
        return set(identify())
    except BackstopError:
        return None


def _same_sources(manifest: Manifest, sources: list[str], source_ids: list[str]) -> bool:
    """Whether a backup is of these sources, in this order: by identity when it recorded
    them (a legacy manifest without them, by its redacted URLs)."""
    if manifest.source_ids:
        return manifest.source_ids == source_ids
    return manifest.sources == sources


def _check_name(value: str, pattern, what: str) -> None:
    if not pattern.match(value):
        raise BadInputError(f"invalid {what}: {value!r}")


@contextmanager
def _store_errors(path: str) -> Iterator[None]:
    """Network trouble talking to the store is transient; missing credentials are the
    user's to give; the rest is not ours to hide."""
    try:
        yield
    except (ConnectionError, TimeoutError) as exc:
        raise TransientError(f"store unreachable while accessing {path}: {exc}") from None
    except Exception as exc:
        # botocore's errors, named rather than imported: only S3 stores need botocore.
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"NoCredentialsError", "PartialCredentialsError"}:
            raise BadInputError(NO_S3_CREDENTIALS) from None
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}:
            raise TransientError(f"store unreachable while accessing {path}: {exc}") from None
        raise


NO_S3_CREDENTIALS = (
    "no credentials for the S3 store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE) in the environment, or give --store-option key=... --store-option "
    "secret=... (anon=true for a public bucket), or keep them in a BackstopStore block and "
    "give --store block:NAME"
)
