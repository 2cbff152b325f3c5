"""After a restore, Docstore and ZooKeeper read the target once for both the comparison
with the backup and the target's data-quality suite (issue 12), and that one read still
catches a target that differs from the backup in a single document or znode. Real
FerretDB and ZooKeeper servers; reads counted by the server (FerretDB's command
counters) or at the ZooKeeper read session's requests."""

from __future__ import annotations

import uuid

import bson
import pytest
from pymongo import MongoClient
from zk_trees import build_tree, zk_backup, zk_restore

from backstop.drivers.contract import RestorePlan
from backstop.drivers.docstore.bsonfile import id_key
from backstop.drivers.zookeeper import wire
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.flows.restore import restore
from backstop.tasks.verify import verify_target

pytestmark = pytest.mark.integration


# -- Docstore -------------------------------------------------------------------------------
def _finds(url: str) -> int:
    """How many `find` commands the FerretDB server has answered so far."""
    with MongoClient(url) as client:
        metrics = client.admin.command("serverStatus")["metrics"]["commands"]
    return metrics.get("find", {}).get("total", 0)


def _docstore_backup(source_url: str, store, db: str) -> str:
    client = MongoClient(source_url)
    for name, count in (("people", 2500), ("orders", 40)):
        client[db][name].insert_many(
            [{"_id": i, "n": i, "name": f"{name}-{i}"} for i in range(count)]
        )
    # A document larger than one network read: pymongo hands it out as a memoryview.
    client[db].orders.insert_one({"_id": "big", "pad": "x" * (300 * 1024)})
    client[db].people.create_index("name")
    taken = backup(
        request=BackupRequest(
            technology="docstore",
            sources=[source_url],
            store=store,
            options={"include": [f"{db}.*"]},
        )
    )
    return taken.backup_id


def test_docstore_restore_reads_each_target_collection_once(
    ferret_source, ferret_target, local_store
):
    db = f"db_{uuid.uuid4().hex[:8]}"
    backup_id = _docstore_backup(ferret_source.url, local_store, db)
    finds_before = _finds(ferret_target.url)

    outcome = restore(
        request=RestoreRequest(
            technology="docstore", store=local_store, targets=[ferret_target.url], backup=backup_id
        )
    )

    assert outcome.verified and outcome.records == 2541
    assert outcome.quality == "passed"  # the suite ran, on the verification's read
    # One find per collection (its getMores aside): the digest and the _id suite share it.
    assert _finds(ferret_target.url) - finds_before == 2


def test_docstore_one_read_still_catches_one_changed_document(
    ferret_source, ferret_target, local_store
):
    db = f"db_{uuid.uuid4().hex[:8]}"
    backup_id = _docstore_backup(ferret_source.url, local_store, db)
    restore(
        request=RestoreRequest(
            technology="docstore", store=local_store, targets=[ferret_target.url], backup=backup_id
        )
    )
    MongoClient(ferret_target.url)[db].people.update_one({"_id": 1234}, {"$set": {"n": -1}})
    manifest = local_store.open().read_manifest("docstore", backup_id)
    [unit] = [u for u in manifest.units if u.name == f"{db}.people"]

    verdict = verify_target.fn(
        "docstore", local_store, backup_id, unit, ferret_target.url, RestorePlan()
    )

    assert not verdict.check.ok
    assert verdict.check.problems == [f"{db}.people: the digest of (_id, raw document) differs"]
    assert verdict.check.records == 2500
    # The same read gave the quality suite its chunks: every _id present and unique.
    assert verdict.quality and all(c["passed"] for c in verdict.quality)
    assert {c["part"] for c in verdict.quality} == {f"{db}.people"}


# -- ZooKeeper ------------------------------------------------------------------------------
@pytest.fixture
def root_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time a ZooKeeper read session is asked for the root of its tree (a walk
    starts there), recorded; the restore's writes go through kazoo, not these sessions."""
    fetched: list[str] = []
    fetch, fetch_batch = wire.ReadSession.fetch, wire.ReadSession.fetch_batch

    def counting_fetch(self, roots, *, descend=None):
        roots = list(roots)
        fetched.extend(r for r in roots if r == "/" and descend is not None)
        return fetch(self, roots, descend=descend)

    def counting_fetch_batch(self, paths):
        fetched.extend(p for p in paths if p == "/")
        return fetch_batch(self, paths)

    monkeypatch.setattr(wire.ReadSession, "fetch", counting_fetch)
    monkeypatch.setattr(wire.ReadSession, "fetch_batch", counting_fetch_batch)
    return fetched


def test_zookeeper_restore_walks_the_target_once(
    zk_server, zk_client, zk_root, local_store, root_fetches
):
    build_tree(zk_client, zk_root, nodes=800)
    zk_backup(zk_server.url(zk_root), local_store)
    root_fetches.clear()

    outcome = zk_restore(local_store, zk_server.url(f"{zk_root}-restored"))

    assert outcome.verified and outcome.quality == "passed"
    assert root_fetches == ["/"]  # one walk gave the digest and the quality suite's paths


@pytest.mark.parametrize("include", [(), ("/queue",)])
def test_zookeeper_one_walk_still_catches_one_changed_znode(
    zk_server, zk_client, zk_root, local_store, include
):
    build_tree(zk_client, zk_root, nodes=300)
    taken = zk_backup(zk_server.url(zk_root), local_store)
    target = f"{zk_root}-restored"
    zk_restore(local_store, zk_server.url(target), include=list(include))
    changed = sorted(zk_client.get_children(f"{target}/queue"))[0]
    zk_client.set(f"{target}/queue/{changed}", b"not the backup's")
    manifest = local_store.open().read_manifest("zookeeper", taken.backup_id)
    [unit] = manifest.units

    verdict = verify_target.fn(
        "zookeeper",
        local_store,
        taken.backup_id,
        unit,
        zk_server.url(target),
        RestorePlan(include=tuple(include)),
    )

    assert not verdict.check.ok
    if include:  # each backed-up node of the selection compared
        assert verdict.check.problems == ["1 node(s) differ from the backup (data or ACL)"]
    else:
        assert any("digest" in p for p in verdict.check.problems), verdict.check.problems
    assert verdict.quality and all(c["passed"] for c in verdict.quality)


def test_a_documents_id_is_read_from_a_view_of_a_buffer_too():
    raw = bson.encode({"_id": "big", "pad": "x" * 1000})
    assert id_key(memoryview(raw)) == id_key(raw) == b"\x02" + bson.encode({"s": "big"})[7:-1]
