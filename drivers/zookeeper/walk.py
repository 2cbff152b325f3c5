"""Walking a ZooKeeper tree with pipelined asynchronous reads.

Up to WINDOW nodes are in flight at once (get, get_children and get_acls for each),
so a walk costs round trips per WINDOW nodes, not per node. Nodes come out in
breadth-first order: every parent before its children.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from kazoo import exceptions as kz
from kazoo.client import KazooClient

from backstop.drivers.errors import PermanentError
from backstop.drivers.zookeeper.client import explain
from backstop.drivers.zookeeper.paths import Selection
from backstop.drivers.zookeeper.znodes import NODE, Znode

WINDOW = 256


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _stat_tuple(stat) -> tuple[int, ...]:
    return (
        stat.czxid,
        stat.mzxid,
        stat.ctime,
        stat.mtime,
        stat.version,
        stat.cversion,
        stat.aversion,
        stat.ephemeralOwner,
        stat.pzxid,
    )


def _acls(acls, path: str = "") -> tuple[tuple[int, str, str], ...]:
    out = tuple((a.perms, a.id.scheme, a.id.id) for a in acls)
    for _, scheme, ident in out:
        # Servers redact digest ACLs (user:x) for clients without ADMIN permission on the
        # node; such a backup could not restore the ACL, so it must not pretend to.
        if scheme == "digest" and ident.endswith(":x"):
            raise PermanentError(
                f"the server redacted the digest ACL of {path} (the credentials lack ADMIN "
                "permission there); back up with credentials that have it (the node's digest "
                "user, or the super user) in the zk:// URL"
            )
    return out


def walk(
    client: KazooClient, roots: Iterable[str], selection: Selection, skip_system: bool
) -> Iterator[Znode]:
    """Every selected node under `roots` (roots included), parents first.

    Nodes deleted while the walk runs are silently absent; the caller's convergence
    passes notice them.
    """
    pending: deque[str] = deque(roots)
    inflight: deque = deque()
    while pending or inflight:
        while pending and len(inflight) < WINDOW:
            path = pending.popleft()
            inflight.append(
                (
                    path,
                    client.get_async(path),
                    client.get_children_async(path),
                    client.get_acls_async(path),
                )
            )
        path, got, children, acls = inflight.popleft()
        try:
            data, stat = got.get()
            names = children.get()
            acl_list, _ = acls.get()
        except kz.NoNodeError:
            continue
        except kz.ZookeeperError as exc:
            raise explain(exc, path) from None
        if selection.wants(path):
            yield Znode(NODE, path, data, _acls(acl_list, path), _stat_tuple(stat))
        for name in sorted(names):
            child = child_path(path, name)
            if skip_system and child == "/zookeeper":
                continue
            if selection.descends(child):
                pending.append(child)


def stat_pass(client: KazooClient, paths: Iterable[str]) -> Iterator[tuple[str, tuple | None]]:
    """(path, stat tuple or None when gone) for every path, pipelined."""
    inflight: deque = deque()
    iterator = iter(paths)
    exhausted = False
    while True:
        while not exhausted and len(inflight) < WINDOW:
            try:
                path = next(iterator)
            except StopIteration:
                exhausted = True
                break
            inflight.append((path, client.exists_async(path)))
        if not inflight:
            return
        path, result = inflight.popleft()
        stat = result.get()
        yield path, None if stat is None else _stat_tuple(stat)


def read_nodes(client: KazooClient, paths: Iterable[str]) -> Iterator[Znode]:
    """The current state of exactly these nodes, pipelined; vanished ones are skipped."""
    inflight: deque = deque()
    iterator = iter(paths)
    exhausted = False
    while True:
        while not exhausted and len(inflight) < WINDOW:
            try:
                path = next(iterator)
            except StopIteration:
                exhausted = True
                break
            inflight.append((path, client.get_async(path), client.get_acls_async(path)))
        if not inflight:
            return
        path, got, acls = inflight.popleft()
        try:
            data, stat = got.get()
            acl_list, _ = acls.get()
        except kz.NoNodeError:
            continue
        except kz.ZookeeperError as exc:
            raise explain(exc, path) from None
        yield Znode(NODE, path, data, _acls(acl_list, path), _stat_tuple(stat))
