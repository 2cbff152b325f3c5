"""`backstop demo`: a Schemaless datastore on SQLite, backed up, restored and compared.

The datastore generator and the comparison are also what tests and benchmarks use,
so the demo exercises exactly the code paths they measure.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

from sqlalchemy.engine import make_url

COLUMNS = ("profile", "address", "preferences", "orders", "audit")
_FIRST = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Edsger", "Frances", "Alan"]
_LAST = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Dijkstra", "Allen"]
_CITIES = ["Aarhus", "Lagos", "Lima", "Osaka", "Porto", "Quebec", "Tartu", "Utrecht", "Zagreb"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    added_id INTEGER PRIMARY KEY AUTOINCREMENT,
    row_key CHAR(36) NOT NULL,
    column_name VARCHAR(64) NOT NULL,
    ref_key BIGINT NOT NULL,
    body BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (row_key, column_name, ref_key)
)
"""


def _body(rng: random.Random, column: str, ref_key: int, row_key: str) -> bytes:
    """A few hundred bytes of the JSON a real entity column would hold."""
    doc: dict[str, object] = {"row": row_key, "column": column, "version": ref_key}
    if column == "profile":
        doc |= {
            "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "age": rng.randint(18, 90),
            "email": f"user{rng.randrange(10**6)}@example.org",
            "tags": rng.sample(_CITIES, 3),
        }
    elif column == "address":
        doc |= {
            "street": f"{rng.randint(1, 999)} {rng.choice(_LAST)} Street",
            "city": rng.choice(_CITIES),
            "zip": f"{rng.randrange(10**5):05d}",
            "geo": [round(rng.uniform(-90, 90), 6), round(rng.uniform(-180, 180), 6)],
        }
    elif column == "orders":
        doc |= {
            "items": [
                {
                    "sku": f"SKU-{rng.randrange(10**6):06d}",
                    "qty": rng.randint(1, 5),
                    "price": round(rng.uniform(1, 500), 2),
                }
                for _ in range(rng.randint(1, 4))
            ]
        }
    else:
        doc |= {
            "flags": {c: rng.random() < 0.5 for c in _CITIES[:5]},
            "note": "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(40, 160))),
        }
    return json.dumps(doc, separators=(",", ":")).encode()


def _generate_cells(rng: random.Random) -> Iterator[tuple[str, str, int, bytes, str]]:
    """Endless cells: rows with several columns, each column with 1-3 ref_key versions."""
    clock = datetime(2026, 1, 1)
    while True:
        row_key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for column in rng.sample(COLUMNS, rng.randint(2, 4)):
            for ref_key in range(1, rng.randint(1, 3) + 1):
                clock += timedelta(microseconds=rng.randint(1, 5000))
                yield (
                    row_key,
                    column,
                    ref_key,
                    _body(rng, column, ref_key, row_key),
                    clock.isoformat(sep=" ", timespec="microseconds"),
                )


def _quoted(table: str) -> str:
    """SQLite's quoting of an identifier (tests pass odd table names here)."""
    return '"' + table.replace('"', '""') + '"'


def make_schemaless_datastore(
    folder: Path, shards: int = 2, cells: int = 100_000, seed: int = 7, table: str = "cells"
) -> list[str]:
    """SQLite shards holding `cells` cells in total; returns their URLs."""
    folder.mkdir(parents=True, exist_ok=True)
    generated = _generate_cells(random.Random(seed))
    urls = []
    for index in range(shards):
        count = cells // shards + (1 if index < cells % shards else 0)
        path = folder / f"shard{index}.db"
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(_SCHEMA.format(table=_quoted(table)))
            remaining = islice(generated, count)
            while chunk := list(islice(remaining, 50_000)):
                db.executemany(
                    f"INSERT INTO {_quoted(table)} (row_key, column_name, ref_key, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    chunk,
                )
        urls.append(f"sqlite:///{path}")
    return urls


@dataclass
class Comparison:
    equal: bool
    cells: int
    differences: list[str]


def compare_shards(sources: list[str], targets: list[str], table: str = "cells") -> Comparison:
    """Cell-by-cell, column-by-column equality of SQLite shards, values as stored."""
    differences: list[str] = []
    cells = 0
    for source, target in zip(sources, targets, strict=True):
        a = sqlite3.connect(f"file:{make_url(source).database}?mode=ro", uri=True)
        b = sqlite3.connect(f"file:{make_url(target).database}?mode=ro", uri=True)
        query = (
            f"SELECT added_id, row_key, column_name, ref_key, body, created_at, "
            f"typeof(body), typeof(created_at) FROM {_quoted(table)} ORDER BY added_id"
        )
        left, right = a.execute(query), b.execute(query)
        while True:
            x, y = left.fetchmany(10_000), right.fetchmany(10_000)
            if not x and not y:
                break
            for cell_a, cell_b in zip(x, y, strict=False):
                if cell_a != cell_b:
                    differences.append(f"{target}: added_id {cell_a[0]} differs")
            if len(x) != len(y):
                differences.append(f"{target}: cell counts differ")
                break
            cells += len(x)
        a.close()
        b.close()
    return Comparison(equal=not differences, cells=cells, differences=differences[:20])
