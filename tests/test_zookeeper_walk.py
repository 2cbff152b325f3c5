"""The pipelined ZooKeeper walk (wire.py, walk.py) and the backup's record packing give
exactly what a plain one-request-at-a-time kazoo walk of the same tree reads.

The pipelined walk batches reads in multiReads, keeps many requests in flight on
several sessions, parses ACL replies once per distinct list and packs records without
building a Znode per node: each of those is a place where a node could be dropped,
doubled or mixed up with its neighbour, so the trees are compared node by node
(path, data incl. null vs empty, ACLs, stat) on a real server.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id
from zk_trees import CUSTOM_ACL, DIGEST_PASSWORD, DIGEST_USER

from backstop.drivers.digests import SetDigest
from backstop.drivers.registry import get_driver
from backstop.drivers.zookeeper import walk as walk_module
from backstop.drivers.zookeeper import wire
from backstop.drivers.zookeeper.client import readers
from backstop.drivers.zookeeper.paths import Selection
from backstop.drivers.zookeeper.znodes import (
    DELETED,
    NODE,
    RecordPacker,
    Znode,
    node_hash,
    pack,
    pack_parts,
    read,
)

ODD_NAMES = ["a b", "ünï-çødé", "%41", "x:y=z", "日本", "-", "_.", "..a", "a.."]
WIDE = 300  # children of one node: more than a session's window and chunk in these tests


def reference_walk(hosts: str, root: str) -> dict[str, tuple]:
    """path (relative to root) -> (data, ACLs, persisted stat), read one request at a time."""
    credentials = f"{DIGEST_USER}:{DIGEST_PASSWORD}"  # ADMIN on /acl: its ACL unredacted
    client = KazooClient(hosts=hosts + root, auth_data=[("digest", credentials)])
    client.start(timeout=30)
    try:
        out = {}
        pending = ["/"]
        while pending:
            path = pending.pop()
            data, s = client.get(path)
            acls, _ = client.get_acls(path)
            stat = (s.czxid, s.mzxid, s.ctime, s.mtime, s.version, s.cversion, s.aversion,
                    s.ephemeralOwner, s.pzxid)  # fmt: skip
            out[path] = (data, tuple((a.perms, a.id.scheme, a.id.id) for a in acls), stat)
            pending.extend(f"{path.rstrip('/')}/{c}" for c in client.get_children(path))
        return out
    finally:
        client.stop()
        client.close()


@pytest.fixture
def odd_tree(zk_client, zk_root) -> str:
    """Odd names, null and empty data, a custom ACL, a deep path, a node with more
    children than the window, and an ephemeral node (kept open by zk_client)."""
    c = zk_client
    for i, name in enumerate(ODD_NAMES):
        c.create(f"{zk_root}/{name}", name.encode() * i)
    c.create(f"{zk_root}/null", None)
    c.create(f"{zk_root}/empty", b"")
    c.create(f"{zk_root}/acl", b"secret", acl=CUSTOM_ACL)
    c.create(f"{zk_root}/acl/inside", None, acl=[ACL(31, Id("world", "anyone"))])
    deep = zk_root + "".join(f"/d{i}" for i in range(40))
    c.ensure_path(deep)
    c.set(deep, b"bottom")
    c.create(f"{zk_root}/wide")
    results = [
        c.create_async(f"{zk_root}/wide/w{i:04d}", bytes([i % 256]) * (i % 37), acl=OPEN_ACL_UNSAFE)
        for i in range(WIDE)
    ]
    for r in results:
        r.get()
    c.create(f"{zk_root}/wide/w0007/child", b"c")
    c.create(f"{zk_root}/session-lock", b"mine", ephemeral=True)
    return zk_root


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks, session windows and shared-queue batches far smaller than the tree's
    widest node, so every split and refill of the pipelines is exercised."""
    monkeypatch.setattr(wire, "CHUNK", 7)
    monkeypatch.setattr(walk_module, "BATCH", 11)
    original = wire.ReadSession.__init__

    def small(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.window = 20

    monkeypatch.setattr(wire.ReadSession, "__init__", small)


def pipelined_walk(url: str, sessions: int) -> dict[str, tuple]:
    with readers(url, sessions) as pool:
        fields = walk_module.walk_fields(pool, ["/"], Selection(), skip_system=False)
        out = {}
        for path, data, stat, acls in fields:
            assert path not in out, f"{path} walked twice"
            out[path] = (data, acls, tuple(stat))
        return out


@pytest.mark.parametrize("sessions", [1, 3])
def test_pipelined_walk_reads_the_same_tree_as_one_request_at_a_time(
    zk_server, odd_tree, small_windows, sessions
):
    expected = reference_walk(zk_server.hosts, odd_tree)
    assert len(expected) > WIDE + 50 and expected["/null"][0] is None
    assert expected["/empty"][0] == b""

    walked = pipelined_walk(zk_server.url(odd_tree), sessions)

    assert walked == expected  # same nodes, null vs empty data, ACLs and stat, no extra


def test_backup_records_are_the_tree_as_one_request_at_a_time_reads_it(
    zk_server, odd_tree, small_windows
):
    """The stored records (decoded by the restore's reader) and the digest are those of
    the reference walk; the ephemeral node is left out."""
    expected = {
        path: node for path, node in reference_walk(zk_server.hosts, odd_tree).items()
        if not node[2][7]
    }  # fmt: skip
    raw = io.BytesIO()

    class Writer:
        def write(self, data: bytes, records: int = 0) -> None:
            raw.write(data)

    class Sink:
        files: list = []

        @contextlib.contextmanager
        def open(self, name, *, format, meta=None):
            yield Writer()

        def observe(self, chunk) -> None:
            pass

    driver = get_driver("zookeeper")
    [unit] = driver.plan_backup([zk_server.url(odd_tree)], {"sessions": 2})
    result = driver.backup_unit(unit, Sink())

    raw.seek(0)
    records = list(read(raw))
    assert [r for r in records if r.kind == DELETED] == []
    stored = {r.path: (r.data, r.acls, r.stat) for r in records}
    assert len(stored) == len(records)  # no node twice
    assert stored == expected
    digest = SetDigest()
    for path, (data, acls, _) in expected.items():
        digest.add(node_hash(path, data, acls))
    assert (result.records, result.meta["digest"]) == (digest.count, digest.hex)
    assert result.meta["skipped_ephemeral"] == 1


def test_node_deleted_while_the_walk_runs_is_absent_with_its_subtree(
    zk_server, zk_client, odd_tree, small_windows, monkeypatch
):
    """A node listed by its parent but deleted before its own read is skipped (the
    convergence passes of a backup then see the parent's pzxid move)."""
    doomed = f"{odd_tree}/wide/w0007"
    send = wire.ReadSession._chunk_requests
    deleted = []

    def delete_before_its_read(self, chunk, children):
        if "/wide/w0007" in chunk and not deleted:
            zk_client.delete(doomed, recursive=True)
            deleted.append(doomed)
        return send(self, chunk, children)

    monkeypatch.setattr(wire.ReadSession, "_chunk_requests", delete_before_its_read)
    walked = pipelined_walk(zk_server.url(odd_tree), 2)

    assert deleted
    after = reference_walk(zk_server.hosts, odd_tree)
    # /wide was read before its child went (its cversion and pzxid moved after).
    assert walked.pop("/wide")[:2] == after.pop("/wide")[:2]
    assert walked == after
    assert "/wide/w0007" not in walked and "/wide/w0006" in walked


@pytest.mark.parametrize(
    "node",
    [
        Znode(NODE, "/", b"", ((31, "world", "anyone"),), (1, 2, 3, 4, 5, 6, 7, 0, 9)),
        Znode(NODE, "/null", None, ((31, "world", "anyone"),), (0,) * 9),
        Znode(
            NODE,
            "/ü/é x",
            b"\x00\x01" * 9,
            ((1, "world", "anyone"), (31, "digest", "u:h=")),
            (-1, 2**62, 3, 4, -5, 6, 7, 2**40, 9),
        ),
        Znode(NODE, "/no-acl", b"data", (), (0,) * 9),
    ],
)
def test_record_packer_packs_and_hashes_as_pack_and_node_hash(node):
    packer = RecordPacker()
    for _ in range(2):  # the second time from its cache of encoded ACLs
        parts, h = packer.node(node.path, node.data, node.acls, node.stat)
        assert b"".join(parts) == pack(node) == b"".join(pack_parts(node))
        assert h == node_hash(node.path, node.data, node.acls)
