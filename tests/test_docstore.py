"""Docstore through the real flows, against real FerretDB servers."""

from __future__ import annotations

import datetime
import uuid

import bson
import pytest
from bson import Binary, Int64, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from faults import KillOnFirstWrite
from pymongo import ASCENDING, DESCENDING, MongoClient

from backstop.drivers.contract import RestoreMode
from backstop.drivers.errors import BadInputError
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.flows.restore import restore

pytestmark = pytest.mark.integration


def raw_client(url: str) -> MongoClient:
    return MongoClient(url, document_class=RawBSONDocument, uuidRepresentation="unspecified")


def documents_by_id(client: MongoClient, db: str, coll: str) -> dict[bytes, bytes]:
    """_id (as its BSON bytes) -> the document's raw bytes."""
    out = {}
    for doc in client[db][coll].find({}):
        out[bson.encode({"_id": doc["_id"]})] = doc.raw
    return out


def fidelity_documents() -> list[dict]:
    """Every BSON type FerretDB v1 stores. It refuses Decimal128, MinKey, MaxKey, Code and
    dotted field names (it drops the connection or answers "invalid key"); those need a
    real MongoDB (the testcontainers path, where a Docker engine exists)."""
    return [
        {
            "_id": ObjectId(),
            "i32": 7,
            "i64": Int64(2**40),
            "dbl": 3.25,
            "neg": -0.0,
            "dt": datetime.datetime(2026, 11, 26, 12, 0, 0, 123000),
            "bin": Binary(b"\x00\x01\xff"),
            "uuid4": Binary(uuid.uuid4().bytes, 4),
            "uuid3": Binary(uuid.uuid4().bytes, 3),
            "regex": Regex("^a.*z$", "i"),
            "ts": Timestamp(1_700_000_000, 5),
            "nested": {"a": [1, {"b": [2, 3, {"c": None}]}], "empty": {}},
            "unicode": "z\u00fcrich \u6771\u4eac \U0001f600",
            "bool": True,
            "null": None,
        },
        {"_id": "string-id", "arr": list(range(50)), "empty_arr": [], "f": 1e-300},
        {"_id": 42, "big": "x" * (4 * 1024 * 1024 + 17)},  # a document over 4 MB
    ]


def backup_of(url: str, store, *patterns: str):
    """A backup of the collections matching `patterns`, through the real flow."""
    return backup(
        request=BackupRequest(
            technology="docstore",
            sources=[url],
            store=store,
            options={"include": list(patterns)},
        )
    )


@pytest.fixture
def db_name() -> str:
    return f"db_{uuid.uuid4().hex[:8]}"


def test_raw_bson_round_trip_is_byte_identical(ferret_source, ferret_target, db_name, local_store):
    source = raw_client(ferret_source.url)
    plain = MongoClient(ferret_source.url, uuidRepresentation="unspecified")
    plain[db_name].things.insert_many(fidelity_documents())
    plain[db_name].create_collection("empty")
    plain[db_name].orders.insert_many(
        [
            {"_id": i, "sku": f"s{i % 7}", "qty": i % 5, "at": datetime.datetime(2026, 1, 1)}
            for i in range(3000)
        ]
    )
    plain[db_name].orders.create_index([("sku", ASCENDING), ("qty", DESCENDING)], name="sku_qty")
    plain[db_name].orders.create_index([("at", ASCENDING)], name="at_1")
    plain[db_name].things.create_index([("i32", ASCENDING)], name="i32_unique", unique=True)

    outcome = backup_of(ferret_source.url, local_store, f"{db_name}.*")
    assert outcome.records == 3003
    assert outcome.consistency == "none"  # FerretDB has no fsyncLock and is no replica set
    manifest = local_store.open().resolve("docstore")
    assert manifest.consistency.warnings and "fsyncLock" in manifest.consistency.warnings[0]
    assert {u.name for u in manifest.units} == {
        f"{db_name}.things",
        f"{db_name}.empty",
        f"{db_name}.orders",
    }

    restored = restore(
        request=RestoreRequest(
            technology="docstore", store=local_store, targets=[ferret_target.url]
        )
    )
    assert restored.verified and restored.records == 3003
    target = raw_client(ferret_target.url)
    for coll in ("things", "orders", "empty"):
        assert documents_by_id(target, db_name, coll) == documents_by_id(source, db_name, coll)
    names = {i["name"] for i in MongoClient(ferret_target.url)[db_name].orders.list_indexes()}
    assert {"sku_qty", "at_1"} <= names
    unique = [
        i
        for i in MongoClient(ferret_target.url)[db_name].things.list_indexes()
        if i["name"] == "i32_unique"
    ]
    assert unique and unique[0].get("unique")
    assert db_name in MongoClient(ferret_target.url).list_database_names()


