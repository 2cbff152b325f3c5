"""The export flow: a backup's files, decompressed and checked, into a local folder.

For Docstore this is mongodump's layout (DIR/db/coll.bson, DIR/db/coll.metadata.json),
so the standard `mongorestore --dir DIR` can load a backstop backup; for a ZooKeeper
dataDir backup it is the version-2 folder a server starts from.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.flows.params import source_filter
from backstop.flows.runtime import Stopwatch
from backstop.tasks.logs import install_log_masking
from backstop.tasks.packaging import SUFFIX, StoreSource
from backstop.tasks.restore import load_manifest
from backstop.tasks.secrets import refuse_literal_secrets
from backstop.tasks.store import StoreSpec

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


@flow(name="backstop-export")
def export(request: ExportRequest) -> ExportOutcome:
    refuse_literal_secrets(request)
    install_log_masking()
    clock = Stopwatch()
    folder = Path(request.dir)
    if folder.exists() and any(folder.iterdir()):
        raise BadInputError(f"export folder {folder} is not empty")
    manifest = load_manifest(request.store, request.technology, request.backup, request.sources)
    source = StoreSource(request.store.open(), manifest.technology, manifest.backup_id)
    written = 0
    for file in manifest.files:
        destination = folder / file.name.removesuffix(SUFFIX)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with source.open(file) as stream, destination.open("wb") as out:
                while block := stream.read(_CHUNK):
                    out.write(block)
                    written += len(block)
        except IntegrityError:
            destination.unlink(missing_ok=True)  # never leave a damaged file looking exported
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
