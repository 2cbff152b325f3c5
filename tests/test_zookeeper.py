"""ZooKeeper through the real flows, against real ZooKeeper 3.8 and 3.9 servers."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from zk_trees import authenticated_client, build_tree, read_tree, zk_backup, zk_restore

from backstop.drivers.errors import BadInputError

pytestmark = pytest.mark.integration


def test_logical_round_trip_into_another_chroot(zk_server, zk_client, zk_root, local_store):
    build_tree(zk_client, zk_root, nodes=10_000)
    source_tree = read_tree(zk_client, zk_root)
    assert len(source_tree) >= 10_000

    outcome = zk_backup(zk_server.url(zk_root), local_store)
    assert outcome.consistency == "snapshot"
    assert outcome.records == len(source_tree)
    manifest = local_store.open().resolve("zookeeper")
    [unit] = manifest.units
    assert unit.meta["skipped_ephemeral"] == 1
    assert unit.meta["server_version"].startswith(zk_server.version)
    assert manifest.consistency.point["zxid"] > 0

    target_root = f"{zk_root}-restored"
    restored = zk_restore(local_store, zk_server.url(target_root))
    assert restored.verified and restored.records == len(source_tree)
    assert read_tree(zk_client, target_root) == source_tree
    assert "/session-lock" not in read_tree(zk_client, target_root)
    assert sorted(zk_client.get_children(f"{target_root}/queue")) == sorted(
        zk_client.get_children(f"{zk_root}/queue")
    )


def test_include_restores_only_the_selected_subtrees(zk_server, zk_client, zk_root, local_store):
    zk_client.ensure_path(f"{zk_root}/app/config/db")
    zk_client.ensure_path(f"{zk_root}/app/cache/x")
    zk_client.ensure_path(f"{zk_root}/other/y")
    zk_client.set(f"{zk_root}/app/config/db", b"dsn")
    outcome = zk_backup(
        zk_server.url(zk_root), local_store, include=["/app/config"], exclude=["/other"]
    )
    assert outcome.records == 3  # the root, /app/config and /app/config/db
    target = f"{zk_root}-inc"
    zk_restore(local_store, zk_server.url(target))
    assert zk_client.get(f"{target}/app/config/db")[0] == b"dsn"
    assert zk_client.exists(f"{target}/app/cache") is None
    assert zk_client.exists(f"{target}/other") is None


@pytest.mark.parametrize("pattern", ["app/config", "/app/[a-z]+", "/a**b", "/x/../y"])
def test_unknown_include_pattern_syntax_is_bad_input(cli, zk_server, zk_root, local_store, pattern):
    result = cli(
        "backup",
        "zookeeper",
        "--source",
        zk_server.url(zk_root),
        "--store",
        local_store.url,
        "--option",
        f"include={pattern}",
        "--json",
    )
    assert result.code == 2, result.stdout
    assert "subtree pattern" in result.json["error"]
    assert local_store.open().folders() == []


def test_server_down_exits_1_after_retries_without_manifest(cli, local_store):
    from conftest import free_port

    result = cli(
        "backup",
        "zookeeper",
        "--source",
        f"zk://127.0.0.1:{free_port()}/x",
        "--store",
        local_store.url,
        "--json",
    )
    assert result.code == 1
    assert "unreachable" in result.json["error"]
    assert local_store.open().folders() == []


def test_writes_during_backup_converge_or_are_reported(zk_server, zk_client, zk_root, local_store):
    build_tree(zk_client, zk_root, nodes=3000)
    stop = threading.Event()

    def writer():
        i = 0
        deadline = time.monotonic() + 1.5
        while not stop.is_set() and time.monotonic() < deadline:
            zk_client.create(f"{zk_root}/live-{i}", str(i).encode())
            zk_client.set(f"{zk_root}/n00000", str(i).encode())
            if i and i % 10 == 0:
                zk_client.delete(f"{zk_root}/live-{i - 5}")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        outcome = zk_backup(zk_server.url(zk_root), local_store)
    finally:
        stop.set()
        thread.join()
    manifest = local_store.open().resolve("zookeeper")
    if outcome.consistency == "none":
        assert manifest.consistency.warnings  # the backup says it could not converge
        return
    # Converged: the copy equals the tree as it stands (the writer has stopped).
    target = f"{zk_root}-w"
    zk_restore(local_store, zk_server.url(target))
    assert read_tree(zk_client, target) == read_tree(zk_client, zk_root)


def test_unit_patterns_and_urls():
    from backstop.drivers.zookeeper.paths import Selection, parse_zk_url

    url = parse_zk_url("zk://u:p%40ss@h1:2181,h2:2182/app/x?admin_port=8081")
    assert (url.hosts, url.chroot, url.username, url.password) == (
        "h1:2181,h2:2182",
        "/app/x",
        "u",
        "p@ss",
    )
    assert url.params == {"admin_port": "8081"}
    for bad in ("zk://", "zk://host/x", "zk://h:99999", "zk://h:1/a/../b", "zk://h:1?x=1"):
        with pytest.raises(BadInputError):
            parse_zk_url(bad)
    sel = Selection(["/svc/*/leader", "/cfg/**/db"], ["/svc/old"])
    assert sel.wants("/svc/a/leader") and sel.wants("/svc/a/leader/child")
    assert not sel.wants("/svc/a/other") and sel.descends("/svc/a")
    assert not sel.descends("/svc/old") and not sel.wants("/svc/old/leader")
    assert sel.wants("/cfg/x/y/db") and sel.descends("/cfg/x/y")
    assert not sel.descends("/elsewhere")


def test_znode_stream_rejects_unsafe_paths_and_truncation():
    import io

    from backstop.drivers.zookeeper.znodes import NODE, Znode, ZnodeFormatError, pack, read

    good = pack(Znode(NODE, "/a", b"x", ((31, "world", "anyone"),), (1,) * 9))
    assert [n.path for n in read(io.BytesIO(good))] == ["/a"]
    for path in ("/a/../b", "/a\x00b", "relative", "/a//b", "/a/"):
        with pytest.raises(ZnodeFormatError, match="unsafe znode path"):
            list(read(io.BytesIO(pack(Znode(NODE, path, b"", (), (0,) * 9)))))
    with pytest.raises(ZnodeFormatError, match="truncated"):
        list(read(io.BytesIO(good[:-3])))


def unique() -> str:
    return uuid.uuid4().hex[:8]


def test_selective_restore_of_one_subtree_through_the_cli(
    cli, zk_server, zk_client, zk_root, local_store
):
    zk_client.ensure_path(f"{zk_root}/svc/a/leader")
    zk_client.ensure_path(f"{zk_root}/svc/b/leader")
    zk_client.ensure_path(f"{zk_root}/cfg/db")
    zk_client.set(f"{zk_root}/svc/a/leader", b"host-a")
    backed = cli(
        "backup",
        "zookeeper",
        "--source",
        zk_server.url(zk_root),
        "--store",
        local_store.url,
        "--exclude",
        "/cfg",
        "--json",
    )
    assert backed.code == 0, backed.stderr
    target = f"{zk_root}-sel"
    restored = cli(
        "restore",
        "zookeeper",
        "--store",
        local_store.url,
        "--target",
        zk_server.url(target),
        "--include",
        "/svc/a",
        "--json",
    )
    assert restored.code == 0, restored.stdout + restored.stderr
    assert zk_client.get(f"{target}/svc/a/leader")[0] == b"host-a"
    assert zk_client.exists(f"{target}/svc/b") is None
    assert zk_client.exists(f"{target}/cfg") is None
    bad = cli(
        "restore",
        "zookeeper",
        "--store",
        local_store.url,
        "--target",
        zk_server.url(f"{target}2"),
        "--include",
        "svc/a",
        "--json",
    )
    assert bad.code == 2 and "subtree pattern" in bad.json["error"]


def test_no_auth_is_a_permanent_error_naming_the_node(
    cli, zk_server, zk_client, zk_root, local_store
):
    from kazoo.security import make_digest_acl

    zk_client.create(
        f"{zk_root}/private", b"secret", acl=[make_digest_acl("someone-else", "pw", all=True)]
    )
    started = time.monotonic()
    result = cli(
        "backup",
        "zookeeper",
        "--source",
        zk_server.url(zk_root),
        "--store",
        local_store.url,
        "--json",
    )
    assert result.code == 1
    assert "not authorized" in result.json["error"] and "/private" in result.json["error"]
    assert time.monotonic() - started < 30  # not retried as if it were transient
    assert local_store.open().folders() == []
    zk_client.delete(f"{zk_root}/private")  # the shared server must stay readable


def test_password_from_a_prefect_secret_block_is_used_and_never_shown(
    cli, zk_server, zk_client, zk_root, local_store
):
    from datetime import UTC, datetime

    from prefect.blocks.system import Secret
    from test_secrets import leaks, stored_by_prefect
    from zk_trees import DIGEST_PASSWORD, DIGEST_USER, build_tree

    build_tree(zk_client, zk_root, nodes=200)  # holds digest ACLs: needs the credentials
    Secret(value=DIGEST_PASSWORD).save("zk-backup-password", overwrite=True)
    url = f"zk://{DIGEST_USER}:${{secret:zk-backup-password}}@{zk_server.hosts}{zk_root}"
    since = datetime.now(UTC)
    result = cli("-v", "backup", "zookeeper", "--source", url, "--store", local_store.url, "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert DIGEST_PASSWORD not in result.stdout + result.stderr
    store = local_store.open()
    [manifest_path] = store.fs.glob(f"{store.root}/zookeeper/*/manifest.json")
    assert DIGEST_PASSWORD not in store.fs.cat_file(manifest_path).decode()
    # Nor in what Prefect keeps (the snapshot task's figure line names its source, the
    # artifacts and events theirs) or in the metrics' labels.
    stored = stored_by_prefect(since)
    assert any("snapshot tree: source=" in text for text in stored)
    measured = cli("metrics", "--store", local_store.url)
    assert measured.code == 0 and "backstop_backup_last_records{" in measured.stdout
    assert not leaks([DIGEST_PASSWORD], [*stored, measured.stdout + measured.stderr])


def test_archive_with_unsafe_path_is_refused_before_touching_the_target(
    zk_server, zk_client, zk_root, local_store
):
    from backstop.drivers.contract import StoredUnit
    from backstop.drivers.errors import PermanentError
    from backstop.drivers.zookeeper.znodes import FORMAT, NODE, Znode, pack
    from backstop.tasks.manifest import new_backup_id
    from backstop.tasks.packaging import StoreSink

    zk_client.ensure_path(f"{zk_root}/ok")
    zk_backup(zk_server.url(zk_root), local_store)
    store = local_store.open()
    manifest = store.resolve("zookeeper")
    # A well-checksummed archive whose content is hostile: a path that climbs out.
    forged_id = new_backup_id()
    sink = StoreSink(store, "zookeeper", forged_id)
    with sink.open("tree.znodes", format=FORMAT) as out:
        out.write(pack(Znode(NODE, "/", b"", ((31, "world", "anyone"),), (0,) * 9)), 1)
        out.write(pack(Znode(NODE, "/a", b"x", ((31, "world", "anyone"),), (0,) * 9)), 1)
        out.write(pack(Znode(NODE, "/a/../../escape", b"x", (), (0,) * 9)), 1)
    [unit] = manifest.units
    forged = manifest.model_copy(
        update={
            "backup_id": forged_id,
            "units": [StoredUnit(**(unit.model_dump() | {"files": sink.files}))],
        }
    )
    store.write_manifest(forged)
    target = f"{zk_root}-forged"
    with pytest.raises(PermanentError, match="unsafe znode path"):
        zk_restore(local_store, zk_server.url(target), backup=forged_id)
    assert zk_client.exists(target) is None


@pytest.fixture
def zk_lone(zk_server, tmp_path):
    """A server of the session's version holding only what this test writes: a backup
    of a whole shared server would take in every earlier test's trees (in CI, 9 minutes)."""
    from servers.zookeeper import ZooKeeperServer

    server = ZooKeeperServer(zk_server.version, tmp_path / "zk-lone").start()
    yield server
    server.stop()


