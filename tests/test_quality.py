"""Data quality: the Great Expectations suites catch what checksums cannot.

The corruptions here keep every checksum consistent (the manifest is rewritten to
match), so `verify` passes and only the quality step can catch them."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import zstandard

from backstop.drivers.contract import QualityChunk, QualityPart
from backstop.drivers.schemaless.cells import pack_cells, read_cells
from backstop.tasks.quality import KeyLedger, LedgerBudget, key_hashes, run_suite


def rewrite_backup_file(store: Path, technology: str, backup_id: str, edit) -> None:
    """Replace one data file's content by edit(content), with matching checksums."""
    folder = store / technology / backup_id
    manifest = json.loads((folder / "manifest.json").read_text())
    unit = manifest["units"][0]
    entry = unit["files"][0]
    path = folder / entry["name"]
    raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True)
    content = edit(raw.read())
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(content)
    path.write_bytes(stored)
    entry.update(
        bytes=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        raw_bytes=len(content),
        raw_sha256=hashlib.sha256(content).hexdigest(),
    )
    manifest["totals"]["bytes"] = sum(f["bytes"] for u in manifest["units"] for f in u["files"])
    manifest["totals"]["raw_bytes"] = sum(
        f["raw_bytes"] for u in manifest["units"] for f in u["files"]
    )
    (folder / "manifest.json").write_text(json.dumps(manifest))


def corrupt_cells(content: bytes) -> bytes:
    """Cell 10 gets a negative ref_key, cell 20 a row_key that is no UUID."""
    import io

    cells = [c for batch in read_cells(io.BytesIO(content), 1_000_000) for c in batch]
    added, rk, col, ref, body, micros = cells[10]
    cells[10] = (added, rk, col, -7, body, micros)
    added, rk, col, ref, body, micros = cells[20]
    cells[20] = (added, "not-a-uuid-but-36-characters-long!!", col, ref, body, micros)
    return pack_cells(cells)[0]


def test_a_corrupted_but_checksum_consistent_backup_is_caught_only_by_quality(
    cli, shards, local_store, tmp_path
):
    store = Path(local_store.url.removeprefix("file://"))
    backed_up = cli("backup", "schemaless", "--source", shards[0], "--store", local_store.url,
                    "--json")  # fmt: skip
    assert backed_up.code == 0
    backup_id = backed_up.json["backup_id"]
    rewrite_backup_file(store, "schemaless", backup_id, corrupt_cells)

    verified = cli("verify", "--store", local_store.url, "--json")
    assert verified.code == 0 and verified.json["ok"] is True  # every checksum agrees

    target = f"sqlite:///{tmp_path / 'target.db'}"
    restored = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                   "--json")  # fmt: skip
    assert restored.code == 1
    error = restored.json["error"]
    assert "data-quality" in error
    assert "expect_column_values_to_be_between(column=ref_key" in error
    assert "expect_column_values_to_match_regex(column=row_key" in error


def test_a_source_breaking_the_suite_is_backed_up_marked_and_restored_only_with_force(
    cli, shards, local_store, tmp_path
):
    with sqlite3.connect(shards[0].removeprefix("sqlite:///")) as db:
        db.execute(
            "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
            "VALUES ('nope', 'c', -1, X'00', '2026-11-26 00:00:00.000000')"
        )
    backed_up = cli("backup", "schemaless", "--source", shards[0], "--store", local_store.url,
                    "--json")  # fmt: skip
    assert backed_up.code == 1 and "failed its data-quality checks" in backed_up.json["error"]
    [folder] = local_store.open().folders()
    assert folder.complete  # kept: the data is as the source holds it
    manifest = local_store.open().read_manifest("schemaless", folder.backup_id)
    assert manifest.quality.status == "failed"
    failed = {c["check"].split("(")[0] for c in manifest.quality.checks if not c["passed"]}
    assert failed == {
        "gx:expect_column_values_to_match_regex",
        "gx:expect_column_values_to_be_between",
    }
    status = cli("status", "--store", local_store.url, "--json")
    assert status.json["sources"][0]["validated"] == "failed"

    target = f"sqlite:///{tmp_path / 'target.db'}"
    refused = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                  "--json")  # fmt: skip
    assert refused.code == 1 and "--force" in refused.json["error"]
    assert not (tmp_path / "target.db").exists()
    forced = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                 "--force", "--json")  # fmt: skip
    assert forced.code == 0 and forced.json["verified"] is True
    assert forced.json["quality"] == "failed (forced)"
    assert forced.json["records"] == 3_001  # the template's 3,000 cells and the bad one


