"""ZooKeeper snapshot files and physical backups, against real 3.8 and 3.9 servers."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest
import zstandard
from conftest import server_unavailable
from servers.zookeeper import ZooKeeperServer, classpath
from zk_trees import authenticated_client, build_tree, read_tree

from backstop.drivers.errors import BadInputError, PermanentError
from backstop.drivers.zookeeper import snapshot
from backstop.flows import backup as backup_flow
from backstop.flows import restore as restore_flow
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.tasks.secrets import hide_secrets


# The tests' URLs carry the digest password: moved out of the flow parameters first.
def backup(request: BackupRequest):
    return backup_flow.backup(request=hide_secrets(request))


def restore(request: RestoreRequest):
    return restore_flow.restore(request=hide_secrets(request))


pytestmark = pytest.mark.integration


def start_server(version: str, folder: Path, *options: str, admin: bool = True) -> ZooKeeperServer:
    if classpath(version) is None:
        server_unavailable(f"ZooKeeper {version} is not installed (run tests/servers/install.sh)")
    return ZooKeeperServer(version, folder, admin=admin, java_options=list(options)).start()


def snapshot_files(data_dir: Path) -> list[tuple[int, Path]]:
    return sorted(
        (int(p.name.split(".")[1], 16), p) for p in (data_dir / "version-2").glob("snapshot.*")
    )


def completed_snapshot(client, data_dir: Path, after_zxid: int, snap_count: int) -> Path:
    """A snapshot the server has finished writing, taken after `after_zxid`.

    ZooKeeper snapshots in the background after snapCount/2 to snapCount transactions, and
    skips a trigger while a snapshot is still being written. Waiting for a time ran out in
    CI under load twice; instead, keep writing until two snapshots past the mark exist. The
    server writes one snapshot at a time, so the older of the two is complete.
    """
    for batch in range(40):
        done = [path for zxid, path in snapshot_files(data_dir) if zxid >= after_zxid]
        if len(done) >= 2:
            return done[-2]
        for i in range(snap_count // 2):
            client.set("/data", f"{batch}.{i}".encode())
        time.sleep(0.2)  # let the snapshot thread start before counting files
    raise AssertionError(f"no two snapshots after zxid {after_zxid:#x} in {40 * snap_count // 2} writes")


def formatter_paths(version: str, path: Path) -> tuple[int, set[str]]:
    """Node count and paths as ZooKeeper's own SnapshotFormatter prints them."""
    out = subprocess.run(
        [
            "java",
            "-cp",
            classpath(version),
            "org.apache.zookeeper.server.SnapshotFormatter",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    count = int(out.split("count=")[1].split(")")[0])
    paths = {line for line in out.splitlines() if line.startswith("/")}
    return count, paths


@pytest.mark.parametrize("version", ["3.8", "3.9"])
@pytest.mark.parametrize("compression", ["none", "gz", "snappy"])
def test_validator_agrees_with_snapshot_formatter(version, compression, tmp_path):
    options = ["-Dzookeeper.snapCount=1000"]
    if compression != "none":
        options.append(f"-Dzookeeper.snapshot.compression.method={compression}")
    server = start_server(version, tmp_path / "zk", *options, admin=False)
    try:
        client = authenticated_client(server.hosts)
        client.ensure_path("/data")
        build_tree(client, "/data", nodes=3000)
        zxid = client.last_zxid
        path = completed_snapshot(client, server.data_dir, zxid, snap_count=1000)
        client.stop()
    finally:
        server.stop()
    assert compression == "none" or path.name.endswith("." + compression)
    seen: set[str] = set()
    with path.open("rb") as fh:
        summary = snapshot.validate(fh, on_node=lambda p, data: seen.add(p))
    count, paths = formatter_paths(version, path)
    # DataTree.getNodeCount(), which the formatter prints, counts the root twice (it is
    # mapped under both "" and "/"); the paths it prints are the real list.
    assert summary.nodes == count - 1 == len(paths)
    assert seen == paths
    assert summary.compression == {"none": "none", "gz": "gzip", "snappy": "snappy"}[compression]
    assert summary.max_zxid >= zxid


@pytest.mark.parametrize("version", ["3.8", "3.9"])
def test_corrupted_and_truncated_snapshots_are_rejected_with_offset(version, tmp_path):
    # A server of its own that snapshots early: a shared one has written a snapshot only
    # if earlier tests on the same worker wrote enough (found by CI under pytest-xdist).
    server = start_server(version, tmp_path / "zk", "-Dzookeeper.snapCount=100", admin=False)
    try:
        client = authenticated_client(server.hosts)
        client.ensure_path("/data")
        build_tree(client, "/data", nodes=300)
        zxid = client.last_zxid
        path = completed_snapshot(client, server.data_dir, zxid // 2, snap_count=100)
        client.stop()
        client.close()
        data = path.read_bytes()
    finally:
        server.stop()
    summary = snapshot.validate(io.BytesIO(data))
    assert summary.nodes >= 1
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(snapshot.SnapshotError) as info:
        snapshot.validate(io.BytesIO(bytes(flipped)))
    assert info.value.offset >= 0 and "byte" in str(info.value)
    with pytest.raises(snapshot.SnapshotError, match=r"truncated|ends inside"):
        snapshot.validate(io.BytesIO(data[: len(data) - 7]))
    with pytest.raises(snapshot.SnapshotError, match="bad magic"):
        snapshot.validate(io.BytesIO(b"ZKSX" + data[4:]))


@pytest.mark.parametrize("zk_server", ["3.9"], indirect=True)
def test_admin_snapshot_backup_and_physical_restore_on_39(
    zk_client, zk_server, zk_root, local_store, tmp_path
):
    build_tree(zk_client, zk_root, nodes=2000)
    source = f"{zk_server.url()}?admin_port={zk_server.admin_port}"
    outcome = backup(
        request=BackupRequest(
            technology="zookeeper",
            sources=[source],
            store=local_store,
            options={"mode": "admin-snapshot"},
        )
    )
    manifest = local_store.open().resolve("zookeeper")
    [unit] = manifest.units
    assert unit.meta["mode"] == "admin-snapshot" and unit.meta["nodes"] == outcome.records
    assert manifest.consistency.point["zxid"] > 0
    assert manifest.consistency.warnings  # a live snapshot is fuzzy, and says so

    fresh = start_server("3.9", tmp_path / "fresh")
    try:
        target = f"{fresh.url()}?admin_port={fresh.admin_port}"
        restored = restore(
            request=RestoreRequest(technology="zookeeper", store=local_store, targets=[target])
        )
        assert restored.verified
        client = authenticated_client(fresh.hosts)
        try:
            assert read_tree(client, zk_root) == read_tree(zk_client, zk_root)
        finally:
            client.stop()
    finally:
        fresh.stop()


@pytest.mark.parametrize("zk_server", ["3.8"], indirect=True)
def test_admin_snapshot_on_38_is_a_clear_error(zk_server, local_store):
    source = f"{zk_server.url()}?admin_port={zk_server.admin_port}"
    with pytest.raises(PermanentError, match="no 'snapshot' command"):
        backup(
            request=BackupRequest(
                technology="zookeeper",
                sources=[source],
                store=local_store,
                options={"mode": "admin-snapshot"},
            )
        )
    assert local_store.open().folders() == []


def test_datadir_backup_restores_by_the_documented_steps(
    zk_client, zk_server, zk_root, local_store, tmp_path
):
    build_tree(zk_client, zk_root, nodes=500)
    expected = read_tree(zk_client, zk_root)
    backup(
        request=BackupRequest(
            technology="zookeeper",
            sources=[zk_server.url()],
            store=local_store,
            options={"mode": "datadir", "data_dir": str(zk_server.data_dir)},
        )
    )
    store = local_store.open()
    manifest = store.resolve("zookeeper")
    names = [f.name for f in manifest.files]
    assert any(n.startswith("version-2/snapshot.") for n in names)
    assert any(n.startswith("version-2/log.") for n in names)
    with pytest.raises(BadInputError, match="restored by hand"):
        restore(
            request=RestoreRequest(
                technology="zookeeper", store=local_store, targets=[zk_server.url()]
            )
        )
    # The documented steps: decompress the files into an empty dataDir and start a server.
    folder = tmp_path / "by-hand"
    (folder / "data" / "version-2").mkdir(parents=True)
    for file in manifest.files:
        raw = store.fs.cat_file(store.file_path("zookeeper", manifest.backup_id, file.name))
        target = folder / "data" / file.name.removesuffix(".zst")
        target.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(raw))
    server = ZooKeeperServer(zk_server.version, folder).start()
    try:
        client = authenticated_client(server.hosts)
        try:
            assert read_tree(client, zk_root) == expected
        finally:
            client.stop()
    finally:
        server.stop()
