"""Schemaless under load: two SQLite shards in WAL mode, or two PostgreSQL databases, one
writer per shard. The check compares each restored shard with the source's cells up to
the backup's watermark, which is exact because a shard's committed cells are always a
prefix of its `added_id`s (benchmarks/load/technologies.py)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import make_url

from backstop.drivers.schemaless.cells import to_micros
from backstop.drivers.schemaless.engines import cell_table
from benchmarks.load.technologies import COLUMNS, Check, Target, Technology
from benchmarks.load.writers import Writer

PASSWORD_ENV = "LOAD_PG_PASSWORD"  # the flow runs read the PostgreSQL password from here


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
