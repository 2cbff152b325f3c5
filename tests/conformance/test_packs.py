"""Small units share a task run (a pack, tasks/packs.py), every driver: a transient
failure of one unit's step retries that unit's step alone; every other unit of the pack
is snapshotted, read back, loaded and verified once. The backup round-trips exactly,
and the restore counts every record as written, none as skipped."""

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


class FailOneUnitOnce:
    """Wraps a step function: counts its calls per unit, and its very first call (one
    unit's) raises a transient error before doing anything."""

    def __init__(self, step) -> None:
        self.step, self.calls, self.failed = step, Counter(), None
        self._lock = threading.Lock()

    def __call__(self, technology, store, backup_id, unit, *args):
        with self._lock:
            self.calls[unit.name] += 1
            first = self.failed is None
            if first:
                self.failed = unit.name
        if first:
            raise TransientError(f"injected fault in the second step of {unit.name}")
        return self.step(technology, store, backup_id, unit, *args)

    def assert_only_the_failed_unit_ran_twice(self, units: Counter) -> None:
        assert self.failed is not None, "the fault was never injected"
        assert set(self.calls) == set(units), (self.calls, units)
        expected = {name: 2 if name == self.failed else 1 for name in units}
        assert dict(self.calls) == expected, self.calls


def test_in_a_pack_only_the_unit_that_failed_runs_its_step_again(harness, run, monkeypatch):
    monkeypatch.setenv("BACKSTOP_UNITS_PER_TASK", "64")  # every unit in one task run
    source = harness.make_source()
    expected = harness.digest(source)
    snapshots = counting(monkeypatch, harness.driver_class, "backup_unit")
    read_back = FailOneUnitOnce(backup_tasks.read_back)
    monkeypatch.setattr(backup_tasks, "read_back", read_back)

    backed_up = run.backup(source)

    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    read_back.assert_only_the_failed_unit_ran_twice(snapshots)
    assert all(n == 1 for n in snapshots.values()), f"snapshot taken again: {snapshots}"

    loads = counting(monkeypatch, harness.driver_class, "restore_unit")
    verification = FailOneUnitOnce(verify_tasks.verified_target)
    monkeypatch.setattr(restore_tasks, "verified_target", verification)
    monkeypatch.setattr(verify_tasks, "verified_target", verification)
    target = harness.make_target()

    restored = run.restore(target)

    assert restored.code == 0, restored.stdout + restored.stderr
    verification.assert_only_the_failed_unit_ran_twice(loads)
    assert all(n == 1 for n in loads.values()), f"unit loaded again: {loads}"
    assert restored.json["records_skipped"] == 0, restored.json
    assert restored.json["records"] == backed_up.json["records"], restored.json
    assert harness.digest(target) == expected
