"""The manifest model and backup ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from backstop.drivers.contract import StoredFile, StoredUnit
from backstop.tasks.manifest import (
    BACKUP_ID,
    ConsistencyInfo,
    DriverInfo,
    Manifest,
    QualityResult,
    new_backup_id,
    totals_of,
)


def sample_manifest() -> Manifest:
    file = StoredFile(
        name="shard-000/cells.cells.zst",
        format="schemaless-cells/1",
        records=3,
        bytes=120,
        sha256="a" * 64,
        raw_bytes=300,
        raw_sha256="b" * 64,
        meta={"table": "cells", "watermark": 3},
    )
    unit = StoredUnit(
        name="shard-000",
        source="sqlite:///x.db",
        records=3,
        point={"watermarks": {"cells": 3}},
        files=[file],
    )
    started = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    return Manifest(
        technology="schemaless",
        backup_id=new_backup_id(started),
        backstop_version="0.1.0",
        driver=DriverInfo(name="schemaless", version="1.0.0"),
        sources=["sqlite:///x.db"],
        started_at=started,
        finished_at=started + timedelta(seconds=2.5),
        consistency=ConsistencyInfo(kind="snapshot", point={"shard-000": {"cells": 3}}),
        units=[unit],
        totals=totals_of([unit]),
        quality=QualityResult(status="passed"),
    )


def test_manifest_round_trips_through_json():
    manifest = sample_manifest()
    text = manifest.model_dump_json()
    again = Manifest.model_validate(json.loads(text))
    assert again == manifest
    assert again.duration_s == 2.5
    assert again.files[0].sha256 == "a" * 64
    assert again.totals.records == 3 and again.totals.bytes == 120 and again.totals.raw_bytes == 300
    assert json.loads(text)["format_version"] == 1


def test_backup_ids_sort_by_time_and_match_the_pattern():
    base = datetime(2026, 11, 26, 12, 5, 1, tzinfo=UTC)
    ids = [new_backup_id(base + timedelta(seconds=s)) for s in (30, 0, 3600, 1)]
    assert all(BACKUP_ID.match(i) for i in ids)
    assert ids[1].startswith("20261126T120501Z-")
    assert sorted(ids) == [ids[1], ids[3], ids[0], ids[2]]