def test_restore_into_a_database_with_data_is_refused_untouched(
    ferret_source, ferret_target, db_name, local_store
):
    MongoClient(ferret_source.url)[db_name].c.insert_many([{"_id": i} for i in range(10)])
    backup_of(ferret_source.url, local_store, db_name)
    MongoClient(ferret_target.url)[db_name].c.insert_one({"_id": "other", "keep": True})
    with pytest.raises(BadInputError, match="already holds documents"):
        restore(
            request=RestoreRequest(
                technology="docstore", store=local_store, targets=[ferret_target.url]
            )
        )
    assert list(MongoClient(ferret_target.url)[db_name].c.find()) == [
        {"_id": "other", "keep": True}
    ]
    merged = restore(
        request=RestoreRequest(
            technology="docstore",
            store=local_store,
            targets=[ferret_target.url],
            mode=RestoreMode.MERGE,
        )
    )
    assert merged.verified and merged.records == 10
    assert MongoClient(ferret_target.url)[db_name].c.count_documents({}) == 11
    over = restore(
        request=RestoreRequest(
            technology="docstore",
            store=local_store,
            targets=[ferret_target.url],
            mode=RestoreMode.OVERWRITE,
        )
    )
    assert over.verified
    assert MongoClient(ferret_target.url)[db_name].c.count_documents({}) == 10


def test_system_databases_are_left_out_and_patterns_checked(ferret_source, local_store, cli):
    from backstop.drivers.docstore import DocstoreDriver

    units = DocstoreDriver().plan_backup([ferret_source.url], {})
    assert not any(u.name.split(".")[0] in ("admin", "local", "config") for u in units)
    result = cli(
        "backup",
        "docstore",
        "--source",
        ferret_source.url,
        "--store",
        local_store.url,
        "--include",
        "bad pattern!",
        "--json",
    )
    assert result.code == 2 and "namespace pattern" in result.json["error"]


def test_truncated_bson_is_named_by_the_reader():
    import io

    from backstop.drivers.docstore.bsonfile import BsonFileError, read_documents

    data = bson.encode({"_id": 1, "x": "y"}) + bson.encode({"_id": 2})
    assert len(list(read_documents(io.BytesIO(data)))) == 2
    with pytest.raises(BsonFileError, match="truncated"):
        list(read_documents(io.BytesIO(data[:-3])))


def test_server_stopped_mid_backup_fails_cleanly(tmp_path, local_store, db_name):
    from conftest import _ferretdb

    from backstop.tasks.progress import reporting

    server = _ferretdb(tmp_path / "dying")
    try:
        client = MongoClient(server.url)
        client[db_name].big.insert_many([{"_id": j, "pad": "x" * 2000} for j in range(5000)])
        killer = KillOnFirstWrite(server.process.kill)
        with reporting(killer), pytest.raises(Exception):  # noqa: B017 - any failure
            backup(
                request=BackupRequest(
                    technology="docstore", sources=[server.url], store=local_store
                )
            )
        assert killer.killed, "the server was meant to die mid-backup"
        # No manifest, and no partial files left looking like a backup.
        assert local_store.open().folders() == []
    finally:
        server.stop()


