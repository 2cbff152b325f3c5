"""A restored Schemaless target is compared with its backup: a target that differs in
one column of one cell, holds one cell more or one fewer, is refused, naming the table
and the added_id range; an equal one passes. Both ways of comparing are run: the
whole-table SHA-256 the manifest holds (a plain restore), and the per-range digests
that PostgreSQL and MariaDB compute in SQL (a restore with --until, whose expected
digests are recomputed from the files); SQLite computes those in Python."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, update

from backstop.drivers.contract import RestoreMode, RestorePlan
from backstop.drivers.registry import get_driver
from backstop.drivers.schemaless.engines import cell_table
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.flows.restore import restore
from backstop.tasks.packaging import StoreSource
from backstop.tasks.secrets import hide_secrets
from backstop.tasks.store import StoreSpec

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 1, 8, 0, 0, 123456)
# Cells in two added_id ranges (65,536 ids each): ids 1-40 and 70,001-70,040.
IDS = [*range(1, 41), *range(70_001, 70_041)]
SECOND_RANGE = "added_id 65536..131071"


def _fill(url: str) -> None:
    engine = create_engine(url)
    table = cell_table("cells")
    table.create(engine)
    rows = [
        {
            "added_id": added_id,
            "row_key": str(uuid.UUID(int=added_id * 7919)),
            "column_name": ["profile", "séance", "it's a \\ test"][added_id % 3],
            "ref_key": [0, 5, 2**62][added_id % 3],
            "body": bytes(range(256))[added_id % 200 :] + b"\x00\xff",
            "created_at": START + timedelta(seconds=added_id, microseconds=added_id),
        }
        for added_id in IDS
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    engine.dispose()


def _change(url: str, statement: Callable) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(statement(cell_table("cells")))
    engine.dispose()


MUTATIONS = {
    "one body byte": lambda t: (
        update(t)
        .where(t.c.added_id == 70_010)
        .values(body=bytes(range(256))[70_010 % 200 :] + b"\x00\xfe")
    ),
    "created_at by 1 µs": lambda t: (
        update(t)
        .where(t.c.added_id == 70_010)
        .values(created_at=START + timedelta(seconds=70_010, microseconds=70_011))
    ),
    "ref_key": lambda t: update(t).where(t.c.added_id == 70_010).values(ref_key=6),
    "one extra cell": lambda t: insert(t).values(
        added_id=70_500,
        row_key=str(uuid.UUID(int=1)),
        column_name="profile",
        ref_key=1,
        body=b"{}",
        created_at=START,
    ),
    "one missing cell": lambda t: delete(t).where(t.c.added_id == 70_010),
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def restored(request: pytest.FixtureRequest, tmp_path: Path, local_store: StoreSpec):
    """(target URL, restored unit, store) of a backup restored into a fresh target."""
    engine = request.param
    if engine == "sqlite":
        source, target = (f"sqlite:///{tmp_path / name}.db" for name in ("source", "target"))
    else:
        new_databases = request.getfixturevalue("new_databases")
        source, target = new_databases(engine, 2)
    _fill(source)
    taken = backup(
        request=hide_secrets(
            BackupRequest(technology="schemaless", sources=[source], store=local_store)
        )
    )
    outcome = restore(
        request=hide_secrets(
            RestoreRequest(
                technology="schemaless",
                store=local_store,
                targets=[target],
                backup=taken.backup_id,
            )
        )
    )
    assert outcome.verified and outcome.records == len(IDS)
    manifest = local_store.open().read_manifest("schemaless", taken.backup_id)
    return target, manifest.units[0], StoreSource(local_store.open(), "schemaless", taken.backup_id)


# None: the manifest's whole-table digest; an --until above every id: per-range digests.
UNTILS = [None, "1000000"]


def _verify(target: str, unit, source, until: str | None) -> tuple[bool, list[str]]:
    check = get_driver("schemaless").verify_unit(
        unit, target, source, RestorePlan(mode=RestoreMode.OVERWRITE, until=until)
    )
    return check.ok, check.problems


@pytest.mark.parametrize("until", UNTILS)
def test_an_equal_target_passes(restored, until: str | None) -> None:
    ok, problems = _verify(*restored, until)
    assert ok and not problems


@pytest.mark.parametrize("until", UNTILS)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_target_differing_in_one_cell_is_refused_naming_the_range(
    restored, mutation: str, until: str | None
) -> None:
    target, unit, source = restored
    _change(target, MUTATIONS[mutation])
    ok, problems = _verify(target, unit, source, until)
    assert not ok
    assert any("shard-000/cells" in p and SECOND_RANGE in p for p in problems), problems
    # The first range is equal and is not named.
    assert not any("added_id 0..65535" in p for p in problems), problems


def test_a_restore_into_a_target_that_changes_a_cell_fails(
    tmp_path: Path, local_store: StoreSpec, new_databases
) -> None:
    """Through the restore flow: a PostgreSQL trigger alters one body as the load writes
    it; the verification that follows the load refuses the restore, naming the range."""
    from backstop.drivers.errors import PermanentError

    source, target = new_databases("postgresql", 2)
    _fill(source)
    taken = backup(
        request=hide_secrets(
            BackupRequest(technology="schemaless", sources=[source], store=local_store)
        )
    )
    engine = create_engine(target)
    cell_table("cells").create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION alter_body() RETURNS trigger AS $$ BEGIN "
            "IF NEW.added_id = 70010 THEN NEW.body := NEW.body || '\\x00'::bytea; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER alter_body BEFORE INSERT ON cells "
            "FOR EACH ROW EXECUTE FUNCTION alter_body()"
        )
        held = conn.execute(select(func.count()).select_from(cell_table("cells"))).scalar_one()
    engine.dispose()
    assert held == 0
    with pytest.raises(PermanentError, match=rf"shard-000/cells: {SECOND_RANGE}: cells differ"):
        restore(
            request=hide_secrets(
                RestoreRequest(
                    technology="schemaless",
                    store=local_store,
                    targets=[target],
                    backup=taken.backup_id,
                )
            )
        )
