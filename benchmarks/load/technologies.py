"""The sources the load test backs up, the writers that keep writing to them, the fresh
targets each cycle restores into, and the independent check of every restored target.

Each source is written by its own writer threads for the whole run, backups included.
Writers only add (cells, znodes, documents; nothing is changed or deleted), each one
commits its writes one after the other, and each records when every write was
acknowledged. That makes "the source as of the backup's consistency point" well
defined without stopping anything:

- Schemaless: one writer per shard, so a shard's committed cells are always a prefix
  of its `added_id`s (no id commits after a higher one). The backup's point is a
  watermark per table and shard, read in the backup's own transaction; the target must
  hold exactly the source's cells with `added_id <= watermark`, every column equal.
- ZooKeeper: the manifest's consistency kind says what the walk proved. `snapshot` at
  zxid Z: the target is exactly the source's nodes with czxid <= Z; `converged` in
  [Z, Zend]: it holds every node with czxid <= Z and none with czxid > Zend; `none`
  (fuzzy, said so): every node acknowledged before the backup run started, and
  nothing that is not in the source. In every case each restored node's data equals
  the source node's.
- Docstore (FerretDB: no snapshot reads, so consistency `none`, said so): every
  document acknowledged before the backup run started is restored, nothing that is
  not in the source is, and every restored document is the source's byte for byte
  (raw BSON).

A restore run that completed has already re-hashed every backup file before writing
and compared the target with the manifest afterwards (counts and digests); the checks
here are the load test's own, from the source side.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import make_url

from backstop.drivers.schemaless.cells import to_micros
from backstop.drivers.schemaless.engines import cell_table

COLUMNS = ("profile", "address", "preferences", "orders", "audit")
PASSWORD_ENV = "LOAD_PG_PASSWORD"  # the flow runs read the PostgreSQL password from here
MAX_PROBLEMS = 10


# -- writers ---------------------------------------------------------------------------------
@dataclass
class WriterStats:
    name: str
    ops: int = 0
    items: int = 0
    errors: int = 0
    last_errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0


class Writer(threading.Thread):
    """Calls `op()` `rate` times a second until stopped; `op` writes and returns the
    keys it added. Every acknowledged key is kept with the time of its acknowledgement
    (time.time(), so that it compares with the flow runs' start times)."""

    def __init__(self, name: str, op: Callable[[], list[Any]], rate: float) -> None:
        super().__init__(name=f"writer-{name}", daemon=True)
        self.op = op
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.stats = WriterStats(name)
        self.acked: list[tuple[float, Any]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                keys = self.op()
            except Exception as exc:  # counted and reported; the writer keeps going
                self.stats.errors += 1
                self.stats.last_errors = [
                    *self.stats.last_errors[-4:],
                    f"{type(exc).__name__}: {exc}"[:300],
                ]
                keys = []
            took = time.monotonic() - started
            self.stats.slowest_s = max(self.stats.slowest_s, round(took, 3))
            if keys:
                now = time.time()
                with self.lock:
                    self.acked.extend((now, key) for key in keys)
                self.stats.ops += 1
                self.stats.items += len(keys)
            next_at = max(next_at + self.period, time.monotonic())
            self.stopped.wait(next_at - time.monotonic())

    def acked_before(self, moment: float) -> set[Any]:
        with self.lock:
            return {key for at, key in self.acked if at < moment}

    def stop(self) -> None:
        self.stopped.set()


# -- the technology contract --------------------------------------------------------------
@dataclass
class Target:
    urls: list[str]  # as the restore flow gets them
    rename: dict[str, str] = field(default_factory=dict)
    place: Any = None  # what the technology needs to check and drop it


@dataclass
class Check:
    problems: list[str]
    details: dict[str, Any]


class Technology:
    """One kind of source under load. `name` tells the kinds apart in the report;
    `technology` is backstop's."""

    name = ""
    technology = ""

    def __init__(self, work: Path, run_id: str, scale: dict[str, int], rate: float) -> None:
        self.work = work
        self.run_id = run_id
        self.scale = scale
        self.rate = rate
        self.writers: list[Writer] = []

    def setup(self) -> None:
        raise NotImplementedError

    def sources(self) -> list[str]:
        raise NotImplementedError

    def backup_options(self) -> dict[str, Any]:
        return {}

    def new_target(self, cycle: int) -> Target:
        raise NotImplementedError

    def check(self, target: Target, manifest: dict, backup_started: float) -> Check:
        raise NotImplementedError

    def drop_target(self, target: Target) -> None:
        pass

    def teardown(self) -> None:
        pass

    def start_writers(self) -> None:
        for writer in self.writers:
            writer.start()

    def stop_writers(self) -> None:
        for writer in self.writers:
            writer.stop()
        for writer in self.writers:
            if writer.is_alive():
                writer.join(timeout=30)

    def acked_before(self, moment: float) -> set[Any]:
        found: set[Any] = set()
        for writer in self.writers:
            found |= writer.acked_before(moment)
        return found


# -- Schemaless ----------------------------------------------------------------------------
def _cells(rng: random.Random, count: int) -> list[dict]:
    """`count` new cells: a few hundred bytes of JSON each, created now."""
    now = datetime.now(UTC).replace(tzinfo=None)
    out = []
    for i in range(count):
        row_key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        note = "x" * rng.randint(50, 400)
        body = f'{{"row":"{row_key}","n":{rng.randrange(10**9)},"note":"{note}"}}'.encode()
        out.append(
            {
                "row_key": row_key,
                "column_name": rng.choice(COLUMNS),
                "ref_key": rng.randint(1, 3),
                "body": body,
                "created_at": now + timedelta(microseconds=i),
            }
        )
    return out


def _cells_of(url: str, up_to: int | None = None) -> list[tuple]:
    """Every cell as engine-neutral values, in added_id order (up to a watermark)."""
    table = cell_table("cells")
    query = select(table).order_by(table.c.added_id)
    if up_to is not None:
        query = query.where(table.c.added_id <= up_to)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (r.added_id, r.row_key, r.column_name, r.ref_key, bytes(r.body),
                 to_micros(r.created_at))
                for r in conn.execute(query)
            ]  # fmt: skip
    finally:
        engine.dispose()


class Schemaless(Technology):
    technology = "schemaless"
    batch = 5  # cells per write (one transaction)

    def shard_urls(self) -> list[str]:
        """The shards as the load test connects to them (real passwords)."""
        raise NotImplementedError

    def _writer(self, index: int, url: str) -> Writer:
        engine = create_engine(url, **self._engine_args())
        table = cell_table("cells")
        rng = random.Random(f"{self.name}-{index}")

        def op() -> list[Any]:
            with engine.begin() as conn:
                conn.execute(insert(table), _cells(rng, self.batch))
            return [index] * self.batch  # the cells themselves are checked by watermark

        writer = Writer(f"{self.name}-{index}", op, self.rate)
        writer.engine = engine  # type: ignore[attr-defined]
        return writer

    def _engine_args(self) -> dict[str, Any]:
        return {}

    def _fill(self, url: str, index: int) -> None:
        engine = create_engine(url, **self._engine_args())
        table = cell_table("cells")
        table.create(engine, checkfirst=True)
        rng = random.Random(f"{self.name}-fill-{index}")
        with engine.begin() as conn:
            remaining = self.scale["cells"] // self.scale["shards"]
            while remaining > 0:
                count = min(remaining, 2_000)
                conn.execute(insert(table), _cells(rng, count))
                remaining -= count
        engine.dispose()

    def setup(self) -> None:
        urls = self.shard_urls()
        for index, url in enumerate(urls):
            self._fill(url, index)
        self.writers = [self._writer(i, url) for i, url in enumerate(urls)]

    def check(self, target: Target, manifest: dict, backup_started: float) -> Check:
        problems: list[str] = []
        compared = 0
        watermarks = manifest["consistency"]["point"]
        sources = self.shard_urls()
        target_urls = self.target_connect_urls(target)
        for index, unit in enumerate(manifest["units"]):
            mark = watermarks.get(unit["name"], {}).get("cells")
            if mark is None:
                problems.append(f"{unit['name']}: no watermark for table cells in the manifest")
                continue
            expected = _cells_of(sources[index], up_to=mark)
            restored = _cells_of(target_urls[index])
            compared += len(restored)
            if restored != expected:
                have = {c[0] for c in restored}
                want = {c[0] for c in expected}
                missing, extra = sorted(want - have), sorted(have - want)
                differing = sum(
                    1 for a, b in zip(restored, expected, strict=False) if a[0] == b[0] and a != b
                )
                problems.append(
                    f"{unit['name']}: target differs from the source's cells up to watermark "
                    f"{mark}: {len(missing)} missing (first {missing[:5]}), {len(extra)} extra "
                    f"(first {extra[:5]}), {differing} differing"
                )
        return Check(problems, {"cells_compared": compared, "watermarks": watermarks})

    def target_connect_urls(self, target: Target) -> list[str]:
        return target.urls

    def stop_writers(self) -> None:
        super().stop_writers()
        for writer in self.writers:
            writer.engine.dispose()  # type: ignore[attr-defined]


class SchemalessSQLite(Schemaless):
    """Two SQLite shards in WAL mode (writers go on during a backup's read transaction;
    in rollback-journal mode they would wait for it, docs/schemaless.md)."""

    name = "schemaless-sqlite"

    def folder(self) -> Path:
        return self.work / "sqlite"

    def shard_urls(self) -> list[str]:
        return [f"sqlite:///{self.folder() / f'shard{i}.db'}" for i in range(self.scale["shards"])]

    def _engine_args(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": 60}}

    def setup(self) -> None:
        self.folder().mkdir(parents=True, exist_ok=True)
        for url in self.shard_urls():
            path = make_url(url).database
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA journal_mode=WAL")
        super().setup()

    def sources(self) -> list[str]:
        return self.shard_urls()

    def new_target(self, cycle: int) -> Target:
        folder = self.work / "targets" / f"{self.name}-{cycle}"
        folder.mkdir(parents=True)
        return Target(
            [f"sqlite:///{folder / f'shard{i}.db'}" for i in range(self.scale["shards"])],
            place=folder,
        )

    def drop_target(self, target: Target) -> None:
        import shutil

        shutil.rmtree(target.place, ignore_errors=True)


class SchemalessPostgres(Schemaless):
    """Two PostgreSQL databases on one server; each cycle restores into two new ones."""

    name = "schemaless-postgresql"

    def __init__(self, *args: Any, admin_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admin = make_url(admin_url)
        self.databases = [f"load_{self.run_id}_s{i}" for i in range(self.scale["shards"])]

    def _url(self, database: str, hidden: bool = False) -> str:
        url = self.admin.set(database=database)
        if hidden:  # what the flow gets: the password from the worker's environment
            shown = url.set(password="PASSWORD").render_as_string(hide_password=False)
            return shown.replace(":PASSWORD@", ":${env:" + PASSWORD_ENV + "}@")
        return url.render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        import psycopg

        plain = self.admin.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(sql)

    def shard_urls(self) -> list[str]:
        return [self._url(d) for d in self.databases]

    def setup(self) -> None:
        for database in self.databases:
            self._admin(f'CREATE DATABASE "{database}"')
        super().setup()

    def sources(self) -> list[str]:
        return [self._url(d, hidden=True) for d in self.databases]

    def new_target(self, cycle: int) -> Target:
        names = [f"load_{self.run_id}_c{cycle}_s{i}" for i in range(self.scale["shards"])]
        for name in names:
            self._admin(f'CREATE DATABASE "{name}"')
        return Target([self._url(n, hidden=True) for n in names], place=names)

    def target_connect_urls(self, target: Target) -> list[str]:
        return [self._url(n) for n in target.place]

    def drop_target(self, target: Target) -> None:
        for name in target.place:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def teardown(self) -> None:
        for database in self.databases:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# -- ZooKeeper ---------------------------------------------------------------------------------
def _walk(client: Any, root: str) -> dict[str, tuple[bytes, int]]:
    """Every node under root (root itself left out): relative path -> (data, czxid),
    read breadth-first with up to 256 requests in flight."""
    found: dict[str, tuple[bytes, int]] = {}
    level = [root]
    while level:
        paths = []
        for start in range(0, len(level), 256):
            chunk = level[start : start + 256]
            for parent, pending in [(p, client.get_children_async(p)) for p in chunk]:
                with contextlib.suppress(Exception):  # gone meanwhile: nothing below it
                    paths += [f"{parent.rstrip('/')}/{c}" for c in pending.get()]
        for start in range(0, len(paths), 256):
            chunk = paths[start : start + 256]
            for path, pending in [(p, client.get_async(p)) for p in chunk]:
                data, stat = pending.get()
                found[path[len(root) :]] = (data, stat.czxid)
        level = paths
    return found


class ZooKeeper(Technology):
    """A chroot on one ZooKeeper server: a small tree, and one writer per subtree adding
    znodes; each cycle restores into a new sibling chroot on the same server."""

    name = technology = "zookeeper"

    def __init__(self, *args: Any, hosts: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = hosts
        self.base = f"/load-{self.run_id}"
        self.root = f"{self.base}/src"
        self.clients: list[Any] = []

    def _client(self) -> Any:
        from kazoo.client import KazooClient

        client = KazooClient(hosts=self.hosts, timeout=30)
        client.start(timeout=60)
        self.clients.append(client)
        return client

    def setup(self) -> None:
        client = self._client()
        self.admin = client
        rng = random.Random(self.run_id)
        client.ensure_path(self.root)
        pending = []
        for i in range(self.scale["znodes"]):
            group = f"{self.root}/app/g{i % 10}"
            if i < 10:
                client.ensure_path(group)
            data = f'{{"node": {i}, "text": "{"y" * rng.randint(0, 300)}"}}'.encode()
            pending.append(client.create_async(f"{group}/n{i:05d}", data))
        for p in pending:
            p.get()
        self.writers = [self._writer(k) for k in range(self.scale["writers"])]

    def _writer(self, index: int) -> Writer:
        client = self._client()
        parent = f"{self.root}/w{index}"
        client.ensure_path(parent)
        counter = iter(range(10**9))
        rng = random.Random(index)

        def op() -> list[Any]:
            seq = next(counter)
            path = f"{parent}/n{seq:07d}"
            client.create(path, f"{index}:{seq}:{'z' * rng.randint(10, 200)}".encode())
            return [path[len(self.root) :]]

        return Writer(f"{self.name}-{index}", op, self.rate)

    def sources(self) -> list[str]:
        return [f"zk://{self.hosts}{self.root}"]

    def new_target(self, cycle: int) -> Target:
        chroot = f"{self.base}/c{cycle}"
        return Target([f"zk://{self.hosts}{chroot}"], place=chroot)

    def check(self, target: Target, manifest: dict, backup_started: float) -> Check:
        consistency = manifest["consistency"]
        kind, point = consistency["kind"], consistency["point"]
        source = _walk(self.admin, self.root)
        restored = _walk(self.admin, target.place)
        problems = []
        extra = sorted(p for p in restored if p not in source)
        differing = sorted(p for p in restored if p in source and restored[p][0] != source[p][0])
        if extra:
            problems.append(f"{len(extra)} restored znodes not in the source: {extra[:5]}")
        if differing:
            problems.append(f"{len(differing)} restored znodes differ: {differing[:5]}")
        if kind in ("snapshot", "converged"):
            low = point["zxid"]
            high = point.get("zxid_end", low)
            must = {p for p, (_, czxid) in source.items() if czxid <= low}
            may = {p for p, (_, czxid) in source.items() if czxid <= high}
            missing = sorted(must - set(restored))
            newer = sorted(set(restored) - may - set(extra))
            if missing:
                problems.append(
                    f"{kind} at zxid {hex(low)}: {len(missing)} znodes created by then are "
                    f"missing: {missing[:5]}"
                )
            if newer:
                problems.append(
                    f"{kind} up to zxid {hex(high)}: {len(newer)} znodes created later were "
                    f"restored: {newer[:5]}"
                )
        # Whatever the kind: what the writers had acknowledged before the run started.
        must = self.acked_before(backup_started) | {
            p for p in source if p.startswith("/app") or p.count("/") == 1
        }
        missing = sorted(must - set(restored))
        if missing:
            problems.append(
                f"{len(missing)} znodes acknowledged before the backup started are missing: "
                f"{missing[:5]}"
            )
        return Check(
            problems,
            {"znodes_compared": len(restored), "source_znodes_now": len(source), "kind": kind},
        )

    def drop_target(self, target: Target) -> None:
        with contextlib.suppress(Exception):
            self.admin.delete(target.place, recursive=True)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.delete(self.base, recursive=True)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.stop()
                client.close()


# -- Docstore ------------------------------------------------------------------------------------
class Docstore(Technology):
    """One database on a FerretDB source server, one collection per writer; each cycle
    restores it under a new name (`--rename`) on the target server."""

    name = technology = "docstore"
    batch = 5  # documents per write (one insert_many)

    def __init__(self, *args: Any, source_url: str, target_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_url = source_url
        self.target_url = target_url
        self.database = f"load_{self.run_id}"
        self.clients: list[Any] = []

    def _client(self, url: str, raw: bool = False) -> Any:
        from bson.raw_bson import RawBSONDocument
        from pymongo import MongoClient

        args = {"document_class": RawBSONDocument} if raw else {}
        client = MongoClient(url, serverSelectionTimeoutMS=30_000, **args)
        self.clients.append(client)
        return client

    @staticmethod
    def _documents(rng: random.Random, writer: int, first: int, count: int) -> list[dict]:
        now = datetime.now(UTC)
        return [
            {
                "_id": f"w{writer}-{seq:07d}",
                "writer": writer,
                "seq": seq,
                "at": now,
                "payload": "d" * rng.randint(20, 400),
                "tags": [rng.choice(COLUMNS) for _ in range(3)],
            }
            for seq in range(first, first + count)
        ]

    def setup(self) -> None:
        client = self._client(self.source_url)
        self.raw_source = self._client(self.source_url, raw=True)
        self.raw_target = self._client(self.target_url, raw=True)
        self.target_admin = self._client(self.target_url)
        per_writer = self.scale["documents"] // self.scale["writers"]
        for k in range(self.scale["writers"]):
            rng = random.Random(f"fill-{k}")
            collection = client[self.database][f"events_{k}"]
            for first in range(0, per_writer, 500):
                collection.insert_many(self._documents(rng, k, first, min(500, per_writer - first)))
            collection.create_index("seq")
        self.initial = per_writer
        self.writers = [self._writer(k, client) for k in range(self.scale["writers"])]

    def _writer(self, index: int, client: Any) -> Writer:
        collection = client[self.database][f"events_{index}"]
        rng = random.Random(index)
        state = {"next": self.initial}

        def op() -> list[Any]:
            documents = self._documents(rng, index, state["next"], self.batch)
            collection.insert_many(documents)
            state["next"] += self.batch
            return [(f"events_{index}", d["_id"]) for d in documents]

        return Writer(f"{self.name}-{index}", op, self.rate)

    def sources(self) -> list[str]:
        return [self.source_url]

    def backup_options(self) -> dict[str, Any]:
        return {"include": [self.database]}

    def new_target(self, cycle: int) -> Target:
        name = f"{self.database}_c{cycle}"
        return Target([self.target_url], rename={self.database: name}, place=name)

    def _documents_of(self, client: Any, database: str) -> dict[tuple[str, str], bytes]:
        found = {}
        for name in client[database].list_collection_names():
            for doc in client[database][name].find():
                found[(name, doc["_id"])] = doc.raw
        return found

    def check(self, target: Target, manifest: dict, backup_started: float) -> Check:
        source = self._documents_of(self.raw_source, self.database)
        restored = self._documents_of(self.raw_target, target.place)
        problems = []
        extra = sorted(k for k in restored if k not in source)
        differing = sorted(k for k in restored if k in source and restored[k] != source[k])
        initial = {
            (f"events_{k}", f"w{k}-{seq:07d}")
            for k in range(self.scale["writers"])
            for seq in range(self.initial)
        }
        missing = sorted((self.acked_before(backup_started) | initial) - set(restored))
        if extra:
            problems.append(f"{len(extra)} restored documents not in the source: {extra[:5]}")
        if differing:
            problems.append(f"{len(differing)} restored documents differ: {differing[:5]}")
        if missing:
            problems.append(
                f"{len(missing)} documents acknowledged before the backup started are "
                f"missing: {missing[:5]}"
            )
        return Check(
            problems,
            {
                "documents_compared": len(restored),
                "source_documents_now": len(source),
                "kind": manifest["consistency"]["kind"],
            },
        )

    def drop_target(self, target: Target) -> None:
        with contextlib.suppress(Exception):
            self.target_admin.drop_database(target.place)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.raw_source.drop_database(self.database)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