def test_rename_restores_under_other_names(ferret_source, ferret_target, db_name, local_store, cli):
    plain = MongoClient(ferret_source.url)
    plain[db_name].orders.insert_many([{"_id": i, "v": i * 3} for i in range(2500)])
    plain[db_name].users.insert_many([{"_id": f"u{i}"} for i in range(10)])
    plain[db_name].orders.create_index("v", name="v_1")
    backup_of(ferret_source.url, local_store, db_name)
    copy = f"{db_name}_copy"
    restored = restore(
        request=RestoreRequest(
            technology="docstore",
            store=local_store,
            targets=[ferret_target.url],
            rename={db_name: copy},
        )
    )
    assert restored.verified and restored.records == 2510
    source, target = raw_client(ferret_source.url), raw_client(ferret_target.url)
    for coll in ("orders", "users"):
        assert documents_by_id(target, copy, coll) == documents_by_id(source, db_name, coll)
    assert "v_1" in {i["name"] for i in MongoClient(ferret_target.url)[copy].orders.list_indexes()}
    assert db_name not in MongoClient(ferret_target.url).list_database_names()

    # A namespace rule, through the command line, with wildcards carried over.
    archive = f"{db_name}_arch"
    result = cli(
        "restore", "docstore", "--store", local_store.url, "--target", ferret_target.url,
        "--include", f"{db_name}.orders", "--rename", f"{db_name}.*={archive}.old_*", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stdout
    assert documents_by_id(target, archive, "old_orders") == documents_by_id(
        source, db_name, "orders"
    )
    # Two collections into one is refused before anything is written.
    clash = cli(
        "restore", "docstore", "--store", local_store.url, "--target", ferret_target.url,
        "--rename", f"{db_name}.*={db_name}_one.all", "--json",
    )  # fmt: skip
    assert clash.code == 2 and "rename" in clash.json["error"]
    bad = cli(
        "restore", "docstore", "--store", local_store.url, "--target", ferret_target.url,
        "--rename", f"{db_name}.*={db_name}_x.a.*.*", "--json",
    )  # fmt: skip
    assert bad.code == 2 and "wildcard" in bad.json["error"]


def test_replica_set_without_snapshot_reads_is_recorded_as_fuzzy(tmp_path, local_store, db_name):
    """FerretDB can call itself a replica set but keeps no snapshot history: backstop must
    find that out rather than record a snapshot it did not get."""
    from conftest import _ferretdb

    server = _ferretdb(tmp_path / "rs", replica_set="rs0")
    try:
        MongoClient(server.url)[db_name].c.insert_many([{"_id": i} for i in range(100)])
        outcome = backup(
            request=BackupRequest(technology="docstore", sources=[server.url], store=local_store)
        )
        assert outcome.consistency == "none" and outcome.records == 100
        [warning] = local_store.open().resolve("docstore").consistency.warnings
        assert "replica set rs0" in warning and "cluster time" in warning
    finally:
        server.stop()


def test_export_writes_the_mongodump_layout(ferret_source, db_name, local_store, cli, tmp_path):
    docs = [{"_id": i, "v": "x" * i} for i in range(100)]
    MongoClient(ferret_source.url)[db_name].items.insert_many(docs)
    MongoClient(ferret_source.url)[db_name].items.create_index("v", name="v_1")
    backed = cli(
        "backup",
        "docstore",
        "--source",
        ferret_source.url,
        "--store",
        local_store.url,
        "--include",
        db_name,
        "--json",
    )
    assert backed.code == 0, backed.stdout
    out = tmp_path / "dump"
    exported = cli("export", "docstore", "--store", local_store.url, "--dir", str(out), "--json")
    assert exported.code == 0, exported.stdout
    data = (out / db_name / "items.bson").read_bytes()
    assert bson.decode_all(data) == docs
    import json

    metadata = json.loads((out / db_name / "items.metadata.json").read_text())
    assert {i["name"] for i in metadata["indexes"]} == {"_id_", "v_1"}
    again = cli("export", "docstore", "--store", local_store.url, "--dir", str(out), "--json")
    assert again.code == 2 and "not empty" in again.json["error"]


def test_error_classification():
    from pymongo import errors as pm

    from backstop.drivers.docstore.client import classify
    from backstop.drivers.errors import ErrorKind

    for exc in (
        pm.AutoReconnect("x"),
        pm.NotPrimaryError("x"),
        pm.NetworkTimeout("x"),
        pm.ServerSelectionTimeoutError("x"),
        pm.ExecutionTimeout("x"),
    ):
        assert classify(exc) is ErrorKind.TRANSIENT, exc
    for exc in (
        pm.OperationFailure("auth", code=18),
        pm.OperationFailure("unauth", code=13),
        pm.DocumentTooLarge("big"),
        pm.DuplicateKeyError("dup", code=11000),
    ):
        assert classify(exc) is ErrorKind.PERMANENT, exc
