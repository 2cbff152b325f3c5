"""Docstore restore modes, selections, system namespaces, retries, rollback and the
standalone quiesce choice, against real FerretDB servers."""

from __future__ import annotations

import uuid

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, MongoClient
from pymongo import errors as pm

from backstop.drivers.contract import RestoreMode
from backstop.drivers.docstore import driver as docstore_driver
from backstop.drivers.errors import BadInputError, PermanentError
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.flows.restore import restore

pytestmark = pytest.mark.integration


def backup_of(url: str, store, *patterns: str, **options):
    return backup(
        request=BackupRequest(
            technology="docstore",
            sources=[url],
            store=store,
            options={"include": list(patterns), **options},
        )
    )


def restore_into(url: str, store, **kwargs):
    return restore(
        request=RestoreRequest(technology="docstore", store=store, targets=[url], **kwargs)
    )


def contents(url: str, db: str) -> dict[str, dict]:
    """collection -> {documents by _id (raw bytes), index specs} for one database."""
    client = MongoClient(url, document_class=RawBSONDocument, uuidRepresentation="unspecified")
    out = {}
    for name in sorted(client[db].list_collection_names()):
        docs = {bson.encode({"_id": d["_id"]}): d.raw for d in client[db][name].find({})}
        indexes = sorted(
            (i["name"], list(i["key"].items())) for i in MongoClient(url)[db][name].list_indexes()
        )
        out[name] = {"docs": docs, "indexes": indexes}
    return out


@pytest.fixture
def db_name() -> str:
    return f"db_{uuid.uuid4().hex[:8]}"


def test_a_standalone_server_is_not_write_locked_unless_asked(ferret_source, db_name, local_store):
    MongoClient(ferret_source.url)[db_name].c.insert_one({"_id": 1})
    backup_of(ferret_source.url, local_store, db_name)
    manifest = local_store.open().resolve("docstore")
    assert manifest.consistency.kind == "none"
    [warning] = manifest.consistency.warnings
    assert "not quiesced" in warning and "quiesce=fsynclock" in warning

    # Asked for, fsyncLock is tried (FerretDB has none: the manifest says so).
    backup_of(ferret_source.url, local_store, db_name, quiesce="fsynclock")
    manifest = local_store.open().resolve("docstore")
    assert "cannot block writes" in manifest.consistency.warnings[0]

    with pytest.raises(BadInputError, match="quiesce"):
        backup_of(ferret_source.url, local_store, db_name, quiesce="sometimes")


def test_merge_never_changes_documents_or_indexes_the_target_holds(
    ferret_source, ferret_target, db_name, local_store
):
    source = MongoClient(ferret_source.url)[db_name]
    source.c.insert_many([{"_id": i, "v": "backup", "w": i} for i in range(20)])
    source.c.create_index([("v", ASCENDING)], name="by_v")
    source.c.create_index([("w", ASCENDING)], name="by_w")
    backup_of(ferret_source.url, local_store, db_name)
    target = MongoClient(ferret_target.url)[db_name]
    target.c.insert_one({"_id": 3, "v": "theirs"})
    target.c.create_index([("w", ASCENDING), ("v", ASCENDING)], name="by_v")  # same name, other key
    before = contents(ferret_target.url, db_name)

    merged = restore_into(ferret_target.url, local_store, mode=RestoreMode.MERGE)

    assert merged.verified and merged.records_skipped == 1
    after = contents(ferret_target.url, db_name)
    held = before["c"]
    assert {k: after["c"]["docs"][k] for k in held["docs"]} == held["docs"]
    assert len(after["c"]["docs"]) == 20
    indexes = dict(after["c"]["indexes"])
    assert indexes["by_v"] == [("w", 1), ("v", 1)]  # the target's own, unchanged
    assert indexes["by_w"] == [("w", 1)]  # the one it lacked, added


def test_overwrite_with_include_leaves_the_other_collections_untouched(
    ferret_source, ferret_target, db_name, local_store
):
    source = MongoClient(ferret_source.url)[db_name]
    source.a.insert_many([{"_id": i, "from": "backup"} for i in range(5)])
    source.b.insert_many([{"_id": i, "from": "backup"} for i in range(5)])
    backup_of(ferret_source.url, local_store, db_name)
    target = MongoClient(ferret_target.url)[db_name]
    target.a.insert_many([{"_id": i, "from": "target"} for i in range(8)])
    target.b.insert_many([{"_id": i, "from": "target"} for i in range(8)])
    target.c.insert_one({"_id": "other"})
    before = contents(ferret_target.url, db_name)

    restore_into(
        ferret_target.url, local_store, mode=RestoreMode.OVERWRITE, include=[f"{db_name}.a"]
    )

    after = contents(ferret_target.url, db_name)
    assert after["b"] == before["b"] and after["c"] == before["c"]
    assert after["a"] == contents(ferret_source.url, db_name)["a"]


