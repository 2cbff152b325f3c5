"""The artifact store: backups as folders in any fsspec filesystem.

    <store>/<technology>/<backup_id>/manifest.json   written last
    <store>/<technology>/<backup_id>/<data files>

A folder without a manifest is an incomplete backup: invisible to list and restore.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, Field, ValidationError

from backstop.drivers.errors import BadInputError, IntegrityError, QualityError, TransientError
from backstop.drivers.redact import redact_url
from backstop.tasks.manifest import BACKUP_ID, MANIFEST_NAME, TECHNOLOGY_NAME, Manifest


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

    def open(self) -> ArtifactStore:
        from backstop.tasks.secrets import resolve_options, resolve_url

        return ArtifactStore(resolve_url(self.url), resolve_options(self.options))

    def display(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class BackupFolder:
    technology: str
    backup_id: str
    complete: bool


class ArtifactStore:
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        if not url:
            raise BadInputError("--store is empty")
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ValueError, ImportError, TypeError) as exc:
            raise BadInputError(f"store {redact_url(url)!r} cannot be opened: {exc}") from None
        self.url = url
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({redact_url(self.url)!r})"

    # -- paths --------------------------------------------------------------------
    def backup_dir(self, technology: str, backup_id: str) -> str:
        _check_name(technology, TECHNOLOGY_NAME, "technology")
        _check_name(backup_id, BACKUP_ID, "backup id")
        return posixpath.join(self.root, technology, backup_id)

    def file_path(self, technology: str, backup_id: str, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in name:
            raise IntegrityError(f"unsafe file name in backup: {name!r}")
        return posixpath.join(self.backup_dir(technology, backup_id), name)

    # -- data files ---------------------------------------------------------------
    @contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with _store_errors(path), self.fs.open(path, "wb") as fh:
            yield fh

    @contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        try:
            fh = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise IntegrityError(f"{self.relative(path)}: file is missing from the store") from None
        with _store_errors(path), fh:
            yield fh

    def size(self, path: str) -> int | None:
        try:
            return self.fs.size(path)
        except FileNotFoundError:
            return None

    # -- manifests ----------------------------------------------------------------
    def write_manifest(self, manifest: Manifest) -> str:
        path = posixpath.join(
            self.backup_dir(manifest.technology, manifest.backup_id), MANIFEST_NAME
        )
        data = manifest.model_dump_json(indent=2).encode()
        with _store_errors(path):
            if self.is_local:
                # A rename is atomic on a local disk: the manifest is there whole or not at all.
                tmp = path + ".tmp"
                self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
                with self.fs.open(tmp, "wb") as fh:
                    fh.write(data)
                self.fs.mv(tmp, path)
            else:
                # One PUT of a small object is atomic on object stores.
                self.fs.pipe_file(path, data)
        return path

    def read_manifest(self, technology: str, backup_id: str) -> Manifest:
        path = posixpath.join(self.backup_dir(technology, backup_id), MANIFEST_NAME)
        try:
            with _store_errors(path):
                raw = self.fs.cat_file(path)
        except FileNotFoundError:
            raise BadInputError(
                f"no complete backup {technology}/{backup_id} in {redact_url(self.url)}"
            ) from None
        try:
            return Manifest.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise IntegrityError(
                f"{technology}/{backup_id}/{MANIFEST_NAME} is unreadable: {exc}"
            ) from None

    def folders(self, technology: str | None = None) -> list[BackupFolder]:
        """Every backup folder, complete or not, oldest first."""
        techs = [technology] if technology else self._children(self.root)
        found = []
        for tech in techs:
            if not TECHNOLOGY_NAME.match(tech):
                continue
            for backup_id in self._children(posixpath.join(self.root, tech)):
                if BACKUP_ID.match(backup_id):
                    manifest = posixpath.join(self.root, tech, backup_id, MANIFEST_NAME)
                    found.append(BackupFolder(tech, backup_id, self.fs.exists(manifest)))
        return sorted(found, key=lambda f: (f.backup_id, f.technology))

    def list_backups(self, technology: str | None = None) -> list[Manifest]:
        """Complete backups (those with a manifest), oldest first."""
        return [
            self.read_manifest(f.technology, f.backup_id)
            for f in self.folders(technology)
            if f.complete
        ]

    def newest_parent(self, technology: str, sources: list[str]) -> Manifest | None:
        """The newest complete, validated backup of exactly these (redacted) sources: what
        an incremental builds on."""
        for folder in reversed([f for f in self.folders(technology) if f.complete]):
            manifest = self.read_manifest(technology, folder.backup_id)
            # A safety or drill backup may be of the same sources, but holds a target's
            # old content or a drill's copy: never what the next incremental continues.
            if (
                manifest.sources == sources
                and manifest.quality.status == "passed"
                and manifest.ordinary
            ):
                return manifest
        return None

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
        candidates = self._ordinary_backups(technology)
        if validated_only:
            candidates = _validated(candidates, technology)
        if sources:
            return _newest_of_sources(candidates, technology, sources, identify, self.url)
        newest: dict[tuple[str, ...], Manifest] = {}
        for manifest in candidates:  # oldest first: the last one seen is the newest
            newest[manifest.source_set] = manifest
        if not newest:
            raise BadInputError(
                f"no complete {technology} backup in {redact_url(self.url)} to take as "
                "latest (safety and drill backups are restored only by --backup ID)"
            )
        if len(newest) > 1:
            raise BadInputError(
                f"{redact_url(self.url)} holds {technology} backups of {len(newest)} different "
                "sources, so 'latest' could restore the wrong one; choose with --source URL "
                "(repeatable) or --backup ID:\n  "
                + "\n  ".join(
                    f"{', '.join(m.sources)} -> {m.backup_id}"
                    for m in sorted(newest.values(), key=lambda m: m.backup_id, reverse=True)
                )
            )
        return next(iter(newest.values()))

    def _ordinary_backups(self, technology: str) -> list[Manifest]:
        """Complete ordinary backups, oldest first. A manifest that cannot be read (or
        was pruned meanwhile) is no candidate: it could not be restored."""
        found = []
        for folder in self.folders(technology):
            if not folder.complete:
                continue
            try:
                manifest = self.read_manifest(technology, folder.backup_id)
            except (IntegrityError, BadInputError):
                continue
            if manifest.ordinary:
                found.append(manifest)
        return found


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

    # -- helpers ------------------------------------------------------------------
    def _children(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without `refresh`
            entries = self.fs.ls(path, detail=True)
        return sorted(
            posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"
        )

    def relative(self, path: str) -> str:
        """A store path as shown to people: technology/backup_id/file."""
        return path[len(self.root) :].lstrip("/")


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


def _newest_of_sources(
    candidates: list[Manifest],
    technology: str,
    sources: Sequence[str],
    identify: Callable[[], list[str]] | None,
    store_url: str,
) -> Manifest:
    """The newest candidate backed up from these sources: by their URLs as the manifest
    shows them, else by identity (the same place spelled another way)."""
    wanted = set(sources)
    matching = [m for m in candidates if set(m.sources) == wanted]
    if not matching and identify is not None:
        ids = set(identify())
        matching = [m for m in candidates if m.source_ids and set(m.source_ids) == ids]
    if not matching:
        known = sorted({", ".join(m.sources) for m in candidates})
        raise BadInputError(
            f"no complete, validated {technology} backup of {', '.join(sorted(wanted))} in "
            f"{redact_url(store_url)}"
            + (f"; its backups are of: {'; '.join(known)}" if known else "")
        )
    return matching[-1]


def _check_name(value: str, pattern, what: str) -> None:
    if not pattern.match(value):
        raise BadInputError(f"invalid {what}: {value!r}")


@contextmanager
def _store_errors(path: str) -> Iterator[None]:
    """Network trouble talking to the store is transient; the rest is not ours to hide."""
    try:
        yield
    except (ConnectionError, TimeoutError) as exc:
        raise TransientError(f"store unreachable while accessing {path}: {exc}") from None