def chunks(part: str, columns: dict[str, list], size: int):
    n = len(next(iter(columns.values())))
    for i in range(0, n, size):
        yield QualityChunk(part=part, columns={k: v[i : i + size] for k, v in columns.items()})


def failed_checks(checks: list[dict]) -> dict[str, int]:
    return {c["check"]: c["unexpected"] for c in checks if not c["passed"]}


def test_a_source_whose_backups_all_failed_quality_never_makes_another_sources_latest(
    cli, shards, local_store, tmp_path
):
    """Grouped by source before the quality rule: shard A's only backup failed its
    checks, shard B's passed; `latest` is still ambiguous (exit 2 naming both), and
    `--source A` says to use --force, rather than restoring B's data."""
    bad, good = shards
    with sqlite3.connect(bad.removeprefix("sqlite:///")) as db:
        db.execute(
            "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
            "VALUES ('nope', 'c', -1, X'00', '2026-11-26 00:00:00.000000')"
        )
    store = ("--store", local_store.url)
    assert cli("backup", "schemaless", "--source", bad, *store, "--json").code == 1
    assert cli("backup", "schemaless", "--source", good, *store, "--json").code == 0
    target = f"sqlite:///{tmp_path / 'target.db'}"
    ambiguous = cli("restore", "schemaless", *store, "--target", target, "--json")
    assert ambiguous.code == 2, ambiguous.stdout
    assert "2 different sources" in ambiguous.json["error"]
    of_bad = cli("restore", "schemaless", *store, "--target", target, "--source", bad, "--json")
    assert of_bad.code == 1 and "--force" in of_bad.json["error"], of_bad.stdout
    assert not (tmp_path / "target.db").exists()


def test_duplicates_in_different_chunks_are_found_across_the_part():
    ids = [bytes([7]) + i.to_bytes(12, "big") for i in range(25_000)]
    ids[24_000] = ids[3]  # in another chunk than its twin
    checks = run_suite("docstore", chunks("shop.orders", {"_id": ids}, 10_000),
                       {"shop.orders": QualityPart(records=25_000)})  # fmt: skip
    assert failed_checks(checks) == {"unique across the part: _id": 1}


def test_zookeeper_suite_needs_every_parent_and_absolute_unique_paths():
    paths = ["/", "/app", "/app/a", "/app/b", "/orphan/child", "relative"]
    parents = [None, "/", "/app", "/app", "/orphan", None]
    checks = run_suite("zookeeper", chunks("tree", {"path": paths, "parent": parents}, 4),
                       {"tree": QualityPart(records=7)})  # fmt: skip
    assert failed_checks(checks) == {
        "gx:expect_column_values_to_match_regex(column=path, regex=^/)": 1,
        "every parent present": 1,
        "count equals the source's": 1,
    }


def test_schemaless_order_and_watermark_are_checked_across_chunks():
    n = 30
    columns = {
        "added_id": [*range(1, 21), 15, *range(22, 31)],  # 15 again, in the last chunk
        "row_key": [f"{i:08d}-0000-4000-8000-000000000000" for i in range(n)],
        "column_name": ["c"] * n,
        "ref_key": list(range(n)),
    }
    checks = run_suite("schemaless", chunks("cells", columns, 10),
                       {"cells": QualityPart(records=n, max_values={"added_id": 29})})  # fmt: skip
    assert failed_checks(checks) == {
        "added_id strictly increasing": 1,
        "gx:expect_column_values_to_be_between(column=added_id, max_value=29.0, min_value=1.0)": 1,
    }


def test_key_ledger_spills_to_disk_and_counts_missing_keys(tmp_path):
    def hashed(values: list[str]):
        return key_hashes(pd.DataFrame({"path": values}))

    paths, parents = KeyLedger(tmp_path, "paths"), KeyLedger(tmp_path, "parents")
    total = 300_000  # two spills of 140,000 (7 adds past BUFFERED), 20,000 in memory
    for start in range(0, total, 20_000):
        paths.add(hashed([f"/n{i}" for i in range(start, start + 20_000)]))
    parents.add(hashed(["/n5", f"/n{total - 1}", "/gone", "/also-gone"]))
    assert paths.count == total and paths.duplicates() == 0
    assert parents.missing_from(paths) == 2
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("paths-*.u64"))
    assert KeyLedger.BUFFERED == 131_072 and on_disk == 8 * 280_000
    assert not list(tmp_path.glob("parents-*"))  # a small ledger never touches the disk
    # A key seen on disk and again in memory, and one seen twice in memory only.
    paths.add(hashed(["/n5", "/again", "/again"]))
    assert paths.duplicates() == 2


