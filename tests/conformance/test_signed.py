"""Signed manifests, every driver (issue 14): a backup whose data was changed, with its
manifest's sizes and hashes fixed up to match, passes every checksum; with a verify
key, verify and restore refuse it, and an unsigned manifest, naming why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backstop.flows.keys import generate_keys

pytestmark = pytest.mark.integration


def _folder(store: str, backup_id: str) -> Path:
    [found] = Path(store.removeprefix("file://")).rglob(backup_id)
    return found


def _forge(victim: Path, donor: Path) -> None:
    """The victim backup made to hold the donor's data: its data files replaced by the
    donor's, its manifest's units and totals by the donor's (sizes, SHA-256s, record
    counts: everything a checksum compares); its id, times and signature kept."""
    manifest = json.loads((victim / "manifest.json").read_text())
    donated = json.loads((donor / "manifest.json").read_text())
    for unit in manifest["units"]:
        for file in unit["files"]:
            (victim / file["name"]).unlink()
    for unit in donated["units"]:
        for file in unit["files"]:
            (victim / file["name"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(donor / file["name"], victim / file["name"])
    manifest["units"], manifest["totals"] = donated["units"], donated["totals"]
    (victim / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_a_verify_key_refuses_a_manifest_fixed_up_to_match_changed_data(harness, run, tmp_path):
    keys = generate_keys(str(tmp_path / "keys"))
    signing_key, verify_key = keys["files"]["signing_key"], keys["verify_key"]
    other_verify_key = generate_keys(str(tmp_path / "other"))["verify_key"]
    source = harness.make_source()
    first = run.backup(source, "--signing-key", signing_key)
    assert first.code == 0, first.stdout + first.stderr
    original = harness.digest(source)
    harness.mutate(source)
    second = run.backup(source, "--signing-key", signing_key)
    assert second.code == 0, second.stdout + second.stderr
    victim_id, donor_id = first.json["backup_id"], second.json["backup_id"]

    # Signed and untouched: checked with the key; with another key, refused.
    good = run.verify("--backup", victim_id, "--verify-key", verify_key)
    assert good.code == 0, good.stdout + good.stderr
    stranger = run.verify("--backup", victim_id, "--verify-key", other_verify_key)
    assert stranger.code == 1 and "not by the verify key" in stranger.stdout, stranger.stdout

    victim = _folder(run.store, victim_id)
    _forge(victim, _folder(run.store, donor_id))
    # The forgery is good: every checksum agrees with it...
    fooled = run.verify("--backup", victim_id)
    assert fooled.code == 0, f"the forgery was caught without a key: {fooled.stdout}"
    # ...and only the signature says otherwise, on verify and on restore.
    caught = run.verify("--backup", victim_id, "--verify-key", verify_key)
    assert caught.code == 1 and "changed after it was signed" in caught.stdout, caught.stdout
    target = harness.make_target()
    empty = harness.digest(target)
    refused = run.restore(target, "--backup", victim_id, "--verify-key", verify_key)
    assert refused.code == 1 and "changed after it was signed" in refused.json["error"], (
        refused.stdout
    )
    assert harness.digest(target) == empty, "a refused restore touched the target"
    assert harness.digest(source) != original  # (the forged data is the mutated source's)

    # Without its signature: unsigned, refused by name.
    (victim / "manifest.sig").unlink()
    unsigned = run.verify("--backup", victim_id, "--verify-key", verify_key)
    assert unsigned.code == 1 and "is not signed" in unsigned.stdout, unsigned.stdout
    # Without a verify key, today's behaviour; `status` says what is unsigned.
    status = run("status", "--store", run.store)
    assert status.code == 0 and "unsigned" not in status.stdout, status.stdout  # newest: signed
    shutil.rmtree(_folder(run.store, donor_id))
    status = run("status", "--store", run.store)
    assert status.code == 0 and "store is unsigned" in status.stdout, status.stdout
