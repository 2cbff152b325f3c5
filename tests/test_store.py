"""The artifact store and packaging on file://, plain paths and memory://."""

from __future__ import annotations

import os
import posixpath
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_manifest import sample_manifest

from backstop.drivers.contract import StoredUnit
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks.leases import STALE_S, Lease, fresh_leases
from backstop.tasks.manifest import new_backup_id
from backstop.tasks.packaging import StoreSink, StoreSource, check_file
from backstop.tasks.store import ArtifactStore, check_store_url

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


@pytest.mark.parametrize(
    "name",
    ["../escape", "/abs", "a/../../b", "nul\x00byte", "a//b", "", ".", "a/./b", "a\\b", "b/",
     "x" * 256, "a/" * 600 + "b", "\ud800"],
)  # fmt: skip
def test_unsafe_file_names_are_refused(store: ArtifactStore, name: str):
    with pytest.raises(IntegrityError, match="unsafe"):
        store.file_path("schemaless", new_backup_id(), name)


def test_bad_ids_and_technologies_are_refused(store: ArtifactStore):
    with pytest.raises(BadInputError):
        store.resolve("schemaless", "../../etc")
    with pytest.raises(BadInputError):
        store.backup_dir("../x", new_backup_id())


def write_raw_manifest(store: ArtifactStore, backup_id: str, data: bytes) -> None:
    path = posixpath.join(store.backup_dir("schemaless", backup_id), "manifest.json")
    store.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    store.fs.pipe_file(path, data)


@pytest.mark.parametrize("name", ["../../outside.zst", "/etc/passwd.zst", "a\\b.zst"])
def test_a_manifest_naming_an_unsafe_file_is_refused_when_read(store: ArtifactStore, name: str):
    manifest = sample_manifest()
    manifest.units[0].files[0].name = name
    store.write_manifest(manifest)
    with pytest.raises(IntegrityError, match="unsafe file name"):
        store.read_manifest("schemaless", manifest.backup_id)


def test_a_manifest_moved_or_edited_into_another_folder_is_an_integrity_failure(
    store: ArtifactStore,
):
    original = sample_manifest()
    store.write_manifest(original)
    data = original.model_dump_json().encode()
    other_id = new_backup_id()
    write_raw_manifest(store, other_id, data)  # a copy: its files are the original's
    with pytest.raises(IntegrityError, match="moved or altered"):
        store.read_manifest("schemaless", other_id)
    zookeeper = original.model_copy(update={"technology": "zookeeper"})
    write_raw_manifest(store, original.backup_id, zookeeper.model_dump_json().encode())
    with pytest.raises(IntegrityError, match="moved or altered"):
        store.read_manifest("schemaless", original.backup_id)


@pytest.mark.parametrize("damage", [b"{not json", b"[" * 100_000, b"\xff\xfe", b"{}"])
def test_scan_names_an_unreadable_manifest_and_reads_the_others(
    store: ArtifactStore, damage: bytes
):
    good = sample_manifest()
    store.write_manifest(good)
    bad_id = new_backup_id()
    write_raw_manifest(store, bad_id, damage)
    scan = store.scan()
    assert [m.backup_id for m in scan.manifests] == [good.backup_id]
    [(folder, problem)] = scan.unreadable.items()
    assert folder.backup_id == bad_id and "unreadable" in problem and bad_id in problem


def test_local_store_files_are_private_whatever_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        store = ArtifactStore(str(tmp_path / "new" / "store"))
        manifest = sample_manifest()
        manifest.units[0].files = write_backup(store, manifest.backup_id)
        store.write_manifest(manifest)
    finally:
        os.umask(old)
    made = [tmp_path / "new", *sorted((tmp_path / "new").rglob("*"))]
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in made}
    assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {0o600}, modes
    assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {0o700}, modes
    assert len(modes) == 7  # new, store, schemaless, the backup, shard-000, data, manifest


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///", "://x", "file://", "gcs://", "s3://bucket/../other", "a\x00b"]
)
def test_store_urls_that_cannot_be_right_are_bad_input(url: str):
    with pytest.raises(BadInputError, match="store"):
        check_store_url(url)


def test_a_store_folder_that_cannot_be_made_is_bad_input():
    with pytest.raises(BadInputError, match="cannot be created"):
        ArtifactStore("file:///dev/null/store")


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/pre/fix", "/tmp/x", "memory://"])
def test_store_urls_of_every_kind_pass_the_shape_check(url: str):
    check_store_url(url)


def test_a_lease_is_fresh_while_held_and_gone_when_released(store: ArtifactStore):
    backup_id = new_backup_id()
    with Lease(store, "schemaless", backup_id, "backup") as lease:
        [held] = fresh_leases(store, "schemaless", backup_id)
        assert held.kind == "backup" and str(os.getpid()) in held.holder
        assert lease.path.startswith(store.backup_dir("schemaless", backup_id))
    assert fresh_leases(store, "schemaless", backup_id) == []


def test_a_lease_whose_holder_died_goes_stale(tmp_path: Path):
    store = ArtifactStore(str(tmp_path))
    backup_id = new_backup_id()
    lease = Lease(store, "schemaless", backup_id, "backup").acquire()
    lease._stop.set()  # the holder is killed: no heartbeat, no release
    now = datetime.now(UTC)
    assert fresh_leases(store, "schemaless", backup_id, now)
    later = now + timedelta(seconds=STALE_S + 60)
    old = (now - timedelta(seconds=STALE_S + 60)).timestamp()
    os.utime(lease.path, (old, old))  # nothing rewrote it for a long time
    assert fresh_leases(store, "schemaless", backup_id, later) == []


def test_a_lease_on_s3_protects_its_folder(s3_store):
    store = s3_store.open()
    backup_id = new_backup_id()
    with Lease(store, "schemaless", backup_id, "restore"):
        [held] = fresh_leases(store, "schemaless", backup_id)
        assert held.kind == "restore" and held.age_s < STALE_S
    assert fresh_leases(store, "schemaless", backup_id) == []


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
