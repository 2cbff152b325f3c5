"""Several connections reading one MariaDB/MySQL shard at one consistent point.

A shard's snapshot is every cell with `added_id <= watermark`, read in one
transaction. To read it through several connections at once, every connection must
see the same commits: added_ids are handed out at insert, so a cell with a lower id
may commit after one with a higher id, and snapshots started at different moments
could each miss a different late commit below the watermark. As mydumper does,
commits are held for the moment the connections start their snapshots (MariaDB's
`BACKUP STAGE BLOCK_COMMIT`, MySQL's `FLUSH TABLES WITH READ LOCK`; both need the
RELOAD privilege), then released at once, on every path. When the lock cannot be
had (no privilege, another backup holding it, not granted within LOCK_WAIT_S) the
shard is read through one connection as before, and the reason is logged.

The cells of a table are then read in `added_id` ranges ("pieces"), each reader
taking the next piece as it finishes one, and handed on in `added_id` order through
a bounded reorder window: the packaged file is byte for byte what one connection
would have written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from backstop.drivers.errors import PermanentError

log = logging.getLogger("backstop.schemaless")

# Readers besides the connection that reads the catalog, watermarks and counts: the
# server's scan and the client's decoding overlap across them (2 cores here).
READERS = max(2, min(4, os.cpu_count() or 2))
PIECE_IDS = 10_000  # added_ids per piece: at most one batch of cells (ids are unique)
MAX_PIECES = 4096  # a sparse id range is cut in at most this many pieces
PIECE_QUEUE = 2  # batches a reader may hold ready per piece before it waits
LOCK_WAIT_S = 5  # how long the lock may wait for running commits or DDL
_POLL_S = 0.2  # how often a waiting reader looks whether the read was abandoned

_END = object()  # a piece's last item


@contextmanager
def snapshot(
    engine: Engine, shard: str, readers: int | None = None
) -> Iterator[tuple[Connection, list[Connection]]]:
    """(main connection, readers): connections in transactions that see one point.
    No readers where the engine is not MySQL/MariaDB or the lock was refused: then the
    main connection alone reads, as engines.connection would. The engine is disposed."""
    readers = READERS if readers is None else readers
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        if engine.dialect.name not in ("mysql", "mariadb") or readers < 1:
            yield _begin(stack, engine), []
            return
        opened = _open_under_lock(stack, engine, shard, readers + 1)
        if opened is None:  # reason logged
            yield _begin(stack, engine), []
            return
        yield opened[0], opened[1:]


def _begin(stack: ExitStack, engine: Engine) -> Connection:
    """A connection in a transaction, rolled back and closed when the stack closes."""
    return _start(stack, stack.enter_context(engine.connect()))


def _start(stack: ExitStack, conn: Connection) -> Connection:
    """Begin the connection's transaction: the engine's begin event starts its
    snapshot (engines.source_engine)."""
    stack.enter_context(conn.begin())
    return conn


def _open_under_lock(
    stack: ExitStack, engine: Engine, shard: str, count: int
) -> list[Connection] | None:
    """`count` connections whose snapshots all start while commits are held; None if
    the lock was not granted. The lock is released before this returns, whatever
    happens: its connection is closed (a disconnect releases it too)."""
    # Connected first: under the lock, each only starts its snapshot (one round trip).
    connections: list[Connection] = []
    try:
        for _ in range(count):
            connections.append(stack.enter_context(engine.connect()))
        control = engine.raw_connection()
    except DBAPIError as exc:
        if not connections:
            raise  # not even one: unreachable, refused... as the one connection would
        # An account limited to fewer connections (MAX_USER_CONNECTIONS, a managed
        # server's cap) is read through one, as before the parallel read.
        log.warning(
            "%s: reading through one connection: the server refused a parallel "
            "reader's connection (%s)",
            shard,
            _first_line(exc.orig or exc),
        )
        for conn in connections:
            conn.close()
        return None
    try:
        try:
            mariadb = _hold_commits(control)
        except engine.dialect.loaded_dbapi.Error as exc:
            log.warning(
                "%s: reading through one connection: the server did not grant the brief "
                "lock that starts several readers at one point (%s); grant the backup "
                "user RELOAD for a parallel read",
                shard,
                _first_line(exc),
            )
            for conn in connections:
                conn.close()
            return None
        try:
            return [_start(stack, conn) for conn in connections]
        finally:
            _release(control, mariadb)
    finally:
        # invalidate: the DB-API connection is closed, never pooled, so no lock can
        # outlive this function even if the release above failed.
        control.invalidate()


def _hold_commits(control: Any) -> bool:
    """Hold every commit on the server; True on MariaDB (BACKUP STAGE)."""
    cursor = control.cursor()
    try:
        cursor.execute("SELECT VERSION()")
        mariadb = "mariadb" in str(cursor.fetchone()[0]).lower()
        cursor.execute(f"SET SESSION lock_wait_timeout = {int(LOCK_WAIT_S)}")
        if mariadb:
            # Stages skipped are run in order: START, FLUSH, BLOCK_DDL, BLOCK_COMMIT.
            # When BLOCK_COMMIT returns, nothing commits until END.
            cursor.execute("BACKUP STAGE START")
            try:
                cursor.execute("BACKUP STAGE BLOCK_COMMIT")
            except BaseException:
                _quietly(cursor, "BACKUP STAGE END")
                raise
        else:
            cursor.execute("FLUSH TABLES WITH READ LOCK")
        return mariadb
    finally:
        cursor.close()


def _release(control: Any, mariadb: bool) -> None:
    cursor = control.cursor()
    try:
        cursor.execute("BACKUP STAGE END" if mariadb else "UNLOCK TABLES")
    finally:
        cursor.close()


def _quietly(cursor: Any, statement: str) -> None:
    # The connection is closed next, which releases the stage too.
    with contextlib.suppress(Exception):
        cursor.execute(statement)


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__


# -- reading in pieces, handed on in order -----------------------------------------------
def pieces(since: int, watermark: int) -> list[tuple[int, int]]:
    """(low, high] added_id ranges covering (since, watermark], in order."""
    span = watermark - since
    if span <= 0:
        return []
    width = max(PIECE_IDS, -(-span // MAX_PIECES))
    return [(low, min(low + width, watermark)) for low in range(since, watermark, width)]


def ordered_batches(
    readers: list[Connection],
    ranges: list[tuple[int, int]],
    read: Callable[[Connection, int, int], Iterable[Any]],
    check: Callable[[Connection], None] | None = None,
) -> Iterator[Any]:
    """Every batch `read(conn, low, high)` yields for each range, ranges in order, read
    by the readers concurrently (each takes the next range when done with one). At
    most len(readers) + 1 ranges are in flight, each holding at most PIECE_QUEUE
    batches: memory stays bounded whatever the table's size. `check(conn)` runs on
    each reader before it reads (that it sees the same snapshot)."""
    if not ranges:
        return
    window = threading.Semaphore(len(readers) + 1)
    stop = threading.Event()
    lock = threading.Lock()
    outputs: list[queue.Queue | None] = [queue.Queue(PIECE_QUEUE) for _ in ranges]
    taken = iter(range(len(ranges)))

    def take() -> int | None:
        while not window.acquire(timeout=_POLL_S):
            if stop.is_set():
                return None
        with lock:
            index = next(taken, None)
        if index is None:
            window.release()
        return index

    def put(out: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work(conn: Connection) -> None:
        try:
            if check is not None:
                check(conn)
            while not stop.is_set() and (index := take()) is not None:
                out = outputs[index]
                assert out is not None  # dropped only once its piece has ended
                for batch in read(conn, *ranges[index]):
                    if not put(out, batch):
                        return
                put(out, _END)
        except BaseException as exc:  # raised by the consumer
            failures.append(exc)
            stop.set()

    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=work, args=(conn,), name=f"backstop-reader-{i}", daemon=True)
        for i, conn in enumerate(readers)
    ]
    for thread in threads:
        thread.start()
    try:
        for index in range(len(ranges)):
            out = outputs[index]
            assert out is not None
            while (item := _get(out, stop, threads, failures)) is not _END:
                yield item
            outputs[index] = None  # its piece is done: the memory goes
            window.release()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _get(
    out: queue.Queue,
    stop: threading.Event,
    threads: list[threading.Thread],
    failures: list[BaseException],
) -> Any:
    """The next item of a piece, or the first reader's failure, wherever it happened."""
    while True:
        if failures:
            raise failures[0]
        try:
            return out.get(timeout=_POLL_S)
        except queue.Empty:
            if failures:
                raise failures[0] from None
            if stop.is_set() or not any(t.is_alive() for t in threads):
                try:
                    return out.get_nowait()
                except queue.Empty:
                    raise PermanentError(
                        "a parallel reader stopped without handing on its range"
                    ) from None
