"""A backup checks its data in one pass, every driver.

A driver that hands the quality suite its records' columns as it packages them
(FileSink.observe: Schemaless, Docstore, ZooKeeper) has every record parsed once: the
backup's validation then reads back only the stored bytes (size, SHA-256, zstd frame
checksum), never the records. A driver that does not (the kvdir plugin) keeps the
read-back pass that runs its suite. Either way the manifest holds the suite's verdicts
and a read-back check of every file, and a stored file damaged after it was written
fails the backup (no manifest: it is no backup at all)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

OBSERVING = ("schemaless", "docstore", "zookeeper")  # drivers that call sink.observe


def count_calls(monkeypatch, driver_class, method: str) -> list[str]:
    """Record each call of `driver_class.method` (by the unit it was called for)."""
    calls: list[str] = []
    original = getattr(driver_class, method)

    def counted(self, unit, *args, **kwargs):
        calls.append(unit.name)
        return original(self, unit, *args, **kwargs)

    monkeypatch.setattr(driver_class, method, counted)
    return calls


def test_the_suite_runs_as_the_backup_is_packaged_and_records_are_parsed_once(
    harness, run, local_store, monkeypatch
):
    source = harness.make_source()
    reparsed = count_calls(monkeypatch, harness.driver_class, "quality_chunks")

    backed_up = run.backup(source)

    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    manifest = local_store.open().read_manifest(harness.technology, backed_up.json["backup_id"])
    assert manifest.quality.status == "passed"
    checks = manifest.quality.checks
    assert any(c["check"].startswith("gx:") for c in checks), checks  # the suite ran
    assert any(c["check"].startswith("unique across the part") for c in checks), checks
    read_back = {c["file"] for c in checks if c["check"] == "read-back" and c["passed"]}
    assert read_back == {f.name for unit in manifest.units for f in unit.files}
    if harness.technology in OBSERVING:
        # The validation parsed no record a second time (a unit with no records has
        # nothing to observe: its read-back pass parses nothing either).
        holding = {u.name for u in manifest.units if u.records}
        assert holding and not set(reparsed) & holding, reparsed
    else:
        assert reparsed, "a driver that observes nothing keeps the read-back suite pass"


def test_a_stored_file_damaged_after_it_was_written_fails_the_backup(
    harness, run, local_store, monkeypatch
):
    """The read-back checks the stored bytes, not what the packaging saw: one byte of
    a data file flipped in the store between the snapshot and the validation is caught
    (the suite, run in the packaging pass, saw the good records)."""
    source = harness.make_source()
    root = Path(local_store.url.removeprefix("file://"))
    original = harness.driver_class.backup_unit
    damaged: list[str] = []  # the damaged file's name in the backup folder

    def backup_unit(self, unit, sink):
        result = original(self, unit, sink)
        if not damaged:  # the largest file this unit stored
            largest = max(sink.files, key=lambda f: f.bytes)
            [path] = root.glob(f"{harness.technology}/*/{largest.name}")
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x40
            path.write_bytes(bytes(data))
            damaged.append(largest.name)
        return result

    monkeypatch.setattr(harness.driver_class, "backup_unit", backup_unit)
    backed_up = run.backup(source)

    assert damaged, "no file was damaged"
    assert backed_up.code == 1, backed_up.stdout + backed_up.stderr
    assert "failed its read-back" in backed_up.json["error"]
    assert damaged[0] in backed_up.json["error"]
    assert not [f for f in local_store.open().folders() if f.complete]
