"""Restore modes, every driver, with and without --include: fail-if-exists refuses a
non-empty target and leaves it untouched; overwrite replaces exactly what it covers;
merge never changes or deletes what the target holds; parts outside an --include stay
byte-identical; an --include that selects nothing is refused (exit 2)."""

from __future__ import annotations

import pytest

from conformance.harness import after_merge, after_overwrite, assert_merged

pytestmark = pytest.mark.integration


@pytest.fixture(params=["whole", "include"])
def selection(request, harness) -> list[str]:
    """No --include, or --include of one part (drivers declaring selective_restore)."""
    if request.param == "whole":
        return []
    harness.require("selective_restore")
    assert harness.include, f"{harness.id} declares selective_restore: give its harness include"
    return ["--include", harness.include]


def backed_up_and_restored(harness, run) -> tuple[list[str], str, list[str]]:
    """(source, backup id, target): the target restored from the backup, then mutated
    (records changed, deleted and added, one part added)."""
    source = harness.make_source()
    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    target = harness.make_target()
    restored = run.restore(target)
    assert restored.code == 0, restored.stdout + restored.stderr
    harness.mutate(target)
    assert harness.digest(target) != harness.digest(source), "mutate changed nothing"
    return source, backed_up.json["backup_id"], target


def included_part(harness, selection: list[str]) -> str | None:
    return harness.included_part if selection else None


def test_fail_if_exists_refuses_a_non_empty_target(harness, run, selection):
    _source, backup_id, target = backed_up_and_restored(harness, run)
    before = harness.records(target)

    refused = run.restore(target, "--backup", backup_id, "--mode", "fail-if-exists", *selection)

    assert refused.code == 2, refused.stdout + refused.stderr
    assert harness.records(target) == before


def test_a_non_empty_target_is_refused_before_the_restore_flow_starts(harness, run, monkeypatch):
    """The default mode's refusal needs the manifest and one connection, not Prefect: the
    CLI asks the driver before the flow starts (exit 2, target untouched)."""
    import backstop.flows.restore as restore_flow

    def flow_must_not_run(*args, **kwargs):
        raise AssertionError("the restore flow started for a refused restore")

    _source, _backup_id, target = backed_up_and_restored(harness, run)
    before = harness.records(target)
    monkeypatch.setattr(restore_flow, "restore", flow_must_not_run)

    refused = run.restore(target)  # no --mode: fail-if-exists, of the latest backup

    assert refused.code == 2, refused.stdout + refused.stderr
    assert refused.json["status"] == "failed"
    assert "the restore flow started" not in refused.stdout + refused.stderr
    assert harness.records(target) == before


def test_overwrite_replaces_exactly(harness, run, selection):
    source, backup_id, target = backed_up_and_restored(harness, run)
    before = harness.digest(target)

    done = run.restore(target, "--backup", backup_id, "--mode", "overwrite", *selection)

    assert done.code == 0, done.stdout + done.stderr
    assert done.json["verified"] is True
    expected = after_overwrite(
        harness, harness.digest(source), before, included_part(harness, selection)
    )
    assert harness.digest(target) == expected


def test_merge_leaves_every_existing_record_as_it_was(harness, run, selection):
    source, backup_id, target = backed_up_and_restored(harness, run)
    before = harness.records(target)

    done = run.restore(target, "--backup", backup_id, "--mode", "merge", *selection)

    assert_merged(done)
    expected = after_merge(harness.records(source), before, included_part(harness, selection))
    found = harness.records(target)
    for part in sorted(set(expected) | set(found)):
        assert found.get(part) == expected.get(part), f"{harness.id}: part {part!r} after merge"


@pytest.mark.parametrize("mode", ["fail-if-exists", "overwrite", "merge"])
def test_an_include_that_selects_nothing_is_refused(harness, run, mode):
    harness.require("selective_restore")
    source = harness.make_source()
    assert run.backup(source).code == 0
    target = harness.make_target()
    assert run.restore(target).code == 0
    before = harness.records(target)

    refused = run.restore(target, "--mode", mode, "--include", harness.include_nothing)

    assert refused.code == 2, refused.stdout + refused.stderr
    assert "matches nothing" in refused.stdout + refused.stderr
    assert harness.records(target) == before
