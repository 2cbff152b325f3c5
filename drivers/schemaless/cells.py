"""The engine-neutral serialization of Schemaless cells ("schemaless-cells/1").

Each cell is a fixed little-endian header followed by three byte strings:

    int64 added_id | int64 ref_key | int64 created_at (microseconds since the Unix
    epoch, UTC) | uint8 len(row_key) | uint16 len(column_name) | uint32 len(body)
    | row_key (ASCII) | column_name (UTF-8) | body (opaque bytes)

Cells are written in `added_id` order, so the SHA-256 of a shard's serialized cells
is a digest of the shard itself: verify recomputes it from the restored database
with the same function and compares.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

FORMAT = "schemaless-cells/1"
CELL_COLUMNS = ("added_id", "row_key", "column_name", "ref_key", "body", "created_at")
COLUMN_LIST = ", ".join(CELL_COLUMNS)  # for SQL statements

_HEADER = struct.Struct("<qqqBHI")
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
_READ_BLOCK = 1 << 20

Cell = tuple[int, str, str, int, bytes, int]  # created_at in microseconds


class CellFormatError(ValueError):
    """The bytes are not a well-formed cell stream (truncated or altered)."""


def to_micros(value: datetime | str) -> int:
    """A TIMESTAMP value as the database driver returns it -> microseconds (UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - _EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    """Microseconds (UTC) -> a naive UTC datetime, as the cell schema stores it."""
    return _EPOCH + timedelta(microseconds=micros)


def datetime_text(micros: int) -> str:
    """Microseconds -> 'YYYY-MM-DD HH:MM:SS.ffffff', the text SQL engines read exactly."""
    return from_micros(micros).isoformat(sep=" ", timespec="microseconds")


def pack_cells(rows: Iterable[tuple]) -> tuple[bytes, int]:
    """Serialize database rows in CELL_COLUMNS order; return the bytes and the count."""
    pack = _HEADER.pack
    parts: list[bytes] = []
    extend = parts.extend
    for added_id, row_key, column_name, ref_key, body, created_at in rows:
        rk = row_key.encode("ascii")
        col = column_name.encode("utf-8")
        micros = created_at if type(created_at) is int else to_micros(created_at)
        extend((pack(added_id, ref_key, micros, len(rk), len(col), len(body)), rk, col, body))
    return b"".join(parts), len(parts) // 4


def read_cells(stream: BinaryIO, batch_size: int) -> Iterator[list[Cell]]:
    """Parse a cell stream into batches of cells, reading it in large blocks."""
    unpack_from = _HEADER.unpack_from
    header_size = _HEADER.size
    buffer = b""
    offset = 0  # of `buffer[0]` in the stream, for error messages
    batch: list[Cell] = []
    while True:
        block = stream.read(_READ_BLOCK)
        if block:
            buffer += block
        pos = 0
        end = len(buffer)
        while end - pos >= header_size:
            added_id, ref_key, micros, rk_len, col_len, body_len = unpack_from(buffer, pos)
            start = pos + header_size
            stop = start + rk_len + col_len + body_len
            if stop > end:
                break
            rk = buffer[start : start + rk_len].decode("ascii")
            col = buffer[start + rk_len : start + rk_len + col_len].decode("utf-8")
            body = buffer[start + rk_len + col_len : stop]
            batch.append((added_id, rk, col, ref_key, body, micros))
            pos = stop
            if len(batch) >= batch_size:
                yield batch
                batch = []
        offset += pos
        buffer = buffer[pos:]
        if not block:
            break
    if buffer:
        raise CellFormatError(
            f"cell stream ends inside a cell at byte {offset} ({len(buffer)} bytes left over)"
        )
    if batch:
        yield batch
