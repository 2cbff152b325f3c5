"""A unit's task runs two steps (a snapshot and its read-back; a load and its target's
verification), every driver: a transient failure of the second step retries the second
step alone. The unit is snapshotted, or loaded, once; the backup round-trips exactly and
the restore counts every record it wrote as written, none as skipped (a load re-run
after its commit would count them skipped)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from faults import counting

from backstop.drivers.errors import TransientError
from backstop.tasks import backup as backup_tasks
from backstop.tasks import restore as restore_tasks
from backstop.tasks import verify as verify_tasks

pytestmark = pytest.mark.integration


class FailFirstCall:
    """Wraps a step function: its first call for each unit raises a transient error
    before doing anything; later calls run it."""

    def __init__(self, step) -> None:
        self.step, self.failed, self._lock = step, Counter(), threading.Lock()

    def __call__(self, technology, store, backup_id, unit, *args):
        with self._lock:
            self.failed[unit.name] += 1
            first = self.failed[unit.name] == 1
        if first:
            raise TransientError(f"injected fault in the second step of {unit.name}")
        return self.step(technology, store, backup_id, unit, *args)


def test_a_failed_read_back_is_retried_alone(harness, run, monkeypatch):
    source = harness.make_source()
    expected = harness.digest(source)
    snapshots = counting(monkeypatch, harness.driver_class, "backup_unit")
    fault = FailFirstCall(backup_tasks.read_back)
    monkeypatch.setattr(backup_tasks, "read_back", fault)

    backed_up = run.backup(source)

    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    assert snapshots and set(fault.failed) == set(snapshots), "the fault was never injected"
    assert all(n == 2 for n in fault.failed.values()), fault.failed  # failed, then retried
    assert all(n == 1 for n in snapshots.values()), f"snapshot taken again: {snapshots}"
    monkeypatch.undo()
    assert run.verify().json["ok"] is True
    target = harness.make_target()
    restored = run.restore(target)
    assert restored.code == 0, restored.stdout + restored.stderr
    assert harness.digest(target) == expected


def test_a_failed_verification_is_retried_alone(harness, run, monkeypatch):
    source = harness.make_source()
    expected = harness.digest(source)
    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    loads = counting(monkeypatch, harness.driver_class, "restore_unit")
    fault = FailFirstCall(verify_tasks.verified_target)
    # The fused task (a target per unit) and the verify task (a shared target) each
    # call it from their own module.
    monkeypatch.setattr(restore_tasks, "verified_target", fault)
    monkeypatch.setattr(verify_tasks, "verified_target", fault)
    target = harness.make_target()

    restored = run.restore(target)

    assert restored.code == 0, restored.stdout + restored.stderr
    assert loads and set(fault.failed) == set(loads), "the fault was never injected"
    assert all(n == 2 for n in fault.failed.values()), fault.failed
    assert all(n == 1 for n in loads.values()), f"unit loaded again: {loads}"
    assert restored.json["records_skipped"] == 0, restored.json
    assert restored.json["records"] == backed_up.json["records"], restored.json
    assert harness.digest(target) == expected
