"""`latest` is the newest ordinary backup, never the safety backup an overwrite restore
took of its target: the same overwrite restore run twice leaves the backup in the
target both times, every driver."""

from __future__ import annotations

import pytest

from conformance.harness import after_overwrite

pytestmark = pytest.mark.integration


def test_the_same_overwrite_restore_twice_restores_the_backup_both_times(harness, run):
    source = harness.make_source()
    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    target = harness.make_target()
    assert run.restore(target).code == 0
    harness.mutate(target)
    mutated = harness.digest(target)
    expected = after_overwrite(harness, harness.digest(source), mutated)

    for attempt in (1, 2):
        done = run.restore(target, "--mode", "overwrite")  # no --backup: latest
        assert done.code == 0, f"attempt {attempt}: {done.stdout}{done.stderr}"
        assert done.json["backup_id"] == backed_up.json["backup_id"], f"attempt {attempt}"
        assert harness.digest(target) == expected, f"attempt {attempt}"
