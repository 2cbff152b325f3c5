"""A transient fault mid-backup or mid-restore is retried, and the retry gives exactly the
result a clean run gives, every driver: a retried task starts from the state before its
first attempt (no "node exists", no duplicate key, no half-written file left behind)."""

from __future__ import annotations

import pytest
from faults import ReadFault, fail_after_restore_writes, fail_backup_write_once, fail_restore_reads

from backstop.drivers.errors import TransientError
from conformance.harness import after_merge, after_overwrite, assert_merged

pytestmark = pytest.mark.integration


def injected() -> TransientError:
    return TransientError("injected fault: connection reset by peer")


def test_a_transient_fault_mid_backup_is_retried_to_the_exact_backup(harness, run, monkeypatch):
    source = harness.make_source()
    expected = harness.digest(source)
    writes = fail_backup_write_once(monkeypatch, harness.driver_class, injected)

    backed_up = run.backup(source)

    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    assert writes["fired"] == 1, "the fault was never injected"
    monkeypatch.undo()
    assert run.verify().json["ok"] is True
    target = harness.make_target()
    restored = run.restore(target)
    assert restored.code == 0, restored.stdout + restored.stderr
    assert harness.digest(target) == expected


def target_for(harness, run, mode: str, source: list[str]) -> list[str]:
    """A fresh target for fail-if-exists; for overwrite and merge, one restored from the
    backup and then mutated."""
    target = harness.make_target()
    if mode != "fail-if-exists":
        assert run.restore(target).code == 0
        harness.mutate(target)
    return target


@pytest.mark.parametrize(
    ("fault", "mode"),
    [
        ("mid-load", "fail-if-exists"),
        ("mid-load", "overwrite"),
        ("mid-load", "merge"),
        ("after-writes", "fail-if-exists"),
    ],
)
def test_a_transient_fault_mid_restore_is_retried_to_the_exact_result(
    harness, run, monkeypatch, fault, mode
):
    source = harness.make_source()
    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    backup_id = backed_up.json["backup_id"]
    driver_class = harness.driver_class
    if fault == "mid-load":
        meter = ReadFault(injected)
        with monkeypatch.context() as patch:
            fail_restore_reads(patch, driver_class, meter, backup_id)
            assert run.restore(harness.make_target(), "--backup", backup_id).code == 0
        reads = meter.read_by_unit
    target = target_for(harness, run, mode, source)
    before_digest, before_records = harness.digest(target), harness.records(target)
    if fault == "mid-load":
        fault_at = ReadFault(injected, {u: max(1, n * 3 // 4) for u, n in reads.items()})
        fail_restore_reads(monkeypatch, driver_class, fault_at, backup_id)
        fired = fault_at.fired
    else:
        fired = fail_after_restore_writes(monkeypatch, driver_class, injected, backup_id, 1)

    done = run.restore(target, "--backup", backup_id, "--mode", mode)

    assert len(fired) == 1, "the fault was never injected"
    if mode == "merge":
        assert_merged(done)
        expected = after_merge(harness.records(source), before_records)
        assert harness.records(target) == expected
    else:
        assert done.code == 0, done.stdout + done.stderr
        assert harness.digest(target) == after_overwrite(
            harness, harness.digest(source), before_digest
        )
