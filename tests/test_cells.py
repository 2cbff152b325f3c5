"""The Schemaless cell serialization."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from backstop.drivers.schemaless.cells import (
    CellFormatError,
    from_micros,
    pack_cells,
    read_cells,
    to_micros,
)


def cells():
    return [
        (
            1,
            "0b8a0c5e-7f41-4b7e-9d57-2f1c3e0a9b11",
            "profile",
            1,
            b'{"a":1}',
            "2026-01-01 00:00:00.000001",
        ),
        (
            2,
            "0b8a0c5e-7f41-4b7e-9d57-2f1c3e0a9b11",
            "colonne-\u00e9\u4e2d",
            0,
            b"",
            datetime(1999, 12, 31, 23, 59, 59, 999999),
        ),
        (
            7,
            "c3d1e4f5-0000-4000-8000-000000000000",
            "blob",
            2**40,
            bytes(range(256)) * 9000,
            datetime(2030, 5, 5, 5, 5, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
    ]


def test_round_trip_keeps_every_field_including_large_bodies():
    data, count = pack_cells(cells())
    assert count == 3
    parsed = [c for batch in read_cells(io.BytesIO(data), batch_size=2) for c in batch]
    assert [c[0] for c in parsed] == [1, 2, 7]
    assert parsed[1][2] == "colonne-\u00e9\u4e2d"
    assert parsed[1][4] == b""
    assert parsed[2][4] == bytes(range(256)) * 9000  # spans several 1 MiB read blocks
    assert from_micros(parsed[0][5]) == datetime(2026, 1, 1, 0, 0, 0, 1)
    # An aware timestamp is stored as UTC.
    assert from_micros(parsed[2][5]) == datetime(2030, 5, 5, 3, 5, 5)


def test_micros_round_trip():
    for value in (datetime(1970, 1, 1), datetime(1900, 3, 1, 1, 2, 3, 4), datetime.now(UTC)):
        naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        assert from_micros(to_micros(value)) == naive


def test_truncated_stream_is_rejected_with_its_offset():
    data, _ = pack_cells(cells())
    with pytest.raises(CellFormatError, match="ends inside a cell"):
        for _ in read_cells(io.BytesIO(data[:-10]), batch_size=100):
            pass
