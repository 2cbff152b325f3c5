"""Collection files: a plain concatenation of BSON documents, as mongodump writes them.

Documents are carried as raw bytes end to end; nothing is decoded and re-encoded.
A collection's digest is a SetDigest of its raw documents (backstop.drivers.digests),
so a restored collection compares whatever order the server returns it in.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import bson
import xxhash
from bson import json_util

from backstop.drivers.errors import IntegrityError
from backstop.drivers.framing import check_length, stream_name

FORMAT = "bson-concat/1"
METADATA_FORMAT = "mongodump-metadata/1"
_LEN = struct.Struct("<i")
_READ_BLOCK = 1 << 20
# A user document is at most 16 MiB; the server's internal ones (oplog entries) may
# exceed it by 16 KiB (BSONObjMaxInternalSize).
MAX_DOCUMENT = (16 << 20) + (16 << 10)
MAX_METADATA = 16 << 20  # a collection's options and index specifications, as JSON


class BsonFileError(IntegrityError, ValueError):
    """The stream is not a sequence of whole BSON documents (truncated, altered or crafted)."""


def read_metadata(stream: BinaryIO) -> dict:
    """A collection's metadata.json (options and indexes), read to its end, within
    MAX_METADATA and of the shape a restore uses."""
    name = stream_name(stream)
    parts: list[bytes] = []
    size = 0
    while block := stream.read(_READ_BLOCK):
        size += len(block)
        if size > MAX_METADATA:
            raise BsonFileError(f"{name}: collection metadata larger than {MAX_METADATA:,} bytes")
        parts.append(block)
    try:
        metadata = json_util.loads(b"".join(parts))
    except (ValueError, TypeError, KeyError, RecursionError, bson.errors.BSONError) as exc:
        raise BsonFileError(f"{name}: collection metadata is not valid JSON ({exc})") from None
    options, indexes = (
        metadata.get("options", {}) if isinstance(metadata, dict) else None,
        metadata.get("indexes", []) if isinstance(metadata, dict) else None,
    )
    if not (
        isinstance(options, dict)
        and isinstance(indexes, list)
        and all(isinstance(i, dict) and isinstance(i.get("key"), dict) for i in indexes)
    ):
        raise BsonFileError(f"{name}: collection metadata does not hold options and indexes")
    return metadata


def document_hash(raw: bytes) -> int:
    return xxhash.xxh3_128_intdigest(raw)


def read_documents(stream: BinaryIO) -> Iterator[bytes]:
    """Each raw BSON document of a concatenation, checked for framing.

    Documents are sliced out of a block at a moving position; the block is only
    compacted when it runs short (slicing the rest off per document copied megabytes
    per kilobyte document).
    """
    name = stream_name(stream)
    buffer = b""
    pos = 0  # start of the next document within buffer
    offset = 0  # the same, within the stream
    eof = False

    def refill(need: int) -> None:
        nonlocal buffer, pos, eof
        parts = [buffer[pos:]]
        have = len(parts[0])
        while have < need and not eof:
            block = stream.read(max(_READ_BLOCK, need - have))
            eof = not block
            parts.append(block)
            have += len(block)
        buffer, pos = b"".join(parts), 0

    while True:
        if len(buffer) - pos < 4:
            refill(4)
        available = len(buffer) - pos
        if not available:
            return
        if available < 4:
            raise BsonFileError(f"{name}: BSON stream ends inside a length prefix at byte {offset}")
        (length,) = _LEN.unpack_from(buffer, pos)
        if length < 5:
            raise BsonFileError(
                f"{name}: implausible BSON document length {length} at byte {offset}"
            )
        if available < length:
            check_length(
                stream, BsonFileError, "BSON document", length, MAX_DOCUMENT, offset, available
            )
            refill(length)
            available = len(buffer)
            if available < length:
                raise BsonFileError(
                    f"{name}: BSON stream truncated: a {length}-byte document at byte {offset} "
                    f"has only {available} bytes"
                )
        elif length > MAX_DOCUMENT:
            check_length(stream, BsonFileError, "BSON document", length, MAX_DOCUMENT, offset)
        end = pos + length
        if buffer[end - 1] != 0:
            raise BsonFileError(f"{name}: BSON document at byte {offset} does not end with a NUL")
        yield buffer[pos:end]
        pos = end
        offset += length


# Value sizes of BSON element types, after the type byte and the name: fixed sizes, or
# how to read the variable ones.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
          0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}  # fmt: skip
_LENGTH_PREFIXED = {0x02: 4, 0x0D: 4, 0x0E: 4}  # string-like: int32 length + bytes
_SELF_SIZED = {0x03, 0x04, 0x0F}  # documents, arrays, code with scope: int32 total


def id_key(raw: bytes | memoryview) -> bytes | None:
    """The `_id` element's type byte and value bytes, without decoding the document
    (servers put `_id` first, so this reads a few bytes); None when there is none."""
    if not isinstance(raw, bytes):
        # pymongo hands out a document that came in several network reads as a view
        # of its buffer (RawBSONDocument.raw), which has no bytes.index.
        raw = bytes(raw)
    try:
        return _id_key(raw)
    except (IndexError, struct.error):
        raise BsonFileError("malformed BSON document: an element runs past its end") from None
    except BsonFileError:
        raise
    except ValueError:  # bytes.index: a name or regex without its NUL
        raise BsonFileError("malformed BSON document: an unterminated name") from None


def _id_key(raw: bytes) -> bytes | None:
    pos, end = 4, len(raw) - 1
    while pos < end:
        kind = raw[pos]
        name_end = raw.index(b"\x00", pos + 1, end)
        start = name_end + 1
        if kind in _FIXED:
            stop = start + _FIXED[kind]
        elif kind in _LENGTH_PREFIXED:
            stop = start + 4 + _LEN.unpack_from(raw, start)[0]
        elif kind in _SELF_SIZED:
            stop = start + _LEN.unpack_from(raw, start)[0]
        elif kind == 0x05:  # binary: int32 length, subtype, bytes
            stop = start + 5 + _LEN.unpack_from(raw, start)[0]
        elif kind == 0x0B:  # regex: two C strings
            stop = raw.index(b"\x00", raw.index(b"\x00", start, end) + 1, end) + 1
        elif kind == 0x0C:  # DBPointer: string + ObjectId
            stop = start + 4 + _LEN.unpack_from(raw, start)[0] + 12
        else:
            raise BsonFileError(f"unknown BSON element type 0x{kind:02x}")
        if not start <= stop <= end:  # a negative or overlong length: never loop back
            raise BsonFileError(f"malformed BSON document: element at byte {pos} has a bad length")
        if raw[pos + 1 : name_end] == b"_id":
            return raw[pos : pos + 1] + raw[start:stop]
        pos = stop
    return None
