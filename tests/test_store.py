"""The artifact store and packaging on file://, plain paths and memory://."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from test_manifest import sample_manifest

from backstop.drivers.contract import StoredUnit
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks.manifest import new_backup_id
from backstop.tasks.packaging import StoreSink, StoreSource, check_file
from backstop.tasks.store import ArtifactStore

CHUNKS = [bytes([i]) * 100_000 + b"record-%d" % i for i in range(40)]


@pytest.fixture(params=["file", "path", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return ArtifactStore((tmp_path / "s").as_uri())
    if request.param == "path":
        return ArtifactStore(str(tmp_path / "plain"))
    return ArtifactStore(f"memory://backstop-{uuid.uuid4().hex}")


def write_backup(store: ArtifactStore, backup_id: str):
    sink = StoreSink(store, "schemaless", backup_id)
    with sink.open("shard-000/data", format="test/1", meta={"k": 1}) as out:
        for chunk in CHUNKS:
            out.write(chunk, records=1)
    return sink.files


def test_files_stream_through_zstd_and_read_back_identical(store: ArtifactStore):
    backup_id = new_backup_id()
    [file] = write_backup(store, backup_id)
    raw = b"".join(CHUNKS)
    assert file.name == "shard-000/data.zst"
    assert file.records == 40 and file.raw_bytes == len(raw)
    assert file.bytes < len(raw) / 10  # compressed
    assert file.compression == "zstd" and len(file.sha256) == 64
    source = StoreSource(store, "schemaless", backup_id)
    with source.open(file) as stream:
        back = b""
        while block := stream.read(65536):
            back += block
    assert back == raw


def test_list_shows_only_backups_with_a_manifest(store: ArtifactStore):
    complete = sample_manifest()
    files = write_backup(store, complete.backup_id)
    complete.units = [StoredUnit(name="shard-000", source="x", records=40, files=files)]
    store.write_manifest(complete)
    incomplete_id = new_backup_id()
    write_backup(store, incomplete_id)  # files but no manifest: a crashed backup

    folders = {f.backup_id: f.complete for f in store.folders()}
    assert folders == {complete.backup_id: True, incomplete_id: False}
    assert [m.backup_id for m in store.list_backups()] == [complete.backup_id]
    assert store.resolve("schemaless", "latest").backup_id == complete.backup_id
    with pytest.raises(BadInputError, match="no complete backup"):
        store.resolve("schemaless", incomplete_id)
    store.delete_backup("schemaless", incomplete_id)
    assert [f.backup_id for f in store.folders()] == [complete.backup_id]


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_checksum_verification_names_the_damaged_file(store: ArtifactStore, damage: str):
    backup_id = new_backup_id()
    [file] = write_backup(store, backup_id)
    path = store.file_path("schemaless", backup_id, file.name)
    data = bytearray(store.fs.cat_file(path))
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-5:]
    else:
        data += b"\0"
    store.fs.pipe_file(path, bytes(data))
    with pytest.raises(IntegrityError) as info:
        check_file(StoreSource(store, "schemaless", backup_id), file)
    assert f"schemaless/{backup_id}/shard-000/data.zst" in str(info.value)


def test_missing_file_is_reported(store: ArtifactStore):
    backup_id = new_backup_id()
    [file] = write_backup(store, backup_id)
    store.fs.rm(store.file_path("schemaless", backup_id, file.name))
    with pytest.raises(IntegrityError, match="missing"):
        check_file(StoreSource(store, "schemaless", backup_id), file)


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "nul\x00byte", "a//b"])
def test_unsafe_file_names_are_refused(store: ArtifactStore, name: str):
    with pytest.raises(IntegrityError, match="unsafe"):
        store.file_path("schemaless", new_backup_id(), name)


def test_bad_ids_and_technologies_are_refused(store: ArtifactStore):
    with pytest.raises(BadInputError):
        store.resolve("schemaless", "../../etc")
    with pytest.raises(BadInputError):
        store.backup_dir("../x", new_backup_id())


def test_manifest_written_atomically_on_local_disk(tmp_path: Path):
    store = ArtifactStore(str(tmp_path))
    manifest = sample_manifest()
    path = Path(store.write_manifest(manifest))
    assert path.name == "manifest.json"
    assert not list(path.parent.glob("*.tmp"))
    assert store.read_manifest("schemaless", manifest.backup_id) == manifest


def test_read_back_catches_content_that_decodes_wrong_even_with_matching_sha(
    store: ArtifactStore,
):
    """The backup's read-back trusts zstd's frame checksum for decoding: prove it bites.

    Random data is stored in raw zstd blocks, so flipping a payload byte still decodes;
    the manifest's stored SHA-256 is rewritten to match, so only the frame checksum
    (or, on restore, the raw SHA-256) can notice.
    """
    import hashlib
    import random

    backup_id = new_backup_id()
    sink = StoreSink(store, "schemaless", backup_id)
    with sink.open("shard-000/data", format="test/1") as out:
        out.write(random.Random(3).randbytes(300_000), 1)
    [file] = sink.files
    path = store.file_path("schemaless", backup_id, file.name)
    data = bytearray(store.fs.cat_file(path))
    data[len(data) // 2] ^= 0x01
    store.fs.pipe_file(path, bytes(data))
    forged = file.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()})
    source = StoreSource(store, "schemaless", backup_id)
    for rehash_raw in (False, True):
        with pytest.raises(IntegrityError, match=r"decompress|differs"):
            check_file(source, forged, rehash_raw=rehash_raw)


class _FailingFile:
    def __init__(self, after: int) -> None:
        self.left = after

    def write(self, data: bytes) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return len(data)


def test_a_store_write_failure_reaches_the_driver_and_stops_the_pipeline():
    import random
    import threading

    from backstop.tasks.packaging import PackagedWriter

    before = threading.active_count()
    writer = PackagedWriter(_FailingFile(after=200_000), 3, None)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(40):  # 4 MB that do not compress: well past the 200 KB limit
            writer.write(random.randbytes(100_000), 1)
        writer.seal()
    writer.abort()
    assert threading.active_count() == before


def test_a_driver_failure_leaves_no_file_and_no_thread(store: ArtifactStore):
    import threading

    before = threading.active_count()
    sink = StoreSink(store, "schemaless", new_backup_id())
    with (
        pytest.raises(RuntimeError, match="source vanished"),
        sink.open("shard-000/data", format="test/1") as out,
    ):
        out.write(CHUNKS[0], 1)
        raise RuntimeError("source vanished")
    assert sink.files == []
    assert threading.active_count() == before
