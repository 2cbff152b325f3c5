"""An overwrite that fails rolls the target back exactly, every driver: the target reads
back as it was before, including no part the failed restore created.

The target holds an older state of the source; the backup restored over it holds
changed, deleted and added records and one more part. The fault comes from the store
(tests/faults.py): mid-load (the stream raises once the unit has read 3/4 of what a
clean restore of it reads) or after every unit was written (before the report)."""

from __future__ import annotations

import pytest
from faults import ReadFault, fail_after_restore_writes, fail_restore_reads

from backstop.drivers.errors import PermanentError
from backstop.flows.keys import generate_keys

pytestmark = pytest.mark.integration


def injected() -> PermanentError:
    return PermanentError("injected fault: the target's disk is full")


def older_target_and_newer_backup(
    harness, run, signing: tuple[str, ...] = (), checking: tuple[str, ...] = ()
) -> tuple[list[str], str]:
    """(target, backup id): the target restored from the source's first backup; the
    backup taken after the source was mutated (a record changed, one deleted, one
    added, and a part the target does not have)."""
    source = harness.make_source()
    assert run.backup(source, *signing).code == 0
    target = harness.make_target()
    restored = run.restore(target, *checking)
    assert restored.code == 0, restored.stdout + restored.stderr
    harness.mutate(source)
    newer = run.backup(source, *signing)
    assert newer.code == 0, newer.stdout + newer.stderr
    return target, newer.json["backup_id"]


def measured_reads(harness, run, backup_id: str, monkeypatch) -> dict[str, int]:
    """What a clean restore of the backup reads from the store, per unit."""
    meter = ReadFault(injected)
    driver_class = harness.driver_class
    with monkeypatch.context() as patch:
        fail_restore_reads(patch, driver_class, meter, backup_id)
        clean = run.restore(harness.make_target(), "--backup", backup_id)
    assert clean.code == 0, clean.stdout + clean.stderr
    return meter.read_by_unit


@pytest.mark.parametrize("fault", ["mid-load", "after-writes"])
def test_a_failed_overwrite_rolls_back_exactly(harness, run, monkeypatch, fault, tmp_path):
    # After the writes, with signed backups and a restore host holding only the verify
    # key: the safety backup it takes is unsigned, and its rollback reads it all the same.
    signing, checking = (), ()
    if fault == "after-writes":
        keys = generate_keys(str(tmp_path / "keys"))
        signing = ("--signing-key", keys["files"]["signing_key"])
        checking = ("--verify-key", keys["verify_key"])
    target, backup_id = older_target_and_newer_backup(harness, run, signing, checking)
    driver_class = harness.driver_class
    if fault == "mid-load":
        reads = measured_reads(harness, run, backup_id, monkeypatch)
        meter = ReadFault(injected, {u: max(1, n * 3 // 4) for u, n in reads.items()}, 10**6)
        fail_restore_reads(monkeypatch, driver_class, meter, backup_id)
    else:
        fail_after_restore_writes(monkeypatch, driver_class, injected, backup_id, 10**6)
    before = harness.records(target)

    failed = run.restore(target, "--backup", backup_id, "--mode", "overwrite", *checking)

    assert failed.code == 1, failed.stdout + failed.stderr
    assert "injected fault" in failed.stdout + failed.stderr
    assert "rolled back" in failed.stdout + failed.stderr
    after = harness.records(target)
    for part in sorted(set(before) | set(after)):
        assert after.get(part) == before.get(part), f"{harness.id}: part {part!r} not rolled back"
