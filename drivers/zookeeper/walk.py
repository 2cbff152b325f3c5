"""Reading ZooKeeper trees through the lean pipelined session (wire.py).

Walks come out breadth-first: every parent before its children.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator

from backstop.drivers.errors import PermanentError
from backstop.drivers.zookeeper.paths import Selection
from backstop.drivers.zookeeper.wire import NO_AUTH, ReadSession, ZkReadError
from backstop.drivers.zookeeper.znodes import NODE, Znode

BATCH = 512  # paths a session takes from the shared queue at a time


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class _AclCheck:
    """`_checked_acls` once per distinct ACL list (the sessions share parsed lists)."""

    def __init__(self) -> None:
        self._seen: set[tuple] = set()

    def __call__(self, acls: tuple, path: str) -> tuple:
        if acls not in self._seen:
            _checked_acls(acls, path)
            self._seen.add(acls)
        return acls


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
    return parallel_walk([session], roots, selection, skip_system, known)


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
    for path, data, stat, acls in walk_fields(sessions, roots, selection, skip_system, known):
        yield Znode(NODE, path, data, acls, stat)


def walk_fields(
    sessions: list[ReadSession],
    roots: Iterable[str],
    selection: Selection,
    skip_system: bool,
    known: Container[str] = (),
) -> Iterator[tuple[str, bytes | None, tuple, tuple]]:
    """`parallel_walk`'s nodes as (path, data, stat, ACLs) tuples, for loops that handle
    every node of a large tree (no object built per node)."""
    checked = _AclCheck()
    wants = selection.wants if selection.include or selection.exclude else _everything
    if len(sessions) == 1:
        try:
            descend = _descender(selection, skip_system, known)
            for path, data, stat, acls in sessions[0].fetch(roots, descend=descend):
                if wants(path):
                    yield path, data, stat, checked(acls, path)
        except ZkReadError as exc:
            raise _explained(exc) from None
        return
    yield from _shared_queue_walk(sessions, roots, _descender(selection, skip_system, known),
                                  wants, checked)  # fmt: skip


def _everything(path: str) -> bool:
    return True


def _descender(selection: Selection, skip_system: bool, known: Container[str]):
    """Whether the walk goes below a path."""
    if not known and not selection.include and not selection.exclude:
        if not skip_system:
            return lambda path: True
        return lambda path: path != "/zookeeper"

    def descend(path: str) -> bool:
        return (
            path not in known
            and not (skip_system and path == "/zookeeper")
            and selection.descends(path)
        )

    return descend


def _shared_queue_walk(
    sessions: list[ReadSession],
    roots: Iterable[str],
    descend: Callable[[str], bool],
    wants: Callable[[str], bool],
    checked: _AclCheck,
) -> Iterator[tuple[str, bytes | None, tuple, tuple]]:
    """Several sessions take batches of paths from one queue, each on a thread; the
    caller's thread receives the fetched batches through a bounded queue."""
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
                    if wants(path):
                        yield path, data, stat, checked(acls, path)
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
