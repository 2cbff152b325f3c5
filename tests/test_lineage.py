"""Which backup is whose: an incremental builds only on a backup of the same places,
verify and status see a chain that cannot be restored, a forged lease does not pin a
folder for ever, and two backups never share a folder (issue 11, review of its fixes)."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks.leases import Lease, fresh_leases
from backstop.tasks.manifest import MANIFEST_NAME

pytestmark = pytest.mark.integration


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


# -- an incremental's parent is of the same places -----------------------------------------
def test_an_incremental_never_builds_on_the_same_relative_url_from_another_folder(
    cli, local_store, tmp_path, monkeypatch
):
    """`sqlite:///shard0.db` run from two folders is two files: the second folder's
    incremental has nothing to build on, and its latest is not the first folder's."""
    make_schemaless_datastore(tmp_path / "x", shards=1, cells=300, seed=1)
    make_schemaless_datastore(tmp_path / "y", shards=1, cells=300, seed=2)
    relative = "sqlite:///shard0.db"
    monkeypatch.chdir(tmp_path / "x")
    full = cli("backup", "schemaless", "--source", relative, "--store", local_store.url, "--json")
    assert full.code == 0, full.stderr

    monkeypatch.chdir(tmp_path / "y")
    refused = cli("backup", "schemaless", "--source", relative, "--store", local_store.url,
                  "--incremental", "--json")  # fmt: skip
    assert refused.code == 2, refused.stdout
    assert "take a full backup first" in refused.json["error"]
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restore = cli("restore", "schemaless", "--source", relative, "--target", target,
                  "--store", local_store.url, "--json")  # fmt: skip
    assert restore.code == 2, restore.stdout
    assert "no complete schemaless backup of" in restore.json["error"]
    assert not (tmp_path / "restored.db").exists()

    # From the first folder, the same URL text is the backed-up file again.
    monkeypatch.chdir(tmp_path / "x")
    incremental = cli("backup", "schemaless", "--source", relative, "--store",
                      local_store.url, "--incremental", "--json")  # fmt: skip
    assert incremental.code == 0, incremental.stderr
    assert incremental.json["parent"] == full.json["backup_id"]


# -- a chain that cannot be restored is not "ok" --------------------------------------------
def _full_and_incremental(cli, shards: list[str], store_url: str) -> tuple[str, str]:
    full = cli("backup", "schemaless", *_args("--source", shards), "--store", store_url,
               "--json")  # fmt: skip
    incremental = cli("backup", "schemaless", *_args("--source", shards), "--store", store_url,
                      "--incremental", "--json")  # fmt: skip
    assert full.code == 0 and incremental.code == 0, (full.stderr, incremental.stderr)
    assert incremental.json["parent"] == full.json["backup_id"]
    return full.json["backup_id"], incremental.json["backup_id"]


def test_verify_and_status_report_an_incremental_whose_parent_is_gone(cli, shards, local_store):
    full, incremental = _full_and_incremental(cli, shards, local_store.url)
    folder = Path(local_store.url.removeprefix("file://")) / "schemaless"
    shutil.rmtree(folder / full)

    one = cli("verify", "--store", local_store.url, "--technology", "schemaless",
              "--backup", incremental, "--json")  # fmt: skip
    assert one.code == 1, one.stdout
    assert any(f"{full} (parent of {incremental}) is missing" in p
               for p in one.json["problems"])  # fmt: skip
    whole = cli("verify", "--store", local_store.url, "--json")
    assert whole.code == 1, whole.stdout
    assert any(incremental in p and "chain is broken" in p for p in whole.json["problems"])

    status = cli("status", "--store", local_store.url, "--json")
    assert status.json["sources"][0]["newest_backup"] == incremental
    assert full in status.json["sources"][0]["broken_chain"]
    assert "BROKEN" in cli("status", "--store", local_store.url).stdout


def test_verify_reports_a_forged_parent_loop(cli, shards, local_store):
    full, incremental = _full_and_incremental(cli, shards, local_store.url)
    manifest = Path(local_store.url.removeprefix("file://")) / "schemaless" / full / MANIFEST_NAME
    forged = json.loads(manifest.read_text())
    forged["parent"] = incremental  # full -> incremental -> full -> ...
    manifest.write_text(json.dumps(forged))

    one = cli("verify", "--store", local_store.url, "--technology", "schemaless",
              "--backup", incremental, "--json")  # fmt: skip
    assert one.code == 1, one.stdout
    assert any("bad parent" in p for p in one.json["problems"])
    assert cli("verify", "--store", local_store.url, "--json").code == 1


def test_verifying_an_incremental_checks_its_parents_files(cli, shards, local_store):
    full, incremental = _full_and_incremental(cli, shards, local_store.url)
    folder = Path(local_store.url.removeprefix("file://")) / "schemaless" / full
    data = next(p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME
                and not p.name.startswith(".lease-"))  # fmt: skip
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 1]))

    one = cli("verify", "--store", local_store.url, "--technology", "schemaless",
              "--backup", incremental, "--json")  # fmt: skip
    assert one.code == 1, one.stdout
    assert f"schemaless/{full}" in one.json["backups"]


# -- leases ----------------------------------------------------------------------------------
def test_a_future_dated_lease_does_not_pin_its_folder(local_store):
    store = local_store.open()
    backup_id = "20261128T101500Z-0a0a"
    folder = Path(store.backup_dir("schemaless", backup_id))
    folder.mkdir(parents=True)
    future = datetime.now(UTC) + timedelta(days=365)
    lease = folder / ".lease-backup-forged.json"
    lease.write_text(json.dumps({"kind": "backup", "holder": "nobody",
                                 "heartbeat": future.isoformat()}))  # fmt: skip
    os.utime(lease, (future.timestamp(), future.timestamp()))
    assert fresh_leases(store, "schemaless", backup_id) == []

    # A live lease still counts, and says how to break it.
    with Lease(store, "schemaless", backup_id, "restore"):
        held = fresh_leases(store, "schemaless", backup_id)
        assert len(held) == 1
        assert ".lease-restore-" in held[0].describe()
        assert "delete" in held[0].describe()


# -- backup ids ------------------------------------------------------------------------------
def test_two_backups_given_one_id_get_two_folders_and_latest_is_the_one_finished_last(
    cli, shards, local_store, monkeypatch
):
    """The second backup is offered the first's id (a collision), then an id whose random
    suffix sorts before the first's: it is still the newest, as it finished last."""
    offered = iter(["20261128T101500Z-ffff", "20261128T101500Z-ffff", "20261128T101500Z-0000",
                    "20261128T101500Z-7777"])  # fmt: skip
    monkeypatch.setattr("backstop.tasks.store.new_backup_id", lambda: next(offered))
    ids = []
    for _ in range(2):
        result = cli("backup", "schemaless", *_args("--source", shards), "--store",
                     local_store.url, "--json")  # fmt: skip
        assert result.code == 0, result.stderr
        ids.append(result.json["backup_id"])
        time.sleep(0.01)  # finish times to tell apart, not a timing assertion
    assert ids == ["20261128T101500Z-ffff", "20261128T101500Z-0000"]

    latest = cli("verify", "--store", local_store.url, "--technology", "schemaless",
                 "--backup", "latest", "--json")  # fmt: skip
    assert latest.code == 0, latest.stdout
    assert latest.json["backups"] == [f"schemaless/{ids[1]}"]
    incremental = cli("backup", "schemaless", *_args("--source", shards), "--store",
                      local_store.url, "--incremental", "--json")  # fmt: skip
    assert incremental.code == 0, incremental.stderr
    assert incremental.json["parent"] == ids[1]
