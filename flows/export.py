"""The export flow: a backup's files, decompressed and checked, into a local folder.

For Docstore this is mongodump's layout (DIR/db/coll.bson, DIR/db/coll.metadata.json),
so the standard `mongorestore --dir DIR` can load a backstop backup; for a ZooKeeper
dataDir backup it is the version-2 folder a server starts from.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from backstop.drivers.contract import StoredFile
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.drivers.files import create_private_file, make_private_dirs
from backstop.flows.params import source_filter
from backstop.flows.runtime import Stopwatch
from backstop.flows.timeouts import flow_timeout
from backstop.tasks.logs import install_log_masking
from backstop.tasks.packaging import SUFFIX, StoreSource, check_decryptable
from backstop.tasks.restore import load_manifest
from backstop.tasks.secrets import refuse_literal_secrets
from backstop.tasks.store import StoreSpec, check_file_name

_CHUNK = 1 << 20


class ExportRequest(BaseModel):
    technology: str
    store: StoreSpec
    backup: str = "latest"
    sources: list[str] = source_filter()
    dir: str


class ExportOutcome(BaseModel):
    backup_id: str
    technology: str
    dir: str
    files: int
    bytes: int
    duration_s: float


@flow(name="backstop-export", timeout_seconds=flow_timeout("export"))
def export(request: ExportRequest) -> ExportOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    clock = Stopwatch()
    folder = Path(request.dir).absolute()
    check_export_folder(folder)
    manifest = load_manifest(request.store, request.technology, request.backup, request.sources)
    # Every destination is decided, and checked to stay inside the folder, before the
    # first byte is written.
    store = request.store.open()
    check_decryptable(store, manifest.technology, [manifest])  # before any file is made
    destinations = [(file, export_destination(folder, file.name)) for file in manifest.files]
    source = StoreSource(store, manifest.technology, manifest.backup_id)
    created = make_private_dirs(folder)
    written = 0
    made: list[Path] = []
    try:
        for file, destination in destinations:
            written += _export_file(source, file, destination, made, created)
    except BaseException:
        _remove_what_this_run_made(made, created)
        raise
    get_run_logger().info("exported %s/%s into %s", manifest.technology, manifest.backup_id, folder)
    return ExportOutcome(
        backup_id=manifest.backup_id,
        technology=manifest.technology,
        dir=str(folder),
        files=len(manifest.files),
        bytes=written,
        duration_s=clock.seconds,
    )


def check_export_folder(folder: Path) -> None:
    """An export goes into a new or empty folder: nothing already there is overwritten,
    mixed with the backup's files, or removed if the export fails."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BadInputError(f"export folder {folder} is not a folder")
    if folder.exists() and any(folder.iterdir()):
        raise BadInputError(
            f"export folder {folder} is not empty; export into a new or empty folder"
        )


def export_destination(folder: Path, name: str) -> Path:
    """Where a stored file lands: its name (checked as every reader checks it) without
    the compression suffix, inside `folder`."""
    relative = check_file_name(name).removesuffix(SUFFIX)
    check_file_name(relative)  # "x/.zst" would leave "x/": no file name at all
    return folder.joinpath(*relative.split("/"))


def _export_file(
    source: StoreSource, file: StoredFile, destination: Path, made: list[Path], created: list[str]
) -> int:
    """Decompress one file into a new 0600 file; a name already there (a duplicate in
    the manifest) is refused, never overwritten."""
    try:
        created += make_private_dirs(destination.parent)
        fd = create_private_file(destination, exclusive=True)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise IntegrityError(
            f"backup names {file.name!r} twice, or as a file and a folder: not exported"
        ) from None
    made.append(destination)
    written = 0
    with source.open(file) as stream, os.fdopen(fd, "wb") as out:
        while block := stream.read(_CHUNK):
            out.write(block)
            written += len(block)
        out.flush()
        os.fsync(out.fileno())
    return written


def _remove_what_this_run_made(files: list[Path], folders: list[str]) -> None:
    """A failed export leaves nothing looking exported: the files and folders this run
    created go, innermost first; nothing else is touched."""
    for path in reversed(files):
        with contextlib.suppress(OSError):
            path.unlink()
    for created in sorted(folders, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(created)  # only if empty: never a folder holding what others put there
