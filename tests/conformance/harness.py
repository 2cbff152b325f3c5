"""One small harness per driver: what the conformance scenarios need to know about it.

A harness makes sources filled with its technology's fidelity set (the values that a
careless backup gets wrong: nulls versus empties, odd names, binary and big bodies, many
types), makes empty targets, and reads a target back *through the technology's own client
library* (never through backstop) as records: part name -> {record key -> canonical
bytes}. `digest` condenses that into part name -> sha256, which the scenarios compare.

A new driver joins the suite by adding a class here and its id in conftest.HARNESSES.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

Records = dict[str, dict[str, bytes]]  # part name -> record key -> canonical serialization


def _framed(*chunks: bytes) -> bytes:
    """Length-prefixed concatenation: no two different sequences serialize alike."""
    return b"".join(struct.pack(">Q", len(c)) + c for c in chunks)


class Harness:
    """The interface every scenario uses (see /work/coord/PREAMBLE.md)."""

    id: str
    technology: str
    include: str | None = None  # an --include pattern selecting one part; None: not supported
    included_part: str | None = None  # the part `include` selects
    include_nothing: str | None = None  # a valid pattern that selects nothing of the backup
    # What an overwrite without --include replaces: "target" (the whole target becomes the
    # backup: a ZooKeeper chroot, a kvdir folder) or "parts" (the parts the backup holds;
    # a collection or table it does not hold is left alone: Docstore, Schemaless).
    overwrite_scope: ClassVar[str] = "parts"
    # Names of the source's tables, collections, znodes or keys (plain words of them):
    # an encrypted backup's store must show none (issue 14).
    content_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, folder: Path, request: Any) -> None:
        self.folder, self.request = folder, request
        self._cleanups: list[Callable[[], None]] = []

    # -- the interface ------------------------------------------------------------------
    def make_source(self) -> list[str]:
        raise NotImplementedError

    def make_target(self) -> list[str]:
        raise NotImplementedError

    def aliases(self, urls: list[str]) -> list[list[str]]:
        raise NotImplementedError

    def records(self, urls: list[str]) -> Records:
        raise NotImplementedError

    def mutate(self, urls: list[str]) -> None:
        """Change one record, delete one and add one in `changed_part`, change one record
        of another part the backup holds (where there is one), and add a part named
        `new_part`, all through the client library."""
        raise NotImplementedError

    def digest(self, urls: list[str]) -> dict[str, str]:
        return {
            part: hashlib.sha256(
                b"".join(_framed(k.encode(), v) for k, v in sorted(records.items()))
            ).hexdigest()
            for part, records in self.records(urls).items()
        }

    def forwarded(self, urls: list[str]) -> list[str]:
        """The same server reached through a TCP forwarder on another port: an alias
        that no address comparison sees through (a load balancer, a NAT rule)."""
        from servers.proxy import Forwarder

        out = []
        for url in urls:
            port = int(re.search(r"@?[\w.\[\]:-]*?:(\d+)(?=[/,?]|$)", url.split("://", 1)[1])[1])
            forwarder = Forwarder(port)
            self._cleanups.append(forwarder.close)
            out.append(url.replace(f":{port}", f":{forwarder.port}", 1))
        return out

    # -- plumbing -----------------------------------------------------------------------
    def installed(self) -> None:
        """Make the driver available (a plugin driver: through its entry point)."""

    @property
    def driver_class(self):
        """The driver, as the registry finds it."""
        from backstop.drivers.registry import get_driver_class

        self.installed()
        return get_driver_class(self.technology)

    @property
    def capabilities(self):
        """What the driver declares (driver.capabilities)."""
        return self.driver_class.capabilities

    def require(self, capability: str) -> None:
        """Skip, naming the capability, when the driver does not declare it."""
        import pytest

        if not getattr(self.capabilities, capability):
            pytest.skip(f"{self.id}: the driver does not declare capability {capability}")

    def source_args(self, urls: list[str]) -> list[str]:
        return [arg for url in urls for arg in ("--source", url)]

    def target_args(self, urls: list[str]) -> list[str]:
        return [arg for url in urls for arg in ("--target", url)]

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            cleanup()

    def _name(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:8]}"


# -- Schemaless ---------------------------------------------------------------------------
# The cell model has no NULLs; the fidelity set is in the bodies (empty, every byte value,
# big), the names (a cell table whose name holds a quote, spaces, a dot and non-ASCII
# letters) and the values (microsecond timestamps, extreme ref_keys, odd column names).
ODD_TABLE = 'it\'s a "cell" tábla.v2'
CELL_TABLES = ("cells", ODD_TABLE)


def _cells(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, 8, 0, 0)
    cells = []
    for i in range(count):
        if i == 0:
            body = b""
        elif i == 1:
            body = bytes(range(256)) * 1200  # 300 KB, every byte value
        else:
            body = rng.randbytes(rng.randrange(400))
        cells.append(
            {
                "row_key": str(uuid.UUID(int=rng.getrandbits(128))),
                "column_name": rng.choice(["profile", "séance", "it's a \\ test", "a.b c"]),
                "ref_key": rng.choice([0, 1, 2**62, rng.randrange(10**6)]),
                "body": body,
                "created_at": start + timedelta(seconds=i, microseconds=rng.randrange(10**6)),
            }
        )
    return cells


class SchemalessHarness(Harness):
    technology = "schemaless"
    content_names = ("bla.v2",)  # ODD_TABLE ("cells" is also the format's name)
    shards = 2
    cells_per_table = 60

    def new_database(self) -> str:
        raise NotImplementedError

    def _engine(self, url: str):
        from sqlalchemy import create_engine

        return create_engine(url)

    def make_source(self) -> list[str]:
        from sqlalchemy import insert

        from backstop.drivers.schemaless.engines import cell_table

        urls = [self.new_database() for _ in range(self.shards)]
        for shard, url in enumerate(urls):
            engine = self._engine(url)
            with engine.begin() as conn:
                for index, name in enumerate(CELL_TABLES):
                    table = cell_table(name)
                    table.create(conn)
                    conn.execute(
                        insert(table), _cells(seed=10 * shard + index, count=self.cells_per_table)
                    )
            engine.dispose()
        return urls

    def make_target(self) -> list[str]:
        return [self.new_database() for _ in range(self.shards)]

    def records(self, urls: list[str]) -> Records:
        from sqlalchemy import inspect, select

        from backstop.drivers.schemaless.engines import cell_table

        out: Records = {}
        for shard, url in enumerate(urls):
            engine = self._engine(url)
            with engine.connect() as conn:
                for name in inspect(conn).get_table_names():
                    table = cell_table(name)
                    part = out.setdefault(f"shard{shard}/{name}", {})
                    for row in conn.execute(select(table)):
                        created = row.created_at.replace(tzinfo=None).isoformat(
                            timespec="microseconds"
                        )
                        part[str(row.added_id)] = _framed(
                            row.row_key.encode(),
                            row.column_name.encode(),
                            str(row.ref_key).encode(),
                            bytes(row.body),
                            created.encode(),
                        )
            engine.dispose()
        return out

    changed_part = "shard0/cells"
    new_part = "shard0/new_part"

    def mutate(self, urls: list[str]) -> None:
        from sqlalchemy import delete, func, insert, select, update

        from backstop.drivers.schemaless.engines import cell_table

        engine = self._engine(urls[0])
        table = cell_table("cells")
        with engine.begin() as conn:
            first = conn.execute(select(func.min(table.c.added_id))).scalar_one()
            conn.execute(update(table).where(table.c.added_id == first).values(body=b"mutated"))
            conn.execute(delete(table).where(table.c.added_id == first + 1))
            conn.execute(insert(table), _cells(seed=99, count=1))
            odd = cell_table(ODD_TABLE)
            oldest = conn.execute(select(func.min(odd.c.added_id))).scalar_one()
            conn.execute(update(odd).where(odd.c.added_id == oldest).values(body=b"mutated"))
            new = cell_table("new_part")
            new.create(conn)
            conn.execute(insert(new), _cells(seed=98, count=3))
        engine.dispose()


class SqliteHarness(SchemalessHarness):
    id = "schemaless-sqlite"

    def new_database(self) -> str:
        path = self.folder / f"{self._name('shard-')}.db"
        return f"sqlite:///{path}"

    def make_target(self) -> list[str]:
        # An existing, empty file: the target is there, it just holds nothing.
        urls = super().make_target()
        for url in urls:
            Path(url.removeprefix("sqlite:///")).touch()
        return urls

    def aliases(self, urls: list[str]) -> list[list[str]]:
        dotted = [f"sqlite:///{Path(u.removeprefix('sqlite:///')).parent}/./{Path(u).name}"
                  for u in urls]  # fmt: skip
        linked = []
        for url in urls:
            path = Path(url.removeprefix("sqlite:///"))
            link = path.with_name(f"link-{path.name}")
            if not link.exists():
                link.symlink_to(path)
            linked.append(f"sqlite:///{link}")
        return [dotted, linked]


class ServerSchemalessHarness(SchemalessHarness):
    server_fixture: ClassVar[str]

    @property
    def server(self):
        return self.request.getfixturevalue(self.server_fixture)

    def new_database(self) -> str:
        return self.server.url(self.server.create_database())


class PostgresHarness(ServerSchemalessHarness):
    id = "schemaless-postgresql"
    server_fixture = "pg_server"

    def aliases(self, urls: list[str]) -> list[list[str]]:
        return [[u.replace("@127.0.0.1:", "@localhost:") for u in urls]]


class MariaDBHarness(ServerSchemalessHarness):
    id = "schemaless-mariadb"
    server_fixture = "mariadb_server"

    def aliases(self, urls: list[str]) -> list[list[str]]:
        return [[u.replace("mysql+pymysql://", "mariadb+pymysql://") for u in urls]]


# -- ZooKeeper ----------------------------------------------------------------------------
class ZooKeeperHarness(Harness):
    technology = "zookeeper"
    content_names = ("alpha", "gamma", "locked", "dot.ted")
    include = "/alpha"
    included_part = "alpha"
    include_nothing = "/no-such-subtree"
    overwrite_scope = "target"
    changed_part = "alpha"
    new_part = "new-part"
    version: ClassVar[str]

    @property
    def server(self):
        return self.request.getfixturevalue(f"zk{self.version.replace('.', '')}_server")

    def _client(self):
        from zk_trees import authenticated_client

        client = authenticated_client(self.server.hosts)
        self._cleanups.append(lambda: (client.stop(), client.close()))
        return client

    def _chroot(self, url: str) -> str:
        return "/" + url.split("/", 3)[3]

    def make_source(self) -> list[str]:
        from kazoo.protocol.serialization import Create
        from kazoo.security import OPEN_ACL_UNSAFE
        from zk_trees import CUSTOM_ACL

        root = f"/{self._name('conf-')}"
        zk = self._client()
        zk.ensure_path(root)
        rng = random.Random(5)
        zk.create(f"{root}/alpha", b"")  # empty data
        null = zk.handler.async_result()
        zk._call(Create(f"{root}/alpha/null", None, OPEN_ACL_UNSAFE, 0), null)  # null data
        null.get()
        for i in range(40):
            zk.create(f"{root}/alpha/n{i:02d}", rng.randbytes(rng.randrange(64)))
        zk.create(f"{root}/alpha/locked", b"secret-ish", acl=CUSTOM_ACL)
        zk.create(f"{root}/beta", bytes(range(256)) * 2000)  # 512,000 bytes, every value
        for name in ("sp ace", "quo'te\"s", "ünï cödé ☃", "dot.ted", ".hidden", "..x"):
            zk.create(f"{root}/beta/{name}", name.encode())
        zk.create(f"{root}/beta/seq-", b"q", sequence=True)
        deep = f"{root}/gamma" + "".join(f"/d{i}" for i in range(20))
        zk.ensure_path(deep)
        zk.set(deep, b"bottom")
        return [self.server.url(root)]

    def make_target(self) -> list[str]:
        return [self.server.url(f"/{self._name('conf-target-')}")]

    def aliases(self, urls: list[str]) -> list[list[str]]:
        return [[u.replace("@127.0.0.1:", "@localhost:") for u in urls], self.forwarded(urls)]

    def records(self, urls: list[str]) -> Records:
        zk = self._client()
        root = self._chroot(urls[0])
        out: Records = {}
        if zk.exists(root) is None:
            return out
        for child in zk.get_children(root):
            part = out.setdefault(child, {})
            stack = [f"{root}/{child}"]
            while stack:
                path = stack.pop()
                data, stat = zk.get(path)
                if stat.ephemeralOwner:
                    continue
                acls, _ = zk.get_acls(path)
                acl_text = sorted(f"{a.perms}:{a.id.scheme}:{a.id.id}" for a in acls)
                # None (null data) and b"" (empty data) serialize differently.
                value = b"\x00null" if data is None else b"\x01" + data
                part[path[len(root) :]] = _framed(value, json.dumps(acl_text).encode())
                stack.extend(f"{path}/{c}" for c in zk.get_children(path))
        return out

    def mutate(self, urls: list[str]) -> None:
        zk = self._client()
        root = self._chroot(urls[0])
        zk.set(f"{root}/alpha/n00", b"mutated")
        zk.delete(f"{root}/alpha/n01")
        zk.create(f"{root}/alpha/added", b"added")
        zk.set(f"{root}/beta/sp ace", b"mutated-other")
        zk.create(f"{root}/{self.new_part}/child", b"new", makepath=True)


class ZooKeeper38Harness(ZooKeeperHarness):
    id = "zookeeper-3.8"
    version = "3.8"


class ZooKeeper39Harness(ZooKeeperHarness):
    id = "zookeeper-3.9"
    version = "3.9"


# -- Docstore -----------------------------------------------------------------------------
def fidelity_documents() -> list[dict]:
    """Every BSON type FerretDB v1 keeps (it refuses Decimal128, MinKey, MaxKey, Code,
    dotted field names and a double quote in a field name: "malformed JSON" from its
    SQLite backend), nulls beside empties, and odd keys."""
    from bson import Binary, Int64, ObjectId, Regex, Timestamp

    return [
        {
            "_id": ObjectId("65a1b2c3d4e5f60718293a4b"),
            "i32": 7,
            "i64": Int64(2**40),
            "dbl": 3.25,
            "neg": -0.0,
            "dt": datetime(2026, 11, 26, 12, 0, 0, 123000),
            "bin": Binary(b"\x00\x01\xff"),
            "uuid4": Binary(uuid.UUID(int=4).bytes, 4),
            "regex": Regex("^a.*z$", "i"),
            "ts": Timestamp(1_700_000_000, 5),
            "nested": {"a": [1, {"b": [2, 3, {"c": None}]}], "empty": {}},
            "unicode": "z\u00fcrich \u6771\u4eac \U0001f600",
            "bool": False,
        },
        {"_id": "nulls", "null": None, "empty_str": "", "empty_arr": [], "empty_doc": {}},
        {"_id": 42, "big": "x" * (300 * 1024), "f": 1e-300},
        {"_id": Int64(-1), "sp ace": 1, "quo'te": 2, "ünï": 3},
    ] + [{"_id": i, "n": i, "v": os.urandom(20).hex()} for i in range(100, 160)]


class DocstoreHarness(Harness):
    content_names = ("conf_db", "other_db", "things", "dot ted")
    id = "docstore-ferretdb"
    technology = "docstore"
    database = "conf_db"
    include = "conf_db.docs"
    included_part = "conf_db.docs"
    include_nothing = "no_such_db.nothing"
    changed_part = "conf_db.docs"
    new_part = "conf_db.new_part"

    def _server(self) -> str:
        """A FerretDB of its own: a Docstore source is a whole deployment."""
        from conftest import _ferretdb

        server = _ferretdb(self.folder / self._name("ferret-"))
        self._cleanups.append(server.stop)
        return server.url

    def _client(self, url: str):
        from bson.raw_bson import RawBSONDocument
        from pymongo import MongoClient

        client = MongoClient(url, document_class=RawBSONDocument, uuidRepresentation="unspecified")
        self._cleanups.append(client.close)
        return client

    def make_source(self) -> list[str]:
        from pymongo import ASCENDING, DESCENDING

        url = self._server()
        db = self._client(url)[self.database]
        db.docs.insert_many(fidelity_documents())
        db.docs.create_index([("n", ASCENDING), ("i32", DESCENDING)], name="n_i32")
        db["ünï cödé.dot ted"].insert_many([{"_id": i, "x": str(i)} for i in range(50)])
        db.create_collection("empty")
        self._client(url)["other_db"].things.insert_one({"_id": 1, "nested": {"deep": [None]}})
        return [url]

    def make_target(self) -> list[str]:
        return [self._server()]

    def aliases(self, urls: list[str]) -> list[list[str]]:
        return [[u.replace("//127.0.0.1:", "//localhost:") for u in urls], self.forwarded(urls)]

    def records(self, urls: list[str]) -> Records:
        import bson

        client = self._client(urls[0])
        out: Records = {}
        for db_name in client.list_database_names():
            if db_name in ("admin", "local", "config"):
                continue
            db = client[db_name]
            for name in db.list_collection_names():
                part = out.setdefault(f"{db_name}.{name}", {})
                for doc in db[name].find({}):
                    part[bson.encode({"_id": doc["_id"]}).hex()] = bytes(doc.raw)
                indexes = sorted(
                    json.dumps({"key": list(i["key"].items()), "unique": i.get("unique", False)})
                    for i in db[name].list_indexes()
                )
                part["~indexes"] = json.dumps(indexes).encode()
        return out

    def mutate(self, urls: list[str]) -> None:
        db = self._client(urls[0])[self.database]
        db.docs.update_one({"_id": 100}, {"$set": {"v": "mutated"}})
        db.docs.delete_one({"_id": 101})
        db.docs.insert_one({"_id": "added", "v": "added"})
        db["ünï cödé.dot ted"].update_one({"_id": 0}, {"$set": {"x": "mutated-other"}})
        db.new_part.insert_one({"_id": 1, "v": "new"})


# -- kvdir (the example plugin driver) ----------------------------------------------------
class KvDirHarness(Harness):
    id = "kvdir"
    content_names = ("key-007", "dot.ted", "sp ace")
    technology = "kvdir"
    overwrite_scope = "target"
    changed_part = "keys"
    new_part = "keys"  # a folder is one part: a new key is a new record in it

    def installed(self) -> None:
        self.request.getfixturevalue("kvdir_installed")  # the driver, through its entry point

    def _folder(self) -> Path:
        self.installed()
        folder = self.folder / self._name("kv-")
        folder.mkdir()
        return folder

    def make_source(self) -> list[str]:
        folder = self._folder()
        rng = random.Random(9)
        values = {f"key-{i:03d}": rng.randbytes(rng.randrange(200)) for i in range(60)}
        values |= {
            "empty": b"",
            "big": bytes(range(256)) * 1000,
            "sp ace": b"1",
            "quo'te\"s": b"2",
            "ünï cödé ☃": b"3",
            "dot.ted": b"4",
            ".hidden": b"5",
        }
        for key, value in values.items():
            (folder / key).write_bytes(value)
        return [f"kvdir://{folder}"]

    def make_target(self) -> list[str]:
        return [f"kvdir://{self._folder()}"]

    def aliases(self, urls: list[str]) -> list[list[str]]:
        return [[f"{u}/." for u in urls], [f"{u}/../{Path(u).name}" for u in urls]]

    def records(self, urls: list[str]) -> Records:
        folder = Path(urls[0].removeprefix("kvdir://"))
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return {"keys": files} if files else {}

    def mutate(self, urls: list[str]) -> None:
        folder = Path(urls[0].removeprefix("kvdir://"))
        (folder / "key-000").write_bytes(b"mutated")
        (folder / "key-001").unlink()
        (folder / "added").write_bytes(b"added")


def after_overwrite(
    harness: Harness,
    backup: dict[str, str],
    before: dict[str, str],
    include_part: str | None = None,
) -> dict[str, str]:
    """The digest an overwrite restore must leave: the included part replaced and all else
    as before; or without --include, the backup's parts replaced and (scope "parts")
    every other part as before."""
    if include_part is not None:
        expected = dict(before)
        expected[include_part] = backup[include_part]
        return expected
    if harness.overwrite_scope == "target":
        return dict(backup)
    return {p: d for p, d in before.items() if p not in backup} | backup


def after_merge(backup: Records, before: Records, include_part: str | None = None) -> Records:
    """The records a merge restore must leave: every record the target held, as it was,
    plus the backup's records it lacked (of the included part only, with --include)."""
    expected = {part: dict(records) for part, records in before.items()}
    for part, records in backup.items():
        if include_part is None or part == include_part:
            expected[part] = dict(records) | expected.get(part, {})
    return expected


def assert_merged(done) -> None:
    """A merge into a target holding records that differ from the backup's (mutated on
    purpose) succeeds for every driver: merge keeps what the target holds, and its
    verification accepts the target's own records. The merged content is checked by
    the caller."""
    assert done.code == 0, done.stdout + done.stderr


HARNESSES: dict[str, type[Harness]] = {
    h.id: h
    for h in (
        SqliteHarness,
        PostgresHarness,
        MariaDBHarness,
        ZooKeeper38Harness,
        ZooKeeper39Harness,
        DocstoreHarness,
        KvDirHarness,
    )
}
