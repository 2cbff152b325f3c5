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

This module holds what every technology shares (the contract the cycles drive); each
technology is a module of its own (schemaless.py, zookeeper.py, docstore.py) and the
writers are in writers.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load.writers import Writer

COLUMNS = ("profile", "address", "preferences", "orders", "audit")
MAX_PROBLEMS = 10


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
