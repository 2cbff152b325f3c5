"""MariaDB shards read through several connections at one consistent point
(drivers/schemaless/parallel.py): exact under writes, the same bytes as one
connection, a fallback without the RELOAD privilege, and no lock left behind."""

from __future__ import annotations

import logging
import threading
import uuid

import pymysql
import pytest
from sqlalchemy.engine import make_url
from test_schemaless_sql import (
    back_up_while_writing,
    cells_of,
    fill,
    max_added_id,
    restore_into,
)

from backstop.drivers.contract import Unit
from backstop.drivers.schemaless import parallel
from backstop.drivers.schemaless.driver import SchemalessDriver
from backstop.tasks.packaging import StoreSink
from backstop.tasks.store import ArtifactStore

pytestmark = pytest.mark.integration

BACKUP_ID = "20261128T120000Z-ab12"


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 300 added_ids, so that a test's few thousand cells span many ranges
    handed between the readers."""
    monkeypatch.setattr(parallel, "PIECE_IDS", 300)


@pytest.fixture
def reads_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many ranges each parallel read was cut in (the real reader runs)."""
    counted: list[int] = []
    real = parallel.ordered_batches

    def counting(readers, ranges, read, check=None):
        counted.append(len(ranges))
        assert len(readers) == parallel.READERS
        return real(readers, ranges, read, check)

    monkeypatch.setattr(parallel, "ordered_batches", counting)
    return counted


def _connect(url: str, **kwargs) -> pymysql.Connection:
    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port,
        user=kwargs.get("user", parsed.username),
        password=kwargs.get("password", parsed.password),
        database=parsed.database,
        autocommit=False,
    )


def _back_up_unit(url: str, folder) -> tuple[StoreSink, object]:
    """The driver's backup of one shard into a real store, without a flow."""
    folder.mkdir(exist_ok=True)
    sink = StoreSink(ArtifactStore(folder.as_uri()), "schemaless", BACKUP_ID)
    unit = Unit(name="shard-000", source=url, options={})
    return sink, SchemalessDriver().backup_unit(unit, sink)


def _writes_go_through(url: str) -> None:
    """Another connection commits a cell at once: no lock is held on the server, and
    no backup stage is left running."""
    conn = _connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = 5")
            cursor.execute(
                "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
                "VALUES (%s, 'after', 1, 'x', '2026-11-02 00:00:00')",
                (str(uuid.uuid4()),),
            )
            conn.commit()
            cursor.execute("BACKUP STAGE START")  # waits while another holds a stage
            cursor.execute("BACKUP STAGE END")
    finally:
        conn.close()


def test_a_parallel_backup_under_writes_holds_exactly_the_cells_up_to_its_watermark(
    new_databases, local_store, small_pieces, reads_counted
):
    [source] = new_databases("mariadb", 1)
    fill(source, 6_000)
    outcome, watermark = back_up_while_writing(source, local_store, 40)
    assert reads_counted and reads_counted[0] >= 20, "the shard is read in many ranges"
    [target] = new_databases("mariadb", 1)
    restored = restore_into([target], local_store)
    assert restored.verified
    expected = cells_of(source, up_to=watermark)
    assert cells_of(target) == expected  # none missing in the middle, none beyond
    assert outcome.records == len(expected)


def test_commits_wait_while_the_readers_start_their_snapshots(
    new_databases, tmp_path, small_pieces, monkeypatch
):
    """A commit that arrives while the readers open their snapshots waits until every
    one has started: all of them see the same cells (without the lock the later
    readers would see a newer cell than the watermark, which the backup refuses)."""
    [source] = new_databases("mariadb", 1)
    fill(source, 2_000)
    before = max_added_id(source)
    pending = _connect(source)
    with pending.cursor() as cursor:
        cursor.execute(
            "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
            "VALUES (%s, 'late', 1, 'late', '2026-11-02 00:00:00')",
            (str(uuid.uuid4()),),
        )
    committed = threading.Event()

    def commit() -> None:
        pending.commit()
        committed.set()

    real_start = parallel._start
    opened = []
    waited: list[bool] = []

    def begin_then_commit(stack, conn):
        conn = real_start(stack, conn)
        opened.append(conn)
        if len(opened) == 2:  # between two readers' snapshots
            threading.Thread(target=commit).start()
            waited.append(not committed.wait(1.0))
        return conn

    monkeypatch.setattr(parallel, "_start", begin_then_commit)
    try:
        _sink, result = _back_up_unit(source, tmp_path / "store")
        assert committed.wait(10), "the commit goes through once the readers have started"
    finally:
        committed.wait(10)
        pending.close()
    assert waited == [True], "the commit waited for the readers"
    assert len(opened) == parallel.READERS + 1
    assert result.point == {"watermarks": {"cells": before}}
    assert result.records == 2_000
    assert max_added_id(source) > before


