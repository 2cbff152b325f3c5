"""Docstore against the official `mongo` image, through testcontainers, where a Docker
engine exists. FerretDB (the rest of test_docstore.py) refuses Decimal128, MinKey/MaxKey,
Code, dotted field names and TTL indexes, and has no snapshot reads; MongoDB has them all.

Without a Docker engine (this project's CI machines have none) these tests are skipped,
not faked: the skip names the reason.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo import ASCENDING, MongoClient
from test_docstore import backup_of, documents_by_id, raw_client

from backstop.flows.params import RestoreRequest
from backstop.flows.restore import restore

pytestmark = pytest.mark.integration

IMAGE = "mongo:7.0"


def _docker_engine() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def mongo_url():
    """A one-member replica set (snapshot reads need one), its URL."""
    if not _docker_engine():
        pytest.skip("no Docker engine here: the official mongo image runs where one exists")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer(IMAGE).with_command("--replSet rs0 --bind_ip_all").with_exposed_ports(27017)
    )
    container.start()
    try:
        wait_for_logs(container, "Waiting for connections", timeout=60)
        url = (
            f"mongodb://{container.get_container_host_ip()}:"
            f"{container.get_exposed_port(27017)}/?directConnection=true"
        )
        client = MongoClient(url)
        client.admin.command(
            "replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": "localhost:27017"}]}
        )
        deadline = time.monotonic() + 60
        while not client.admin.command("hello").get("isWritablePrimary"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica set elected no primary")
            time.sleep(0.5)
        yield url
    finally:
        container.stop()


def test_full_bson_fidelity_snapshot_consistency_and_ttl(mongo_url, local_store):
    db = f"db_{uuid.uuid4().hex[:8]}"
    plain = MongoClient(mongo_url, uuidRepresentation="unspecified")
    plain[db].things.insert_many(
        [
            {
                "_id": ObjectId(),
                "dec": Decimal128("1234.5678901234567890"),
                "i32": 1,
                "i64": Int64(-(2**62)),
                "min": MinKey(),
                "max": MaxKey(),
                "code": Code("function () { return 1; }"),
                "dotted.key": {"$odd": 1, "a.b": 2},
                "regex": Regex("x+", "ms"),
                "ts": Timestamp(1, 1),
                "uuid4": Binary(uuid.uuid4().bytes, 4),
                "uuid3": Binary(uuid.uuid4().bytes, 3),
                "dt": datetime.datetime(1969, 7, 20, 20, 17, 40),
            },
            {"_id": "big", "blob": Binary(b"\x01" * (5 * 1024 * 1024))},
        ]
    )
    plain[db].create_collection("empty")
    plain[db].sessions.create_index([("seen", ASCENDING)], name="ttl", expireAfterSeconds=3600)
    plain[db].sessions.insert_one({"_id": 1, "seen": datetime.datetime(2026, 1, 1)})

    outcome = backup_of(mongo_url, local_store, db)
    assert outcome.consistency == "snapshot"
    assert "atClusterTime" in outcome.consistency_point

    copy = f"{db}_copy"
    restored = restore(
        request=RestoreRequest(
            technology="docstore",
            store=local_store,
            targets=[mongo_url],
            rename={db: copy},
        )
    )
    assert restored.verified
    source, target = raw_client(mongo_url), raw_client(mongo_url)
    for coll in ("things", "empty"):
        assert documents_by_id(target, copy, coll) == documents_by_id(source, db, coll)
    ttl = [i for i in MongoClient(mongo_url)[copy].sessions.list_indexes() if i["name"] == "ttl"]
    assert ttl and ttl[0]["expireAfterSeconds"] == 3600


def test_writes_during_backup_land_on_one_side_of_the_snapshot(mongo_url, local_store):
    """A writer puts each sequence number into `a`, then into `b`. Read at one cluster
    time, `b` holds a prefix of `a`'s numbers with at most one missing; read
    collection by collection without a snapshot, `b` could run ahead of `a`."""
    db = f"db_{uuid.uuid4().hex[:8]}"
    client = MongoClient(mongo_url)
    client[db].a.insert_many([{"_id": i, "pad": "x" * 500} for i in range(20_000)])
    client[db].b.insert_many([{"_id": i, "pad": "x" * 500} for i in range(20_000)])
    stop = threading.Event()

    def writer() -> None:
        i = 20_000
        while not stop.is_set():
            client[db].a.insert_one({"_id": i})
            client[db].b.insert_one({"_id": i})
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        outcome = backup_of(mongo_url, local_store, db)
    finally:
        stop.set()
        thread.join()
    assert outcome.consistency == "snapshot"
    copy = f"{db}_copy"
    restore(
        request=RestoreRequest(
            technology="docstore", store=local_store, targets=[mongo_url], rename={db: copy}
        )
    )
    a = {bson.decode(k)["_id"] for k in documents_by_id(raw_client(mongo_url), copy, "a")}
    b = {bson.decode(k)["_id"] for k in documents_by_id(raw_client(mongo_url), copy, "b")}
    assert b <= a and len(a) - len(b) <= 1
    assert a == set(range(len(a)))  # a prefix: nothing later without everything earlier
