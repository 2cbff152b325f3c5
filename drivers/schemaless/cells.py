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

from backstop.drivers.errors import IntegrityError, PermanentError
from backstop.drivers.framing import check_length, stream_name

FORMAT = "schemaless-cells/1"
CELL_COLUMNS = ("added_id", "row_key", "column_name", "ref_key", "body", "created_at")
COLUMN_LIST = ", ".join(CELL_COLUMNS)  # for SQL statements

_HEADER = struct.Struct("<qqqBHI")
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
_READ_BLOCK = 1 << 20
# The largest body a cell may have: far above what Schemaless cells hold (JSON of a few
# KB) and MariaDB's default max_allowed_packet (16 MiB); it bounds the memory one cell
# takes when read back. A backup refuses a larger body rather than write a file no
# restore would read.
MAX_BODY = 64 << 20
MAX_CELL = _HEADER.size + 0xFF + 0xFFFF + MAX_BODY  # header, longest key/name, body

Cell = tuple[int, str, str, int, bytes, int]  # created_at in microseconds


class CellFormatError(IntegrityError, ValueError):
    """The bytes are not a well-formed cell stream (truncated, altered or crafted)."""


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
    data = b"".join(parts)
    if len(data) > MAX_BODY:  # only then can a body be too large: no per-cell test
        _check_bodies(parts[3::4], parts[1::4])
    return data, len(parts) // 4


def _check_bodies(bodies: list[bytes], row_keys: list[bytes]) -> None:
    for body, row_key in zip(bodies, row_keys, strict=True):
        if len(body) > MAX_BODY:
            raise PermanentError(
                f"cell of row {row_key.decode()} has a {len(body):,}-byte body; backstop's "
                f"cell format holds bodies of at most {MAX_BODY:,} bytes"
            )


def read_cells(stream: BinaryIO, batch_size: int) -> Iterator[list[Cell]]:
    """Parse a cell stream into batches of cells, reading it in large blocks.

    Cells are sliced out of the buffer at a moving position. A cell that does not fit
    in what is buffered has its claimed size checked (against MAX_CELL and the bytes
    the file still holds) before it is read, in one call: no buffer grows block by
    block, whatever a header claims.
    """
    unpack_from = _HEADER.unpack_from
    header_size = _HEADER.size
    buffer = b""
    pos = 0  # of the next cell within buffer
    offset = 0  # of `buffer[0]` in the stream, for error messages
    batch: list[Cell] = []
    eof = False
    while True:
        end = len(buffer)
        need = 1  # bytes to read before the next cell can be parsed
        try:
            while end - pos >= header_size:
                added_id, ref_key, micros, rk_len, col_len, body_len = unpack_from(buffer, pos)
                start = pos + header_size
                stop = start + rk_len + col_len + body_len
                if stop > end:
                    need = stop - end
                    what = f"cell (with a {body_len:,}-byte body)"
                    check_length(stream, CellFormatError, what, stop - pos, MAX_CELL,
                                 offset + pos, end - pos)  # fmt: skip
                    break
                rk = buffer[start : start + rk_len].decode("ascii")
                col = buffer[start + rk_len : start + rk_len + col_len].decode("utf-8")
                body = buffer[start + rk_len + col_len : stop]
                batch.append((added_id, rk, col, ref_key, body, micros))
                pos = stop
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        except UnicodeDecodeError:
            raise CellFormatError(
                f"{stream_name(stream)}: the row key or column name of the cell at byte "
                f"{offset + pos} is not text"
            ) from None
        if eof:
            break
        offset += pos
        buffer, eof = _read_more(stream, buffer[pos:], need)
        pos = 0
    if pos < len(buffer):
        raise CellFormatError(
            f"{stream_name(stream)}: cell stream ends inside a cell at byte {offset + pos} "
            f"({len(buffer) - pos} bytes left over)"
        )
    if batch:
        yield batch


def _read_more(stream: BinaryIO, rest: bytes, need: int) -> tuple[bytes, bool]:
    """`rest` followed by at least `need` more bytes of the stream (fewer at its end),
    joined once; and whether the stream ended."""
    parts = [rest]
    got = 0
    while got < need:
        block = stream.read(max(_READ_BLOCK, need - got))
        if not block:
            return b"".join(parts), True
        parts.append(block)
        got += len(block)
    return b"".join(parts), False
