"""Docstore under load: one database on a FerretDB server, one collection per writer.
FerretDB has no snapshot reads, so the check holds the target to what was acknowledged
before the backup run started, compared as raw BSON (benchmarks/load/technologies.py)."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime
from typing import Any

from benchmarks.load.technologies import COLUMNS, Check, Target, Technology
from benchmarks.load.writers import Writer


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
