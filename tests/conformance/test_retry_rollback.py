"""A unit of an overwrite that fails once and succeeds on its retry does not roll the
target back, every driver: only the restore's own failure, once every unit has stopped,
restores the safety backup.

Prefect rolls a failed task run's transaction back and its parent's with it, even when
the run is retried; a unit running inside the restore's transaction would so start the
rollback (a safety-backup restore) while the other units are still loading, and the
target ends up a mix of the two (Docstore on FerretDB: the replaced documents back,
"the digest of (_id, raw document) differs", or "index ... already exists")."""

from __future__ import annotations

import logging

import pytest
from faults import fail_after_restore_writes

from backstop.drivers.errors import TransientError
from conformance.harness import after_overwrite

pytestmark = pytest.mark.integration


def injected() -> TransientError:
    return TransientError("injected fault: connection reset by peer")


def test_a_retried_unit_does_not_roll_the_overwrite_back(harness, run, monkeypatch, caplog):
    source = harness.make_source()
    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    backup_id = backed_up.json["backup_id"]
    target = harness.make_target()
    assert run.restore(target).code == 0
    harness.mutate(target)  # the overwrite replaces something: a safety backup is taken
    before = harness.digest(target)
    fired = fail_after_restore_writes(
        monkeypatch, harness.driver_class, injected, backup_id, times=1
    )

    with caplog.at_level(logging.INFO):
        done = run.restore(target, "--backup", backup_id, "--mode", "overwrite")

    assert len(fired) == 1, "the fault was never injected"
    assert done.code == 0, done.stdout + done.stderr
    assert "rolling the targets back" not in caplog.text, "a retried unit rolled the target back"
    assert harness.digest(target) == after_overwrite(harness, harness.digest(source), before)
