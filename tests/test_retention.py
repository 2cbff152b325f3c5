"""`status` and `prune`: what a store holds per source, and a retention policy that never
breaks an incremental chain, checked on real backups and by restoring what is kept."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, insert

from backstop.drivers.schemaless.engines import cell_table
from backstop.tasks.manifest import (
    ConsistencyInfo,
    DriverInfo,
    Manifest,
    QualityResult,
    Totals,
)
from backstop.tasks.retention import Inventory, plan_retention
from backstop.tasks.store import BackupFolder

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def manifest(backup_id: str, *, parent: str | None = None, sources=("sqlite:///a.db",)):
    at = datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return Manifest(
        technology="schemaless",
        backup_id=backup_id,
        backstop_version="test",
        driver=DriverInfo(name="schemaless", version="1"),
        sources=list(sources),
        started_at=at,
        finished_at=at + timedelta(minutes=1),
        consistency=ConsistencyInfo(kind="snapshot"),
        parent=parent,
        units=[],
        totals=Totals(files=1, records=1, bytes=100, raw_bytes=400),
        quality=QualityResult(status="passed"),
    )


def plan(backups: list[Manifest], incomplete=(), **policy):
    series: dict = {}
    for m in backups:
        series.setdefault((m.technology, tuple(m.sources)), []).append(m)
    for v in series.values():
        v.sort(key=lambda m: m.backup_id, reverse=True)
    inventory = Inventory(series=series, incomplete=list(incomplete), unreadable={})
    decisions = plan_retention(inventory, now=NOW, grace=timedelta(hours=24), **policy)
    return {d.backup_id: d for d in decisions}


def day(n: int, suffix: str = "0000") -> str:
    return (NOW - timedelta(days=n)).strftime("%Y%m%dT%H%M%SZ") + f"-{suffix}"


def test_keep_last_keeps_the_newest_per_source_and_every_parent_of_a_kept_incremental():
    full_old, full, inc1, inc2 = day(9), day(5), day(4), day(3)
    other = manifest(day(20), sources=("sqlite:///b.db",))
    decisions = plan(
        [
            manifest(full_old),
            manifest(full),
            manifest(inc1, parent=full),
            manifest(inc2, parent=inc1),
            other,
        ],
        keep_last=1,
        keep_days=None,
    )
    kept = {i for i, d in decisions.items() if d.keep}
    assert kept == {inc2, inc1, full, other.backup_id}  # the other source keeps its newest
    assert "parent of kept incremental" in decisions[full].reason
    assert not decisions[full_old].keep


def test_keep_days_and_keep_last_are_a_union():
    ids = [day(n) for n in (1, 2, 3, 10, 11)]
    decisions = plan([manifest(i) for i in ids], keep_last=1, keep_days=3.5)
    assert [decisions[i].keep for i in ids] == [True, True, True, False, False]
    assert "within 3.5 days" in decisions[ids[2]].reason
    decisions = plan([manifest(i) for i in ids], keep_last=4, keep_days=1.5)
    assert [decisions[i].keep for i in ids] == [True, True, True, True, False]
    assert "among the newest 4" in decisions[ids[3]].reason


def test_incomplete_folders_go_only_after_the_grace_period():
    old = BackupFolder("schemaless", day(2, "aaaa"), complete=False)
    young = BackupFolder(
        "schemaless",
        (NOW - timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ") + "-bbbb",
        complete=False,
    )
    decisions = plan([manifest(day(1))], incomplete=[old, young], keep_last=1, keep_days=None)
    assert not decisions[old.backup_id].keep
    assert (
        decisions[young.backup_id].keep
        and "may still be running" in decisions[young.backup_id].reason
    )


def add_cells(url: str, count: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(cell_table("cells")),
            [
                {"row_key": str(uuid.uuid4()), "column_name": "extra", "ref_key": i,
                 "body": b"{}", "created_at": datetime(2026, 11, 26, 12, 0)}
                for i in range(count)
            ],
        )  # fmt: skip
    engine.dispose()


def test_prune_on_real_backups_keeps_a_restorable_chain(cli, shards, local_store, tmp_path):
    store = ["--store", local_store.url]
    source = [a for url in shards for a in ("--source", url)]

    def backup(*extra: str) -> str:
        result = cli("backup", "schemaless", *source, *store, *extra, "--json")
        assert result.code == 0, result.stderr
        return result.json["backup_id"]

    first = backup()
    full = backup()
    add_cells(shards[0], 50)
    incremental = backup("--incremental")
    stale = local_store.open().backup_dir("schemaless", "20200101T000000Z-dead")
    local_store.open().fs.makedirs(stale)
    with local_store.open().fs.open(stale + "/shard-000.cells.zst", "wb") as f:
        f.write(b"partial")

    status = cli("status", *store, "--json")
    assert status.code == 0
    [row] = status.json["sources"]
    assert (row["newest_backup"], row["backups"], row["incremental"]) == (incremental, 3, True)
    assert row["stale"] is False and row["validated"] == "passed"
    assert status.json["incomplete"] == ["schemaless/20200101T000000Z-dead"]
    assert cli("status", *store, "--stale-hours", "0.0001", "--json").json["stale"] == 1

    dry = cli("prune", *store, "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0
    assert {d["backup_id"] for d in dry.json["deleted"]} == {first, "20200101T000000Z-dead"}
    assert len(local_store.open().folders()) == 4  # a dry run deletes nothing

    done = cli("prune", *store, "--keep-last", "1", "--json")
    assert done.code == 0 and done.json["freed_bytes"] > 0
    left = [f.backup_id for f in local_store.open().folders()]
    assert left == [full, incremental]

    targets = [f"sqlite:///{tmp_path / f't{i}.db'}" for i in range(len(shards))]
    restored = cli(
        "restore", "schemaless", *store, *[a for t in targets for a in ("--target", t)], "--json"
    )
    assert restored.code == 0 and restored.json["verified"] is True
    assert restored.json["records"] == 6_050


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ([], "needs a policy"),
        (["--keep-last", "0"], "--keep-last must be at least 1"),
        (["--keep-days", "-1"], "--keep-days must be more than 0"),
    ],
)
def test_prune_without_a_sane_policy_exits_2_and_deletes_nothing(
    cli, shards, local_store, flags, needle
):
    source = [a for url in shards for a in ("--source", url)]
    assert cli("backup", "schemaless", *source, "--store", local_store.url).code == 0
    result = cli("prune", "--store", local_store.url, *flags, "--json")
    assert result.code == 2 and needle in result.json["error"]
    assert len(local_store.open().folders()) == 1
