"""Schemaless on SQLite through the real flows: backup -> restore -> compare."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BadInputError
from backstop.flows.backup import backup
from backstop.flows.demo import compare_shards, make_schemaless_datastore
from backstop.flows.params import BackupRequest, RestoreRequest, VerifyRequest
from backstop.flows.restore import restore
from backstop.flows.verify import verify
from backstop.tasks.store import StoreSpec

pytestmark = pytest.mark.integration


def db_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def file_digest(url: str) -> str:
    return hashlib.sha256(db_path(url).read_bytes()).hexdigest()


def cell_count(url: str, table: str = "cells") -> int:
    with sqlite3.connect(db_path(url)) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def run_backup(shards: list[str], store: StoreSpec, **options):
    return backup(
        request=BackupRequest(technology="schemaless", sources=shards, store=store, options=options)
    )


def run_restore(store: StoreSpec, targets: list[str], **kwargs):
    return restore(
        request=RestoreRequest(technology="schemaless", store=store, targets=targets, **kwargs)
    )


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_round_trip_is_cell_for_cell_equal(store_kind, shards, target_urls, request):
    store = request.getfixturevalue("local_store" if store_kind == "local" else "s3_store")
    outcome = run_backup(shards, store)
    assert outcome.records == 6_000
    assert outcome.consistency == "snapshot"
    assert outcome.consistency_point == {"shard-000": {"cells": 3000}, "shard-001": {"cells": 3000}}

    manifest = store.open().resolve("schemaless", "latest")
    assert manifest.backup_id == outcome.backup_id
    assert [u.point for u in manifest.units] == [{"watermarks": {"cells": 3000}}] * 2
    assert all(len(f.sha256) == 64 and f.bytes > 0 for f in manifest.files)

    restored = run_restore(store, target_urls)
    assert restored.records == 6_000 and restored.verified
    comparison = compare_shards(shards, target_urls)
    assert comparison.equal, comparison.differences
    assert comparison.cells == 6_000

    assert verify(request=VerifyRequest(store=store)).ok


def test_every_cell_table_of_a_shard_is_backed_up(tmp_path, local_store, target_urls):
    source = make_schemaless_datastore(tmp_path / "multi", shards=1, cells=500, table="users")
    extra = make_schemaless_datastore(tmp_path / "multi2", shards=1, cells=300, table="trips")
    with sqlite3.connect(db_path(source[0])) as db:
        db.execute(f"ATTACH '{db_path(extra[0])}' AS other")
        db.execute("CREATE TABLE trips AS SELECT * FROM other.trips")
        db.execute("CREATE TABLE unrelated (id INTEGER PRIMARY KEY, name TEXT)")
    outcome = run_backup(source, local_store)
    assert outcome.records == 800
    manifest = local_store.open().resolve("schemaless")
    assert set(manifest.units[0].meta["tables"]) == {"users", "trips"}
    run_restore(local_store, target_urls[:1])
    assert compare_shards(source, target_urls[:1], table="users").equal
    assert cell_count(target_urls[0], "trips") == 300


def test_backup_is_a_snapshot_at_the_watermark_while_writers_run(
    tmp_path, local_store, target_urls
):
    source = make_schemaless_datastore(tmp_path / "busy", shards=1, cells=40_000)
    with sqlite3.connect(db_path(source[0])) as db:
        db.execute("PRAGMA journal_mode=WAL")
    stop = threading.Event()
    written = {"n": 0}

    def writer():
        db = sqlite3.connect(db_path(source[0]), isolation_level=None, timeout=30)
        while not stop.is_set():
            db.execute(
                "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
                "VALUES (?, 'live', ?, x'7b7d', '2026-06-01 00:00:00.000000')",
                ("00000000-0000-4000-8000-000000000000", written["n"]),
            )
            written["n"] += 1
            time.sleep(0.001)
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        outcome = run_backup(source, local_store)
    finally:
        stop.set()
        thread.join()
    watermark = outcome.consistency_point["shard-000"]["cells"]
    assert written["n"] > 0
    assert outcome.records == watermark  # every cell up to the watermark, none after
    run_restore(local_store, target_urls[:1])
    with sqlite3.connect(db_path(source[0])) as a, sqlite3.connect(db_path(target_urls[0])) as b:
        query = "SELECT * FROM cells WHERE added_id <= ? ORDER BY added_id"
        assert (
            a.execute(query, (watermark,)).fetchall() == b.execute(query, (watermark,)).fetchall()
        )
        assert b.execute("SELECT MAX(added_id) FROM cells").fetchone()[0] == watermark


def test_merge_keeps_a_target_cell_that_differs_under_the_same_key(
    shards, local_store, target_urls
):
    """Merge never changes what the target holds: the target's own cell under a
    backed-up key stays, is counted as skipped, and verification accepts it."""
    run_backup(shards, local_store)
    run_restore(local_store, target_urls)
    with sqlite3.connect(db_path(target_urls[0])) as db:
        db.execute("UPDATE cells SET body = x'00' WHERE added_id = 7")
        before = db.execute("SELECT * FROM cells ORDER BY added_id").fetchall()
    outcome = run_restore(local_store, target_urls, mode=RestoreMode.MERGE)
    assert outcome.verified
    assert (outcome.records, outcome.records_skipped) == (0, 6000)
    with sqlite3.connect(db_path(target_urls[0])) as db:
        assert db.execute("SELECT * FROM cells ORDER BY added_id").fetchall() == before


def test_merge_adds_a_cell_whose_added_id_the_target_gives_to_another(
    shards, local_store, target_urls
):
    """A target cell of another key at a backed-up cell's added_id stays as it was;
    the backed-up cell is added under a new added_id instead of being dropped."""
    run_backup(shards, local_store)
    run_restore(local_store, target_urls)
    own = ("ffffffff-0000-4000-8000-000000000000", "own", 1, b"\x01", "2026-01-01 00:00:00")
    with sqlite3.connect(db_path(target_urls[0])) as db:
        backed_up = db.execute("SELECT * FROM cells WHERE added_id = 5").fetchone()
        db.execute("DELETE FROM cells WHERE added_id = 5")
        db.execute("INSERT INTO cells VALUES (5, ?, ?, ?, ?, ?)", own)
    outcome = run_restore(local_store, target_urls, mode=RestoreMode.MERGE)
    assert outcome.verified
    assert (outcome.records, outcome.records_skipped) == (1, 5999)
    with sqlite3.connect(db_path(target_urls[0])) as db:
        assert db.execute("SELECT * FROM cells WHERE added_id = 5").fetchone() == (5, *own)
        [added] = db.execute(
            "SELECT * FROM cells WHERE row_key = ? AND column_name = ? AND ref_key = ?",
            backed_up[1:4],
        ).fetchall()
    assert added[1:] == backed_up[1:] and added[0] > 3000  # above every backed-up added_id


def test_wrong_number_of_targets_is_bad_input(shards, local_store, target_urls):
    run_backup(shards, local_store)
    with pytest.raises(BadInputError, match=r"2 shard.*1 --target"):
        run_restore(local_store, target_urls[:1])
    assert not db_path(target_urls[0]).exists()


def test_dry_run_verifies_and_writes_nothing(shards, local_store, target_urls):
    run_backup(shards, local_store)
    outcome = run_restore(local_store, target_urls, dry_run=True)
    assert outcome.status == "dry-run"
    assert not any(db_path(t).exists() for t in target_urls)
