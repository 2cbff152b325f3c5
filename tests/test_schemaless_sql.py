"""Schemaless on real PostgreSQL and MariaDB servers: shards in parallel, snapshots under
writes, incremental chains, point-in-time and cross-engine restore, and faults."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, insert, inspect, select, text

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BackstopError, IntegrityError
from backstop.drivers.schemaless.cells import to_micros
from backstop.drivers.schemaless.engines import cell_table
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.flows.restore import restore
from backstop.tasks.secrets import hide_secrets

pytestmark = pytest.mark.integration
ENGINES = ["postgresql", "mariadb"]
START = datetime(2026, 11, 1, 8, 0, 0)


def fill(
    url: str, count: int, *, seed: int = 1, start: datetime = START, table_name: str = "cells"
) -> None:
    """`count` more cells: bodies of 0-3,000 bytes (all byte values), timestamps with
    microseconds, one second apart from `start`."""
    rng = random.Random(seed)
    engine = create_engine(url)
    table = cell_table(table_name)
    table.create(engine, checkfirst=True)
    rows = [
        {
            "row_key": str(uuid.UUID(int=rng.getrandbits(128))),
            "column_name": rng.choice(["profile", "orders", "séance", "it's a \\ test"]),
            "ref_key": rng.randrange(1_000_000),
            "body": rng.randbytes(rng.randrange(3_000)),
            "created_at": start + timedelta(seconds=i, microseconds=rng.randrange(1_000_000)),
        }
        for i in range(count)
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 2_000):
            conn.execute(insert(table), rows[i : i + 2_000])
    engine.dispose()


def cells_of(url: str, up_to: int | None = None, table_name: str = "cells") -> list[tuple]:
    """Every cell as engine-neutral values, in added_id order."""
    table = cell_table(table_name)
    query = select(table).order_by(table.c.added_id)
    if up_to is not None:
        query = query.where(table.c.added_id <= up_to)
    engine = create_engine(url)
    with engine.connect() as conn:
        out = [
            (
                r.added_id,
                r.row_key,
                r.column_name,
                r.ref_key,
                bytes(r.body),
                to_micros(r.created_at),
            )
            for r in conn.execute(query)
        ]
    engine.dispose()
    return out


def max_added_id(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(select(func.max(cell_table("cells").c.added_id))).scalar_one()
    engine.dispose()
    return value or 0


# The test servers' URLs carry a password: moved out of the flow parameters first.
def back_up(sources: list[str], store, **kwargs):
    return backup(
        request=hide_secrets(
            BackupRequest(technology="schemaless", sources=sources, store=store, **kwargs)
        )
    )


def back_up_while_writing(source: str, store, batch: int):
    """A backup of `source` while a writer keeps adding `batch` cells at a time; the
    writer is stopped (and proven to have written past the backup) before returning."""
    stop = threading.Event()

    def writer() -> None:
        seed = 100
        while not stop.is_set():
            fill(source, batch, seed=seed, start=START + timedelta(days=1))
            seed += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        outcome = back_up([source], store)
    finally:
        stop.set()
        thread.join()
    watermark = outcome.consistency_point["shard-000"]["cells"]
    assert max_added_id(source) > watermark, "the writer should have kept writing"
    return outcome, watermark


def restore_into(targets: list[str], store, **kwargs):
    return restore(
        request=hide_secrets(
            RestoreRequest(technology="schemaless", store=store, targets=targets, **kwargs)
        )
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_four_shards_round_trip_in_parallel(engine, new_databases, local_store):
    sources = new_databases(engine, 4)
    for index, url in enumerate(sources):
        fill(url, 1_500 + index * 100, seed=index)
    outcome = back_up(sources, local_store)
    assert outcome.consistency == "snapshot"
    assert outcome.records == sum(1_500 + i * 100 for i in range(4))
    manifest = local_store.open().resolve("schemaless")
    assert [u.name for u in manifest.units] == [f"shard-00{i}" for i in range(4)]
    assert all("s3cret" not in s for s in manifest.sources)

    targets = new_databases(engine, 4)
    restored = restore_into(targets, local_store)
    assert restored.verified and restored.records == outcome.records
    for source, target in zip(sources, targets, strict=True):
        assert cells_of(target) == cells_of(source)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_backup_under_writes_holds_exactly_the_cells_up_to_its_watermark(
    engine, new_databases, local_store
):
    [source] = new_databases(engine, 1)
    fill(source, 20_000)
    outcome, watermark = back_up_while_writing(source, local_store, 50)
    [target] = new_databases(engine, 1)
    restore_into([target], local_store)
    assert cells_of(target) == cells_of(source, up_to=watermark)
    assert outcome.records == len(cells_of(source, up_to=watermark))


def test_incremental_chain_and_point_in_time_restore(new_databases, local_store, cli):
    [source] = new_databases("postgresql", 1)
    fill(source, 1_000, seed=1)
    full = back_up([source], local_store)
    fill(source, 400, seed=2, start=START + timedelta(days=1))
    first = back_up([source], local_store, incremental=True)
    fill(source, 300, seed=3, start=START + timedelta(days=2))
    second = back_up([source], local_store, incremental=True)

    assert (first.parent, second.parent) == (full.backup_id, first.backup_id)
    assert (first.records, second.records) == (400, 300)  # only what is new
    middle = first.consistency_point["shard-000"]["cells"]

    [whole] = new_databases("postgresql", 1)
    assert restore_into([whole], local_store).records == 1_700
    assert cells_of(whole) == cells_of(source)

    [at_middle] = new_databases("postgresql", 1)
    restore_into([at_middle], local_store, backup=first.backup_id)
    assert cells_of(at_middle) == cells_of(source, up_to=middle)

    # Point in time inside the chain, by watermark and by time (through the CLI).
    [by_watermark] = new_databases("postgresql", 1)
    restore_into([by_watermark], local_store, until=str(middle - 123))
    assert cells_of(by_watermark) == cells_of(source, up_to=middle - 123)
    cutoff = START + timedelta(days=1, seconds=200)
    [by_time] = new_databases("postgresql", 1)
    result = cli(
        "restore", "schemaless", "--store", local_store.url, "--target", by_time,
        "--until", cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stdout
    expected = [c for c in cells_of(source) if c[5] <= to_micros(cutoff.replace(tzinfo=UTC))]
    assert cells_of(by_time) == expected and 1_000 < len(expected) < 1_400

    bad = cli(
        "restore", "schemaless", "--store", local_store.url, "--target", by_time,
        "--until", "yesterday", "--json",
    )  # fmt: skip
    assert bad.code == 2 and "--until" in bad.json["error"]

    # A missing link makes the chain unrestorable, and restore says which.
    store = local_store.open()
    store.fs.rm(store.file_path("schemaless", first.backup_id, "manifest.json"))
    [refused] = new_databases("postgresql", 1)
    with pytest.raises(IntegrityError, match=f"chain is broken: {first.backup_id}"):
        restore_into([refused], local_store)
    assert not inspect(create_engine(refused)).has_table("cells")  # nothing was written


def test_cross_engine_postgresql_to_mariadb_to_sqlite(new_databases, local_store, tmp_path):
    # One store holds backups of three source sets: `latest` would be ambiguous, so
    # each restore names the backup its step took.
    [pg] = new_databases("postgresql", 1)
    fill(pg, 3_000, seed=9)
    taken = back_up([pg], local_store)
    [maria] = new_databases("mariadb", 1)
    restore_into([maria], local_store, backup=taken.backup_id)
    assert cells_of(maria) == cells_of(pg)
    taken = back_up([maria], local_store)
    lite = f"sqlite:///{tmp_path / 'from-mariadb.db'}"
    restore_into([lite], local_store, backup=taken.backup_id)
    assert cells_of(lite) == cells_of(pg)
    [pg_again] = new_databases("postgresql", 1)
    taken = back_up([lite], local_store)
    restore_into([pg_again], local_store, backup=taken.backup_id)
    assert cells_of(pg_again) == cells_of(pg)


# A shard killed mid-backup: tests/test_resume.py (the backup fails, keeps the shards it
# stored, and is resumed once the server is back).


@pytest.mark.parametrize("engine", ENGINES)
def test_errors_name_the_shard_and_hide_the_password(engine, new_databases, local_store, cli):
    [good] = new_databases(engine, 1)
    fill(good, 10)
    wrong = good.replace("s3cret-Test-pw", "wrong-pw-123")
    result = cli(
        "backup", "schemaless", "--source", good, "--source", wrong,
        "--store", local_store.url, "--json",
    )  # fmt: skip
    assert result.code == 1
    assert "shard-001" in result.json["error"]
    assert "wrong-pw-123" not in result.stdout + result.stderr
    assert "s3cret-Test-pw" not in result.stdout + result.stderr

    [empty] = new_databases(engine, 1)
    engine_ = create_engine(empty)
    with engine_.begin() as conn:
        conn.execute(text("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)"))
    engine_.dispose()
    result = cli("backup", "schemaless", "--source", empty, "--store", local_store.url, "--json")
    assert result.code == 1 and "no cell table" in result.json["error"]
    assert "notes" in result.json["error"]
    assert local_store.open().folders() == []


def _load_data_statements(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = int(conn.execute(text("SHOW GLOBAL STATUS LIKE 'Com_load'")).one()[1])
    engine.dispose()
    return value


def _set_local_infile(url: str, on: bool) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"SET GLOBAL local_infile = {int(on)}"))
    engine.dispose()


@pytest.mark.parametrize("local_infile", [True, False], ids=["load-data", "inserts"])
def test_mariadb_restores_awkward_cells_exactly_with_and_without_load_data(
    local_infile, new_databases, local_store
):
    """LOAD DATA streams escaped text: tabs, newlines, backslashes, NUL and `\\N` in
    column names and bodies must arrive unchanged; a server without LOCAL INFILE gets
    INSERTs."""
    [source] = new_databases("mariadb", 1)
    fill(source, 800, seed=7)
    awkward = cell_table("cells")
    key = "0b7c1f1e-8a4e-4d7e-9a57-0c0ffee00000"  # keys must be UUID-shaped (the suite)
    rows = [
        {"row_key": key, "column_name": "\\N", "ref_key": 0, "body": b"\\N"},
        {"row_key": key, "column_name": "nl\nend\\", "ref_key": 1, "body": b"\t\n\\\0\r\x1a"},
        {"row_key": key, "column_name": "tab\there\\0", "ref_key": 2, "body": b""},
    ]
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.execute(insert(awkward), [dict(r, created_at=START) for r in rows])
    engine.dispose()
    outcome = back_up([source], local_store)

    [target] = new_databases("mariadb", 1)
    before = _load_data_statements(target)
    _set_local_infile(target, local_infile)
    try:
        restored = restore_into([target], local_store)
    finally:
        _set_local_infile(target, True)
    assert restored.verified and restored.records == outcome.records == 803
    assert cells_of(target) == cells_of(source)
    assert (_load_data_statements(target) > before) is local_infile


def test_mariadb_merge_counts_what_it_skipped(new_databases, local_store):
    [source, target] = new_databases("mariadb", 2)
    fill(source, 600, seed=3)
    back_up([source], local_store)
    middle = sorted(cell[0] for cell in cells_of(source))[299]
    first = restore_into([target], local_store, until=str(middle))
    assert first.records == 300

    merged = restore_into([target], local_store, mode="merge")
    assert merged.verified
    assert (merged.records, merged.records_skipped) == (300, 300)  # written, skipped
    assert cells_of(target) == cells_of(source)


def test_mariadb_cells_the_target_would_alter_fail_the_restore(new_databases, local_store):
    """LOAD DATA LOCAL turns a refused or truncated value into a warning and carries on;
    the restore counts warnings and fails rather than leave altered cells."""
    [source, target] = new_databases("mariadb", 1) + new_databases("mariadb", 1)
    fill(source, 200, seed=5)
    back_up([source], local_store)
    engine = create_engine(target)
    with engine.begin() as conn:  # a hand-made table whose column_name is too narrow
        conn.execute(
            text(
                "CREATE TABLE cells (added_id BIGINT PRIMARY KEY, row_key CHAR(36) NOT NULL, "
                "column_name VARCHAR(4) NOT NULL, ref_key BIGINT NOT NULL, "
                "body LONGBLOB NOT NULL, created_at DATETIME(6) NOT NULL)"
            )
        )
    engine.dispose()
    with pytest.raises(BackstopError, match="refused or altered"):
        restore_into([target], local_store)
    assert cells_of(target) == []


@pytest.mark.timeout(120)
def test_mariadb_a_load_the_server_aborts_mid_stream_fails_and_leaves_nothing(
    new_databases, local_store
):
    [source, target] = new_databases("mariadb", 2)
    fill(source, 3_000, seed=9)
    back_up([source], local_store)
    engine = create_engine(target)
    cell_table("cells").create(engine)
    with engine.begin() as conn:  # the 2,000th row makes the server end the statement
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON cells FOR EACH ROW "
                "IF NEW.added_id = 2000 THEN SIGNAL SQLSTATE '45000' "
                "SET MESSAGE_TEXT = 'refused by trigger'; END IF"
            )
        )
    engine.dispose()
    with pytest.raises(BackstopError, match="refused by trigger"):
        restore_into([target], local_store)
    assert cells_of(target) == []


# Table names that must only ever reach SQL quoted by the engine's dialect: the first
# one ran its DROP TABLE on PostgreSQL (pasted inside the sequence-advance literal).
HOSTILE_TABLE_NAMES = [
    "x', 'y'), 1, false) WHERE false; DROP TABLE victim; --",
    "it's",
    'say "hi"',
    "back`tick",
    "back\\slash",
    "50% off",
    ":wm",
]


def _make_victim(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE victim (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
        conn.execute(text("INSERT INTO victim VALUES (1, 'keep me')"))
    engine.dispose()


def _victim_rows(url: str) -> list[tuple]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT id, note FROM victim"))]
    engine.dispose()
    return rows


def _add_cell_without_id(url: str, table_name: str) -> int:
    """What the application does next: insert with the engine choosing added_id."""
    table = cell_table(table_name)
    engine = create_engine(url)
    with engine.begin() as conn:
        added = conn.execute(
            insert(table).values(
                row_key=str(uuid.uuid4()),
                column_name="after",
                ref_key=1,
                body=b"{}",
                created_at=START,
            )
        ).inserted_primary_key[0]
    engine.dispose()
    return added


@pytest.mark.parametrize("engine", ["sqlite", *ENGINES])
def test_hostile_table_names_restore_exactly_into_every_engine_and_run_nothing(
    engine, new_databases, local_store, tmp_path
):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    for seed, name in enumerate(HOSTILE_TABLE_NAMES):
        fill(source, 40, seed=seed, table_name=name)
    outcome = back_up([source], local_store)
    assert outcome.records == 40 * len(HOSTILE_TABLE_NAMES)

    [target] = (
        [f"sqlite:///{tmp_path / 'target.db'}"] if engine == "sqlite" else new_databases(engine, 1)
    )
    _make_victim(target)

    def restore_and_compare(mode: RestoreMode) -> None:
        restored = restore_into([target], local_store, backup=outcome.backup_id, mode=mode)
        assert restored.verified, mode
        for name in HOSTILE_TABLE_NAMES:
            assert cells_of(target, table_name=name) == cells_of(source, table_name=name), name
        assert _victim_rows(target) == [(1, "keep me")]

    for mode in (RestoreMode.FAIL_IF_EXISTS, RestoreMode.MERGE, RestoreMode.OVERWRITE):
        restore_and_compare(mode)
    if engine == "mariadb":  # again without LOAD DATA: multi-row INSERTs name the table too
        _set_local_infile(target, False)
        try:
            restore_and_compare(RestoreMode.MERGE)
            restore_and_compare(RestoreMode.OVERWRITE)
        finally:
            _set_local_infile(target, True)
    # The auto-increment was moved past the restored ids under each odd name.
    for name in HOSTILE_TABLE_NAMES:
        assert _add_cell_without_id(target, name) > max(c[0] for c in cells_of(source, None, name))