def test_the_same_bytes_through_one_connection_without_the_reload_privilege(
    new_databases, tmp_path, small_pieces, reads_counted, caplog
):
    """A user without RELOAD cannot hold commits: the shard is read through one
    connection, the reason logged, and the file is byte for byte the parallel one."""
    [source] = new_databases("mariadb", 1)
    fill(source, 3_000)
    parsed = make_url(source)
    user, password = f"ro_{uuid.uuid4().hex[:8]}", "Ro-pw-1234"
    admin = _connect(source)
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        cursor.execute(f"GRANT SELECT ON `{parsed.database}`.* TO '{user}'@'127.0.0.1'")
    admin.close()
    limited = parsed.set(username=user, password=password).render_as_string(hide_password=False)

    with caplog.at_level(logging.WARNING, logger="backstop.schemaless"):
        sink_one, one = _back_up_unit(limited, tmp_path / "one")
    assert reads_counted == [], "read through one connection"
    reasons = [r.getMessage() for r in caplog.records if r.name == "backstop.schemaless"]
    assert any("one connection" in m and "RELOAD" in m for m in reasons), reasons
    assert all(password not in m for m in reasons)

    sink_many, many = _back_up_unit(source, tmp_path / "many")
    assert reads_counted and reads_counted[0] >= 10
    assert one.point == many.point and one.records == many.records == 3_000
    [file_one], [file_many] = sink_one.files, sink_many.files
    assert file_one.raw_sha256 == file_many.raw_sha256
    assert file_one.records == file_many.records


def test_a_user_limited_to_few_connections_is_read_through_one(
    new_databases, tmp_path, small_pieces, reads_counted, caplog
):
    """An account with MAX_USER_CONNECTIONS below the readers' count (managed and shared
    servers set one) is read through one connection, as before the parallel read."""
    [source] = new_databases("mariadb", 1)
    fill(source, 3_000)
    parsed = make_url(source)
    user, password = f"few_{uuid.uuid4().hex[:8]}", "Few-pw-1234"
    admin = _connect(source)
    with admin.cursor() as cursor:
        cursor.execute(
            f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}' "
            "WITH MAX_USER_CONNECTIONS 2"
        )
        cursor.execute(f"GRANT SELECT ON `{parsed.database}`.* TO '{user}'@'127.0.0.1'")
    admin.close()
    limited = parsed.set(username=user, password=password).render_as_string(hide_password=False)

    with caplog.at_level(logging.WARNING, logger="backstop.schemaless"):
        sink, result = _back_up_unit(limited, tmp_path / "few")
    assert reads_counted == [], "read through one connection"
    assert result.records == 3_000 and sink.files[0].records == 3_000
    reasons = [r.getMessage() for r in caplog.records if r.name == "backstop.schemaless"]
    assert any("one connection" in m for m in reasons), reasons
    assert all(password not in m for m in reasons)


def test_a_failure_while_the_readers_start_leaves_no_lock(
    new_databases, tmp_path, small_pieces, monkeypatch
):
    [source] = new_databases("mariadb", 1)
    fill(source, 1_000)
    real_start = parallel._start
    calls = []

    def failing_start(stack, conn):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected: a reader could not start its snapshot")
        return real_start(stack, conn)

    monkeypatch.setattr(parallel, "_start", failing_start)
    with pytest.raises(RuntimeError, match="injected"):
        _back_up_unit(source, tmp_path / "store")
    _writes_go_through(source)


def test_a_reader_failing_mid_read_fails_the_backup_and_leaves_no_lock(
    new_databases, tmp_path, small_pieces, monkeypatch
):
    [source] = new_databases("mariadb", 1)
    fill(source, 3_000)
    real = parallel.ordered_batches
    done = []

    def failing(readers, ranges, read, check=None):
        def read_then_fail(conn, low, high):
            done.append(1)
            if len(done) == 4:
                raise RuntimeError("injected: a reader failed mid-read")
            return read(conn, low, high)

        return real(readers, ranges, read_then_fail, check)

    monkeypatch.setattr(parallel, "ordered_batches", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _back_up_unit(source, tmp_path / "store")
    _writes_go_through(source)