def test_done_when_whole_server_to_another_server_through_the_console_script(
    cli_process, zk_lone, zk_second, tmp_path
):
    zk_client = authenticated_client(zk_lone.hosts)
    zk_client.ensure_path("/app")
    build_tree(zk_client, "/app", nodes=2000)
    store = (tmp_path / "S").as_uri()
    backed = cli_process(
        "backup", "zookeeper", "--source", zk_lone.url(), "--store", store, "--json"
    )
    assert backed.code == 0, backed.stderr
    out = backed.json
    assert out["status"] == "completed" and out["consistency"] in ("snapshot", "converged")
    restored = cli_process(
        "restore", "zookeeper", "--store", store, "--target", zk_second.url("/restored"), "--json"
    )
    assert restored.code == 0, restored.stderr + restored.stdout
    assert restored.json["verified"]

    second = authenticated_client(zk_second.hosts)
    try:
        source = {
            p: v for p, v in read_tree(zk_client, "/").items() if not p.startswith("/zookeeper")
        }
        assert read_tree(second, "/restored") == source
    finally:
        second.stop()
        second.close()
        zk_client.stop()
        zk_client.close()


def test_error_classification():
    from kazoo import exceptions as kz

    from backstop.drivers.errors import ErrorKind
    from backstop.drivers.zookeeper.client import classify

    for exc in (
        kz.ConnectionLoss(),
        kz.SessionExpiredError(),
        kz.OperationTimeoutError(),
        ConnectionError("reset"),
        TimeoutError(),
    ):
        assert classify(exc) is ErrorKind.TRANSIENT, exc
    for exc in (kz.NoAuthError(), kz.AuthFailedError(), kz.InvalidACLError(), ValueError()):
        assert classify(exc) is ErrorKind.PERMANENT, exc
