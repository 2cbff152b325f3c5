"""Reading ZooKeeper trees through the lean pipelined session (wire.py).

Walks come out breadth-first: every parent before its children.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Container, Iterable, Iterator

from backstop.drivers.errors import PermanentError
from backstop.drivers.zookeeper.paths import Selection
from backstop.drivers.zookeeper.wire import NO_AUTH, ReadSession, ZkReadError
from backstop.drivers.zookeeper.znodes import NODE, Znode

BATCH = 512  # paths a session takes from the shared queue at a time


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _checked_acls(acls: tuple, path: str) -> tuple:
    for _, scheme, ident in acls:
        # Servers redact digest ACLs (user:x) for clients without ADMIN permission on the
        # node; such a backup could not restore the ACL, so it must not pretend to.
        if scheme == "digest" and ident.endswith(":x"):
            raise PermanentError(
                f"the server redacted the digest ACL of {path} (the credentials lack ADMIN "
                "permission there); back up with credentials that have it (the node's digest "
                "user, or the super user) in the zk:// URL"
            )
    return acls


def _explained(exc: ZkReadError) -> PermanentError:
    if exc.code == NO_AUTH:
        return PermanentError(
            f"ZooKeeper not authorized (the node's ACL denies these credentials) at {exc.path}"
        )
    return PermanentError(f"ZooKeeper refused to read {exc.path} (error {exc.code})")


def walk(
    session: ReadSession,
    roots: Iterable[str],
    selection: Selection,
    skip_system: bool,
    known: Container[str] = (),
) -> Iterator[Znode]:
    """Every selected node under `roots` (roots included), parents first, not descending
    into `known` paths.

    Nodes deleted while the walk runs are silently absent; the caller's convergence
    passes notice them.
    """

    def descend(path: str) -> bool:
        return (
            path not in known
            and not (skip_system and path == "/zookeeper")
            and selection.descends(path)
        )

    try:
        for path, data, stat, acls in session.fetch(roots, descend=descend):
            if selection.wants(path):
                yield Znode(NODE, path, data, _checked_acls(acls, path), stat)
    except ZkReadError as exc:
        raise _explained(exc) from None


def parallel_walk(
    sessions: list[ReadSession],
    roots: Iterable[str],
    selection: Selection,
    skip_system: bool,
    known: Container[str] = (),
) -> Iterator[Znode]:
    """`walk` over several sessions sharing one queue of paths (the server answers one
    session's requests one at a time; several sessions use its worker threads).

    A node is handed out before its children are queued, so parents still come first.
    """
    if len(sessions) == 1:
        yield from walk(sessions[0], roots, selection, skip_system, known)
        return

    def descend(path: str) -> bool:
        return (
            path not in known
            and not (skip_system and path == "/zookeeper")
            and selection.descends(path)
        )

    work: deque[str] = deque(roots)
    outstanding = len(work)  # paths queued or being fetched
    lock = threading.Condition()
    results: queue.Queue = queue.Queue(maxsize=4)  # bounded: memory stays a few batches
    stop = threading.Event()

    def worker(session: ReadSession) -> None:
        nonlocal outstanding
        try:
            while not stop.is_set():
                with lock:
                    while not work and outstanding and not stop.is_set():
                        lock.wait(0.5)
                    if not work:
                        return
                    batch = [work.popleft() for _ in range(min(BATCH, len(work)))]
                fetched = session.fetch_batch(batch)
                results.put(fetched)  # before the children are queued: parents first
                children = []
                for path, _, _, names, _ in fetched:
                    prefix = "/" if path == "/" else path + "/"
                    children.extend(c for c in map(prefix.__add__, sorted(names)) if descend(c))
                with lock:
                    work.extend(children)
                    outstanding += len(children) - len(batch)
                    lock.notify_all()
        except BaseException as exc:  # handed to the consumer, which raises it
            stop.set()
            results.put(exc)
        finally:
            results.put(None)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sessions]
    for thread in threads:
        thread.start()
    finished = 0
    try:
        while finished < len(threads):
            item = results.get()
            if item is None:
                finished += 1
            elif isinstance(item, ZkReadError):
                raise _explained(item)
            elif isinstance(item, BaseException):
                raise item
            else:
                for path, data, stat, _, acls in item:
                    if selection.wants(path):
                        yield Znode(NODE, path, data, _checked_acls(acls, path), stat)
    finally:
        stop.set()
        with lock:
            lock.notify_all()
        while any(t.is_alive() for t in threads):
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.1)


def read_nodes(session: ReadSession, paths: Iterable[str]) -> Iterator[Znode]:
    """The current state of exactly these nodes; vanished ones are skipped."""
    try:
        for path, data, stat, acls in session.fetch(paths):
            yield Znode(NODE, path, data, _checked_acls(acls, path), stat)
    except ZkReadError as exc:
        raise _explained(exc) from None


def stat_pass(session: ReadSession, paths: Iterable[str]) -> Iterator[tuple[str, tuple | None]]:
    """(path, stat or None when gone) for every path, pipelined."""
    try:
        yield from session.stats(paths)
    except ZkReadError as exc:
        raise _explained(exc) from None
