"""A drill never writes into its source, nor a restore into one place twice, whatever
the spelling of the URLs (another host name for the same server, `./` or `..` in a
path, a symlink): identities are compared, not URL text. Every driver."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_drill_whose_scratch_is_its_source_by_another_spelling_exits_2(harness, run):
    source = harness.make_source()
    before = harness.digest(source)
    aliases = harness.aliases(source)
    assert aliases and all(alias != source for alias in aliases)
    for alias in aliases:
        refused = run("drill", harness.technology, *harness.source_args(source),
                      *[a for url in alias for a in ("--scratch", url)],
                      "--store", run.store, "--json")  # fmt: skip
        assert refused.code == 2, f"{alias}: {refused.stdout}{refused.stderr}"
        assert "also a --source" in refused.json["error"]
        assert harness.digest(source) == before  # untouched
    assert run("list", "--store", run.store, "--json").json["backups"] == []


def test_a_restore_into_two_spellings_of_one_place_exits_2(harness, run):
    source = harness.make_source()
    if len(source) < 2:
        pytest.skip(f"{harness.id}: one URL per restore, so no two targets to compare")
    assert run.backup(source).code == 0
    target = harness.make_target()
    before = harness.digest(target)
    for alias in harness.aliases(target):
        twice = [target[0], alias[0]]  # shard 0 and shard 1 would be the same database
        refused = run.restore(twice, "--mode", "overwrite")
        assert refused.code == 2, f"{twice}: {refused.stdout}{refused.stderr}"
        assert "same place" in refused.json["error"]
        assert harness.digest(target) == before
