"""Schemaless input checks through the CLI: columns the cell model does not hold, list
options, table names from a manifest and the target engine's name limit."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, text

from backstop.drivers.errors import BadInputError, PermanentError
from backstop.drivers.schemaless import SchemalessDriver
from backstop.drivers.schemaless.engines import cell_table

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 1, 8, 0, 0)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def target_url(engine: str, tmp_path: Path, new_databases) -> str:
    if engine == "sqlite":
        return sqlite_url(tmp_path / "target.db")
    [url] = new_databases(engine, 1)
    return url


def make_cells(
    url: str, count: int, *, table: str = "cells", seed: int = 0, note: bool = False
) -> None:
    """A cell table with `count` cells; with `note`, a seventh column `note` that the
    application fills in, as a schema that grew would have."""
    cells = cell_table(table)
    engine = create_engine(url)
    with engine.begin() as conn:
        cells.create(conn)
        if note:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN note VARCHAR(40)"))
        rows = [
            {
                "row_key": str(uuid.UUID(int=seed * 1_000_000 + i)),
                "column_name": "profile",
                "ref_key": i,
                "body": b'{"n": %d}' % i,
                "created_at": START + timedelta(seconds=i),
            }
            for i in range(count)
        ]
        conn.execute(insert(cells), rows)
        if note:
            conn.execute(text(f"UPDATE {table} SET note = row_key"))
    engine.dispose()


def rows_of(url: str, columns: str = "added_id, row_key, body, created_at") -> list[tuple]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(f"SELECT {columns} FROM cells ORDER BY 1"))]
    engine.dispose()
    return rows


def backup_id(cli, source: str, store_url: str, *options: str) -> str:
    result = cli("backup", "schemaless", "--source", source, "--store", store_url, *options,
                 "--json")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    return result.json["backup_id"]


# -- columns the cell model does not hold ------------------------------------------------
def test_a_table_with_an_extra_column_is_not_backed_up_without_being_told(
    tmp_path, local_store, cli
):
    source = sqlite_url(tmp_path / "source.db")
    make_cells(source, 50, note=True)
    result = cli("backup", "schemaless", "--source", source, "--store", local_store.url, "--json")
    assert result.code == 2
    error = result.json["error"]
    assert "'cells'" in error and "note" in error and "ignore_extra_columns=true" in error
    assert local_store.open().folders() == []  # refused before anything was written

    taken = backup_id(cli, source, local_store.url, "--option", "ignore_extra_columns=true")
    manifest = local_store.open().read_manifest("schemaless", taken)
    assert manifest.units[0].meta["tables"]["cells"]["ignored_columns"] == ["note"]
    assert manifest.units[0].records == 50


@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mariadb"])
def test_overwrite_or_merge_into_a_table_with_an_extra_column_is_refused(
    engine, tmp_path, local_store, cli, new_databases
):
    source = sqlite_url(tmp_path / "source.db")
    make_cells(source, 60, seed=1)
    taken = backup_id(cli, source, local_store.url)
    target = target_url(engine, tmp_path, new_databases)
    make_cells(target, 30, seed=2, note=True)
    before = rows_of(target, "added_id, row_key, note")
    assert all(note for _, _, note in before)

    restore = ("restore", "schemaless", "--store", local_store.url, "--target", target,
               "--backup", taken, "--json")  # fmt: skip
    for mode in ("overwrite", "merge"):
        result = cli(*restore, "--mode", mode)
        assert result.code == 2, (mode, result.stdout)
        error = result.json["error"]
        assert "'cells'" in error and "note" in error and "ignore_extra_columns" in error
        assert rows_of(target, "added_id, row_key, note") == before  # untouched, notes kept

    result = cli(*restore, "--mode", "overwrite", "--option", "ignore_extra_columns=true")
    assert result.code == 0, result.stdout + result.stderr
    assert len(rows_of(target)) == 60
    # What a failed overwrite's rollback does: its safety backup (taken without the
    # column, as the restore was told) goes back over the same table, and is accepted.
    safety = result.json["safety_backup"]
    result = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                 "--backup", safety, "--mode", "overwrite", "--no-safety-backup", "--json")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    assert [r[:2] for r in rows_of(target, "added_id, row_key")] == [r[:2] for r in before]


# -- list options ------------------------------------------------------------------------
def test_the_tables_option_names_tables_not_letters(tmp_path, local_store, cli):
    source = sqlite_url(tmp_path / "source.db")
    make_cells(source, 40, table="cells", seed=1)
    make_cells(source, 30, table="trips", seed=2)

    result = cli("backup", "schemaless", "--source", source, "--store", local_store.url,
                 "--option", "tables=cells", "--json")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr  # not "no cell table named c, e, l, s"
    assert result.json["records"] == 40
    manifest = local_store.open().read_manifest("schemaless", result.json["backup_id"])
    assert list(manifest.units[0].meta["tables"]) == ["cells"]

    taken = backup_id(cli, source, local_store.url, "--option", "tables=trips, cells")
    manifest = local_store.open().read_manifest("schemaless", taken)
    assert sorted(manifest.units[0].meta["tables"]) == ["cells", "trips"]

    result = cli("backup", "schemaless", "--source", source, "--store", local_store.url,
                 "--option", "tables=cells,nope", "--json")  # fmt: skip
    assert result.code == 2 and "'nope'" in result.json["error"]


@pytest.mark.parametrize(
    "options",
    [
        {"tables": 5},
        {"tables": ["cells", 3]},
        {"tables": {"cells": 1}},
        {"ignore_extra_columns": "maybe"},
    ],
)
def test_option_values_of_the_wrong_type_are_refused(options, tmp_path):
    source = sqlite_url(tmp_path / "source.db")
    make_cells(source, 5)
    with pytest.raises(BadInputError, match="option"):
        SchemalessDriver().plan_backup([source], options)


# -- table names from a manifest and the target's limits ---------------------------------
@pytest.mark.parametrize("bad_name", ["cells\x00; DROP TABLE victim", "t" * 5_000, 42])
def test_a_manifest_naming_an_impossible_table_restores_nothing(
    bad_name, tmp_path, local_store, cli
):
    source = sqlite_url(tmp_path / "source.db")
    make_cells(source, 20)
    taken = backup_id(cli, source, local_store.url)
    path = tmp_path / "store" / "schemaless" / taken / "manifest.json"
    manifest = json.loads(path.read_text())
    unit = manifest["units"][0]
    unit["files"][0]["meta"]["table"] = bad_name
    unit["meta"]["tables"] = {str(bad_name): unit["meta"]["tables"]["cells"]}
    path.write_text(json.dumps(manifest))

    target = tmp_path / "target.db"
    result = cli("restore", "schemaless", "--store", local_store.url, "--target",
                 sqlite_url(target), "--backup", taken, "--json")  # fmt: skip
    assert result.code == 1, result.stdout + result.stderr
    assert "manifest names a table" in result.json["error"]
    assert not target.exists()


def test_a_table_name_longer_than_postgresql_allows_is_refused_not_truncated(
    tmp_path, local_store, cli, new_databases
):
    source = sqlite_url(tmp_path / "source.db")
    long_name = "cells_" + "x" * 60  # 66 bytes: PostgreSQL would keep the first 63
    make_cells(source, 10, table=long_name)
    taken = backup_id(cli, source, local_store.url)
    [target] = new_databases("postgresql", 1)
    result = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                 "--backup", taken, "--json")  # fmt: skip
    assert result.code == 2
    assert long_name in result.json["error"] and "63" in result.json["error"]
    engine = create_engine(target)
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        tables = tables.all()
    engine.dispose()
    assert tables == []


def test_planning_a_backup_names_the_shard_it_cannot_read(tmp_path, new_databases):
    good = sqlite_url(tmp_path / "source.db")
    make_cells(good, 5)
    [server] = new_databases("postgresql", 1)
    wrong = server.replace("s3cret-Test-pw", "wrong-pw-123")
    assert wrong != server
    with pytest.raises(PermanentError) as caught:
        SchemalessDriver().plan_backup([good, wrong], {})
    assert str(caught.value).startswith("shard-001 (")
    assert "wrong-pw-123" not in str(caught.value)
    missing = sqlite_url(tmp_path / "missing.db")
    with pytest.raises(PermanentError, match=r"^shard-001: .*does not exist"):
        SchemalessDriver().plan_backup([good, missing], {})