def test_a_units_ledgers_hold_one_buffer_in_memory_together(tmp_path):
    """One ledger per part and key: a shard of many tables must not hold a buffer per
    ledger (100 parts of 130,000 keys held 99 MiB)."""
    budget = LedgerBudget()
    ledgers = [KeyLedger(tmp_path, f"part{i}", budget) for i in range(40)]
    for i, ledger in enumerate(ledgers):
        ledger.add(key_hashes(pd.DataFrame({"k": range(i * 10_000, (i + 1) * 10_000)})))
        assert sum(len(each._in_memory()) for each in ledgers) < KeyLedger.BUFFERED
    assert [ledger.count for ledger in ledgers] == [10_000] * 40
    assert sum(ledger.duplicates() for ledger in ledgers) == 0
    assert (
        ledgers[0].missing_from(ledgers[0]) == 0 and ledgers[1].missing_from(ledgers[0]) == 10_000
    )


def test_a_failed_overwrite_rolls_the_target_back_to_its_safety_backup(
    cli, shards, local_store, tmp_path
):
    store = Path(local_store.url.removeprefix("file://"))
    target = f"sqlite:///{tmp_path / 'target.db'}"
    first = cli("backup", "schemaless", "--source", shards[0], "--store", local_store.url,
                "--json")  # fmt: skip
    assert cli("restore", "schemaless", "--store", local_store.url, "--target", target).code == 0
    before = cells_in(tmp_path / "target.db")

    with sqlite3.connect(shards[0].removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM cells WHERE added_id > 1000")
    second = cli("backup", "schemaless", "--source", shards[0], "--store", local_store.url,
                 "--json")  # fmt: skip
    rewrite_backup_file(store, "schemaless", second.json["backup_id"], corrupt_cells)

    failed = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
                 "--backup", second.json["backup_id"], "--mode", "overwrite", "--json")  # fmt: skip
    assert failed.code == 1
    assert "data-quality" in failed.json["error"]
    assert "rolled back to safety backup" in failed.json["error"]
    assert cells_in(tmp_path / "target.db") == before  # as it was, cell for cell

    good = cli("restore", "schemaless", "--store", local_store.url, "--target", target,
               "--backup", first.json["backup_id"], "--mode", "overwrite", "--json")  # fmt: skip
    assert good.code == 0 and good.json["safety_backup"]
    assert cells_in(tmp_path / "target.db") == before


