"""Resumable backups (issue 15), every driver: where the driver declares `resumable`, a
backup whose last shard fails keeps the shards it stored, in an incomplete folder no
command shows, and `backup --resume ID` takes only the missing shard into the same
backup, which then restores exactly; the kept shards' files are not written again.
Where it does not, --resume is refused before anything starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from faults import fail_backup_writes

from backstop.drivers.errors import PermanentError
from backstop.flows.keys import FILES, generate_keys
from backstop.tasks.leases import Lease
from backstop.tasks.store import StoreSpec

pytestmark = pytest.mark.integration

SOME_ID = "20261128T120000Z-ab12"


def _database(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of a backup folder: (inode, mtime, bytes): a file written again shows."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("keys", ["plain", "encrypted+signed"])
def test_a_failed_shard_is_resumed_alone_into_the_same_backup(
    harness, run, local_store, monkeypatch, tmp_path, keys
):
    if not harness.capabilities.resumable:
        refused = run.backup(harness.make_source(), "--resume", SOME_ID)
        assert refused.code == 2, refused.stdout + refused.stderr
        assert "cannot be resumed" in refused.stdout + refused.stderr
        return
    source = harness.make_source()
    assert len(source) >= 2, "a resumable driver's harness must give several shards"
    expected, before = harness.digest(source), harness.records(source)
    writing: list[str] = []
    reading: list[str] = []
    if keys != "plain":
        files = {k: str(tmp_path / "keys" / v) for k, v in FILES.items()}
        generate_keys(str(tmp_path / "keys"))
        writing = ["--recipients-file", files["recipient"], "--signing-key", files["signing_key"],
                   "--identity", files["identity"]]  # fmt: skip
        reading = ["--identity", files["identity"], "--verify-key", files["verify_key"]]

    if keys == "plain":  # and all units in one task run: the others still stored
        monkeypatch.setenv("BACKSTOP_UNITS_PER_TASK", "64")
    # The last shard's server "dies" after its first block: every attempt fails.
    dead = _database(source[-1])
    with monkeypatch.context() as patch:
        fault = fail_backup_writes(
            patch,
            harness.driver_class,
            lambda: PermanentError("injected: the shard's server is gone"),
            chosen=lambda unit: _database(unit.source) == dead,
        )
        failed = run.backup(source, *writing)
    assert failed.code == 1, failed.stdout + failed.stderr
    assert fault["fired"] >= 1, "the fault was never injected"
    said = re.search(r"--resume (\d{8}T\d{6}Z-[0-9a-f]{4})", failed.stdout + failed.stderr)
    assert said, failed.stdout + failed.stderr
    backup_id = said[1]
    assert f"{len(source) - 1} of {len(source)} units are stored" in failed.stdout
    folder = Path(local_store.url.removeprefix("file://")) / harness.technology / backup_id
    assert folder.is_dir() and not (folder / "manifest.json").exists()
    assert (folder / "resume.json").is_file()
    listed = run("list", "--store", run.store, "--json", *reading[:2])
    assert listed.code == 0 and backup_id not in listed.stdout
    status = run("status", "--store", run.store, "--json", *reading[:2])
    assert status.code == 0, status.stdout + status.stderr
    name = f"{harness.technology}/{backup_id}"
    assert status.json["resumable"] == {name: {"units_stored": len(source) - 1}}
    said = run("status", "--store", run.store, *reading[:2]).stdout
    assert f"resumable: {name} ({len(source) - 1} units stored)" in said
    assert f"--resume {backup_id}" in said
    kept = {k: v for k, v in _files(folder).items() if not k.startswith(".lease")}

    if keys != "plain":  # the records are sealed: without the identity, refused, nothing lost
        blind = [a for a in writing if a != "--identity" and a != files["identity"]]
        refused = run.backup(source, "--resume", backup_id, *blind)
        assert refused.code == 2, refused.stdout + refused.stderr
        assert "give --identity" in refused.stdout
        assert {k: v for k, v in _files(folder).items() if not k.startswith(".lease")} == kept

    resumed = run.backup(source, "--resume", backup_id, *writing)
    assert resumed.code == 0, resumed.stdout + resumed.stderr
    assert resumed.json["backup_id"] == backup_id
    assert resumed.json["kept_units"] == len(source) - 1

    now = _files(folder)
    assert not [n for n in now if n.startswith("done-") or n == "resume.json"], sorted(now)
    opened = StoreSpec(url=run.store, identity=reading[1] if reading else None).open()
    manifest = opened.read_manifest(harness.technology, backup_id)
    assert [_database(u.source) for u in manifest.units] == [_database(u) for u in source]
    kept_files = [f.path or f.name for u in manifest.units[:-1] for f in u.files]
    assert kept_files
    for name in kept_files:  # the kept shards' files: the same files, never written again
        assert now[name] == kept[name], f"{name} was written again"
    named = {f.path or f.name for f in manifest.files}
    extra = set(now) - named - {"manifest.json", "manifest.sig", "manifest.sealed.age"}
    assert not extra, f"files no manifest names: {sorted(extra)}"
    assert any("resumed" in w for w in manifest.consistency.warnings)

    assert run.verify(*reading).json["ok"] is True
    target = harness.make_target()
    restored = run.restore(target, "--backup", backup_id, *reading)
    assert restored.code == 0, restored.stdout + restored.stderr
    assert harness.digest(target) == expected
    assert harness.records(source) == before  # the source is untouched


def test_resume_refuses_what_is_not_the_same_backup(harness, run, local_store, monkeypatch):
    harness.require("resumable")
    source = harness.make_source()
    other = harness.make_source()
    missing = run.backup(source, "--resume", SOME_ID)
    assert missing.code == 2, missing.stdout + missing.stderr
    assert f"there is no backup {harness.technology}/{SOME_ID}" in missing.stdout
    with monkeypatch.context() as patch:
        fail_backup_writes(patch, harness.driver_class,
                           lambda: PermanentError("injected: gone"),
                           chosen=lambda unit: _database(unit.source) == _database(source[-1]))  # fmt: skip
        failed = run.backup(source)
    backup_id = re.search(r"--resume (\S+) ", failed.stdout)[1]

    for argv, why in [
        ((other, "--resume", backup_id), "not the backup that was started"),
        ((source, "--resume", backup_id, "--option", "tables=cells"), "other --option"),
        ((source, "--resume", "not-an-id"), "is not a backup id"),
    ]:
        refused = run.backup(*argv)
        assert refused.code == 2, refused.stdout + refused.stderr
        assert why in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    # The first attempt still running (its lease fresh): refused, and nothing removed.
    folder = Path(local_store.url.removeprefix("file://")) / harness.technology / backup_id
    before = _files(folder)
    other = Lease(local_store.open(), harness.technology, backup_id, "backup").acquire()
    try:
        refused = run.backup(source, "--resume", backup_id)
    finally:
        other.release()
    assert refused.code == 2 and "still being written" in refused.stdout, refused.stdout
    assert _files(folder) == before

    # Nothing was lost by the refusals: it still resumes, and then is complete.
    assert run.backup(source, "--resume", backup_id).code == 0
    again = run.backup(source, "--resume", backup_id)
    assert again.code == 2 and "is complete" in again.stdout, again.stdout

    # A failed backup older than a complete one: finishing it would make it `latest`.
    with monkeypatch.context() as patch:
        fail_backup_writes(patch, harness.driver_class,
                           lambda: PermanentError("injected: gone"),
                           chosen=lambda unit: _database(unit.source) == _database(source[-1]))  # fmt: skip
        older = re.search(r"--resume (\S+) ", run.backup(source).stdout)[1]
    assert run.backup(source).code == 0
    stale = run.backup(source, "--resume", older)
    assert stale.code == 2 and "started later" in stale.stdout, stale.stdout
