"""Round trip, every driver: backup -> restore into a fresh target -> the target reads back
(through the technology's own client) exactly as the source, fidelity set included."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_restore_into_a_fresh_target_equals_the_source(harness, run):
    source = harness.make_source()
    before = harness.digest(source)
    assert before, f"{harness.id}: the harness made an empty source"

    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    assert harness.digest(source) == before, "the backup changed its source"

    target = harness.make_target()
    restored = run.restore(target)
    assert restored.code == 0, restored.stdout + restored.stderr
    assert restored.json["verified"] is True
    assert harness.digest(target) == before
    assert harness.records(target) == harness.records(source)

    checked = run.verify()
    assert checked.code == 0 and checked.json["ok"] is True, checked.stdout