def cells_in(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM cells ORDER BY added_id").fetchall()


def both_passes(columns: dict[str, list], parts: dict[str, QualityPart], size: int) -> list:
    """A Schemaless part's verdicts from the read-back pass (its bounds known first),
    which the packaging pass (bounds learned last) must give alike."""
    from backstop.tasks.quality import SuiteRun

    read_back = run_suite("schemaless", chunks("cells", columns, size), parts, "shard-000")
    with SuiteRun("schemaless", "shard-000", bounds_later=True) as run:
        for chunk in chunks("cells", columns, size):
            run.add(chunk)
        packaged = run.verdicts(parts)
    assert packaged == read_back
    return packaged


def test_the_packaging_pass_gives_the_read_back_verdicts_with_bounds_learned_last():
    """The backup's packaging pass learns a part's bounds (the watermark) only once the
    driver is done: the rules bounded by it keep their column on disk, and the verdicts
    are those of the read-back pass, a value above the watermark included."""
    n = 30
    columns = {
        "added_id": [*range(1, 25), 40, *range(26, 31)],  # 40: above the watermark 30
        "row_key": [f"{i:08d}-0000-4000-8000-000000000000" for i in range(n)],
        "column_name": ["c"] * n,
        "ref_key": [*range(n - 1), -1],
    }
    parts = {"cells": QualityPart(records=n + 1, max_values={"added_id": 30})}
    assert failed_checks(both_passes(columns, parts, 10)) == {
        "gx:expect_column_values_to_be_between(column=added_id, max_value=30.0, min_value=1.0)": 1,
        "gx:expect_column_values_to_be_between(column=ref_key, min_value=0.0)": 1,
        "added_id strictly increasing": 1,
        "count equals the source's": 1,
    }


def test_an_added_id_one_above_a_watermark_past_2_to_the_53_fails_in_both_passes():
    """Great Expectations makes bounds floats: 2**53 + 1 and 2**53 are one float, and an
    added_id one above the watermark passed. The read-back and the packaging pass judge
    integers exactly; the NULL ref_key is skipped as Great Expectations skips it."""
    watermark = 2**53
    columns = {
        "added_id": [watermark - 2, watermark - 1, watermark, watermark + 1],
        "row_key": [f"{i:08d}-0000-4000-8000-000000000000" for i in range(4)],
        "column_name": ["c"] * 4,
        "ref_key": [0, None, 2**62, 2**63 - 1],
    }
    parts = {"cells": QualityPart(records=4, max_values={"added_id": watermark})}
    packaged = both_passes(columns, parts, 3)
    rule = (
        "expect_column_values_to_be_between"
        "(column=added_id, max_value=9007199254740992.0, min_value=1.0)"
    )
    assert failed_checks(packaged) == {f"gx:{rule}": 1}
    [failed] = [c for c in packaged if not c["passed"]]
    assert failed["sample"] == [str(watermark + 1)]
    assert failed["problem"] == f"shard-000/cells: 1 records fail {rule}"


@pytest.mark.parametrize("size", [31, 10, 1])
def test_a_part_of_one_chunk_is_validated_in_one_call_with_the_same_verdicts(monkeypatch, size):
    """The packaging pass holds a part's first chunk until its bounds are known: a part
    of one chunk (a small shard's table) makes one Great Expectations call, not one for
    the chunk and one for the watermark, and every chunking gives the read-back's
    verdicts, a value above the watermark included."""
    from backstop.tasks import quality

    n = 31
    columns = {
        "added_id": [*range(1, 25), 40, *range(26, 32)],  # 40: above the watermark 31
        "row_key": [f"{i:08d}-0000-4000-8000-000000000000" for i in range(n)],
        "column_name": ["c"] * n,
        "ref_key": [*range(n - 1), -1],
    }
    parts = {"cells": QualityPart(records=n, max_values={"added_id": 31})}
    calls = []
    validate = quality._validate
    monkeypatch.setattr(quality, "_validate", lambda *a: calls.append(1) or validate(*a))

    with quality.SuiteRun("schemaless", "shard-000", bounds_later=True) as run:
        for chunk in chunks("cells", columns, size):
            run.add(chunk)
        packaged = run.verdicts(parts)

    assert len(calls) == (1 if size == n else -(-n // size) + 1)
    assert packaged == run_suite("schemaless", chunks("cells", columns, size), parts, "shard-000")
    assert failed_checks(packaged) == {
        "gx:expect_column_values_to_be_between(column=added_id, max_value=31.0, min_value=1.0)": 1,
        "gx:expect_column_values_to_be_between(column=ref_key, min_value=0.0)": 1,
        "added_id strictly increasing": 1,
    }


def test_held_first_chunks_stay_within_one_budget_however_many_parts(monkeypatch):
    """A shard of many small tables: each table's first chunk waits for its bounds, but
    all of them together hold at most _HELD_ROWS records; the others are validated as
    they come. The verdicts are the read-back's either way."""
    from backstop.tasks import quality

    monkeypatch.setattr(quality, "_HELD_ROWS", 25)
    columns = {
        "added_id": list(range(1, 11)),
        "row_key": [f"{i:08d}-0000-4000-8000-000000000000" for i in range(10)],
        "column_name": ["c"] * 10,
        "ref_key": list(range(10)),
    }
    tables = [f"t{i}" for i in range(12)]
    parts = {t: QualityPart(records=10, max_values={"added_id": 9}) for t in tables}  # 10 fails
    with quality.SuiteRun("schemaless", "shard-000", bounds_later=True) as run:
        for table in tables:
            run.add(QualityChunk(part=table, columns=columns))
            held = [s.held for s in run._states.values() if s.held is not None]
            assert run._held_rows == 10 * len(held) <= 25
        assert len(held) == 2
        packaged = run.verdicts(parts)
    read_back = run_suite(
        "schemaless", (QualityChunk(part=t, columns=columns) for t in tables), parts, "shard-000"
    )
    assert packaged == read_back
    assert sum(not c["passed"] for c in packaged) == len(tables)  # each table's added_id 10
