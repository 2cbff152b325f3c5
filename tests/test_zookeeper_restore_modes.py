"""ZooKeeper restore modes, selections, system namespace, null data, retries and rollback,
against real ZooKeeper 3.8 and 3.9 servers."""

from __future__ import annotations

import pytest
from faults import fail_once_after
from kazoo import exceptions as kz
from kazoo.security import OPEN_ACL_UNSAFE
from zk_trees import CUSTOM_ACL, build_tree, read_tree, zk_backup, zk_restore

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BadInputError, PermanentError
from backstop.drivers.zookeeper import driver as zk_driver
from backstop.drivers.zookeeper.znodes import node_hash

pytestmark = pytest.mark.integration


def _small_tree(zk, root: str) -> None:
    for path, data in [
        ("/app/config/db", b"dsn"),
        ("/app/config/cache", b""),
        ("/other/y", b"why"),
    ]:
        zk.ensure_path(root + path)
        zk.set(root + path, data)


def test_merge_never_changes_a_node_the_target_holds(zk_server, zk_client, zk_root, local_store):
    _small_tree(zk_client, zk_root)
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-merge"
    zk_client.create(f"{target}/app/config/db", b"theirs", acl=CUSTOM_ACL, makepath=True)
    zk_client.set_acls(target, CUSTOM_ACL)  # the target's root keeps its own ACL too
    before = read_tree(zk_client, target)

    merged = zk_restore(local_store, zk_server.url(target), mode=RestoreMode.MERGE)

    assert merged.verified  # the target's own /app/config/db differs, and is kept
    after = read_tree(zk_client, target)
    for path in before:
        assert after[path] == before[path], path
    source = read_tree(zk_client, zk_root)
    for path in set(source) - set(before):
        assert after[path] == source[path], path


def test_overwrite_with_include_replaces_only_the_selected_subtree(
    zk_server, zk_client, zk_root, local_store
):
    _small_tree(zk_client, zk_root)
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-ow"
    zk_client.create(f"{target}/app/config/stale", b"old", makepath=True)
    zk_client.create(f"{target}/app/other", b"keep", makepath=True)
    zk_client.create(f"{target}/keep/z", b"zz", makepath=True)
    outside = {
        p: v for p, v in read_tree(zk_client, target).items() if not p.startswith("/app/config")
    }

    zk_restore(
        local_store, zk_server.url(target), mode=RestoreMode.OVERWRITE, include=["/app/config"]
    )

    after = read_tree(zk_client, target)
    assert {p: v for p, v in after.items() if not p.startswith("/app/config")} == outside
    source = read_tree(zk_client, zk_root)
    assert {p: v for p, v in after.items() if p.startswith("/app/config")} == {
        p: v for p, v in source.items() if p.startswith("/app/config")
    }


def test_include_that_matches_nothing_is_bad_input(zk_server, zk_client, zk_root, local_store):
    _small_tree(zk_client, zk_root)
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-none"
    zk_client.ensure_path(target)
    with pytest.raises(BadInputError, match="matches nothing"):
        zk_restore(local_store, zk_server.url(target), include=["/no/such"])
    assert zk_client.get_children(target) == []


def test_a_backup_holding_zookeeper_is_not_written_into_the_system_namespace(
    zk_server, zk_client, zk_root, local_store
):
    # A chroot may hold a child named "zookeeper"; restored at the server's root it
    # would land in ZooKeeper's own namespace.
    zk_client.create(f"{zk_root}/zookeeper/planted", b"x", makepath=True)
    zk_backup(zk_server.url(zk_root), local_store)
    with pytest.raises(BadInputError, match="system namespace"):
        zk_restore(local_store, zk_server.url(""), mode=RestoreMode.MERGE)
    assert zk_client.exists("/zookeeper/planted") is None


def test_null_data_restores_as_null_and_digests_tell_null_from_empty(
    zk_server, zk_client, zk_root, local_store
):
    assert node_hash("/a", None, []) != node_hash("/a", b"", [])
    zk_client.create(f"{zk_root}/null", None)
    zk_client.create(f"{zk_root}/empty", b"")
    zk_backup(zk_server.url(zk_root), local_store)
    for mode in (RestoreMode.FAIL_IF_EXISTS, RestoreMode.MERGE):
        target = f"{zk_root}-{mode.value}"
        zk_restore(local_store, zk_server.url(target), mode=mode)
        assert zk_client.get(f"{target}/null")[0] is None
        assert zk_client.get(f"{target}/empty")[0] == b""


@pytest.mark.parametrize("mode", list(RestoreMode))
def test_a_transient_fault_after_the_first_batch_is_retried_to_the_exact_tree(
    zk_server, zk_client, zk_root, local_store, monkeypatch, mode
):
    build_tree(zk_client, zk_root, nodes=400)
    zk_client.create(f"{zk_root}/null", None)
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-retry"
    zk_client.ensure_path(target)
    if mode is not RestoreMode.FAIL_IF_EXISTS:
        zk_client.create(f"{target}/n00000", b"the target's", acl=CUSTOM_ACL)
    held = read_tree(zk_client, target)
    # Small batches, and the connection lost right after the first one was committed.
    monkeypatch.setattr(zk_driver, "BATCH_OPS", 50)
    monkeypatch.setattr(zk_driver, "WINDOW", 50)
    fired = fail_once_after(
        monkeypatch,
        zk_driver._Loader,
        "_drain" if mode is RestoreMode.MERGE else "_flush",
        kz.ConnectionLoss,
        when=lambda loader: loader.created > 0,
    )

    restored = zk_restore(local_store, zk_server.url(target), mode=mode)

    assert fired and restored.verified
    expected = read_tree(zk_client, zk_root)
    if mode is RestoreMode.MERGE:
        expected = {**expected, "/n00000": held["/n00000"]}  # merge keeps the target's node
    assert read_tree(zk_client, target) == expected


def test_a_failed_overwrite_removes_the_subtrees_it_created(
    zk_server, zk_client, zk_root, local_store, monkeypatch
):
    _small_tree(zk_client, zk_root)  # the backup holds /app and /other
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-rb"
    zk_client.create(f"{target}/app/mine", b"as it was", acl=CUSTOM_ACL, makepath=True)
    before = read_tree(zk_client, target)
    monkeypatch.setattr(zk_driver, "BATCH_OPS", 2)
    fail_once_after(
        monkeypatch,
        zk_driver._Loader,
        "_flush",
        lambda: PermanentError("injected failure after /other was created"),
        when=lambda loader: "/other" in loader._present,
    )
    with pytest.raises(PermanentError, match="rolled back"):
        zk_restore(local_store, zk_server.url(target), mode=RestoreMode.OVERWRITE)
    assert read_tree(zk_client, target) == before
    assert zk_client.exists(f"{target}/other") is None


def test_a_failed_overwrite_into_an_empty_target_leaves_it_empty(
    zk_server, zk_client, zk_root, local_store, monkeypatch
):
    _small_tree(zk_client, zk_root)
    zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-rb-empty"
    zk_client.create(target, b"", acl=OPEN_ACL_UNSAFE)
    fail_once_after(
        monkeypatch,
        zk_driver._Loader,
        "finish",
        lambda: PermanentError("injected failure at the end of the load"),
    )
    with pytest.raises(PermanentError, match="rolled back"):
        zk_restore(local_store, zk_server.url(target), mode=RestoreMode.OVERWRITE)
    assert zk_client.get_children(target) == []