def test_include_that_matches_nothing_is_bad_input(
    ferret_source, ferret_target, db_name, local_store
):
    MongoClient(ferret_source.url)[db_name].c.insert_one({"_id": 1})
    backup_of(ferret_source.url, local_store, db_name)
    with pytest.raises(BadInputError, match="matches nothing"):
        restore_into(ferret_target.url, local_store, include=["no_such_db.*"])
    assert db_name not in MongoClient(ferret_target.url).list_database_names()


@pytest.mark.parametrize("rename", ["{db}=admin", "{db}.c=local.c", "{db}.c={db}.system.js"])
def test_nothing_is_written_into_a_system_namespace(
    ferret_source, ferret_target, db_name, local_store, rename
):
    MongoClient(ferret_source.url)[db_name].c.insert_one({"_id": 1})
    backup_of(ferret_source.url, local_store, db_name)
    source, target = rename.format(db=db_name).split("=")
    with pytest.raises(BadInputError, match="system namespaces"):
        restore_into(ferret_target.url, local_store, rename={source: target})
    client = MongoClient(ferret_target.url)
    assert "c" not in client.admin.list_collection_names()
    assert "c" not in client.local.list_collection_names()
    assert "system.js" not in client[db_name].list_collection_names()


@pytest.mark.parametrize("mode", list(RestoreMode))
def test_a_transient_fault_after_the_first_batch_is_retried_to_the_exact_target(
    ferret_source, ferret_target, db_name, local_store, monkeypatch, mode
):
    MongoClient(ferret_source.url)[db_name].c.insert_many(
        [{"_id": i, "v": "x" * (i % 50)} for i in range(1000)]
    )
    backup_of(ferret_source.url, local_store, db_name)
    if mode is RestoreMode.MERGE:
        MongoClient(ferret_target.url)[db_name].c.insert_one({"_id": 0, "v": "the target's"})
    held = contents(ferret_target.url, db_name).get("c", {"docs": {}})["docs"]
    monkeypatch.setattr(docstore_driver, "INSERT_BATCH_DOCS", 100)
    monkeypatch.setattr(docstore_driver, "INSERT_WORKERS", 1)
    real_insert, fired = docstore_driver._insert, []

    def insert_then_lose_the_connection(*args):
        result = real_insert(*args)
        if not fired:  # the first batch is in the target; the client never hears so
            fired.append(True)
            raise pm.AutoReconnect("injected: connection lost after a batch was inserted")
        return result

    monkeypatch.setattr(docstore_driver, "_insert", insert_then_lose_the_connection)

    restored = restore_into(ferret_target.url, local_store, mode=mode)

    assert fired and restored.verified
    expected = contents(ferret_source.url, db_name)["c"]["docs"]
    assert contents(ferret_target.url, db_name)["c"]["docs"] == {**expected, **held}


def test_a_failed_overwrite_leaves_the_target_exactly_as_it_was(
    ferret_source, ferret_target, db_name, local_store, monkeypatch
):
    source = MongoClient(ferret_source.url)[db_name]
    source.a.insert_many([{"_id": i, "from": "backup"} for i in range(5)])
    source.b.insert_many([{"_id": i, "from": "backup"} for i in range(5)])
    backup_of(ferret_source.url, local_store, db_name)
    target = MongoClient(ferret_target.url)[db_name]
    target.a.insert_many([{"_id": i, "from": "target"} for i in range(3)])
    target.a.create_index([("from", ASCENDING)], name="by_from")
    before = contents(ferret_target.url, db_name)
    assert set(before) == {"a"}

    real_insert = docstore_driver._insert

    def insert_then_fail(collection, batch, mode, namespace):
        result = real_insert(collection, batch, mode, namespace)
        if collection.name == "b":  # b now exists in the target, with documents
            raise PermanentError("injected failure after b was created")
        return result

    monkeypatch.setattr(docstore_driver, "_insert", insert_then_fail)
    with pytest.raises(PermanentError, match="rolled back"):
        restore_into(ferret_target.url, local_store, mode=RestoreMode.OVERWRITE)

    assert contents(ferret_target.url, db_name) == before
