"""Collection files: a plain concatenation of BSON documents, as mongodump writes them.

Documents are carried as raw bytes end to end; nothing is decoded and re-encoded.
A collection's digest is a SetDigest of its raw documents (backstop.drivers.digests),
so a restored collection compares whatever order the server returns it in.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import xxhash

FORMAT = "bson-concat/1"
METADATA_FORMAT = "mongodump-metadata/1"
_LEN = struct.Struct("<i")
_READ_BLOCK = 1 << 20
MAX_DOCUMENT = 48 * 1024 * 1024  # BSON limit is 16 MiB; leave room for servers that differ


class BsonFileError(ValueError):
    """The stream is not a sequence of whole BSON documents (truncated or altered)."""


def document_hash(raw: bytes) -> int:
    return xxhash.xxh3_128_intdigest(raw)


def read_documents(stream: BinaryIO) -> Iterator[bytes]:
    """Each raw BSON document of a concatenation, checked for framing.

    Documents are sliced out of a block at a moving position; the block is only
    compacted when it runs short (slicing the rest off per document copied megabytes
    per kilobyte document).
    """
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
            raise BsonFileError(f"BSON stream ends inside a length prefix at byte {offset}")
        (length,) = _LEN.unpack_from(buffer, pos)
        if not 5 <= length <= MAX_DOCUMENT:
            raise BsonFileError(f"implausible BSON document length {length} at byte {offset}")
        if available < length:
            refill(length)
            available = len(buffer)
            if available < length:
                raise BsonFileError(
                    f"BSON stream truncated: a {length}-byte document at byte {offset} has "
                    f"only {available} bytes"
                )
        end = pos + length
        if buffer[end - 1] != 0:
            raise BsonFileError(f"BSON document at byte {offset} does not end with a NUL")
        yield buffer[pos:end]
        pos = end
        offset += length


# Value sizes of BSON element types, after the type byte and the name: fixed sizes, or
# how to read the variable ones.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
          0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}  # fmt: skip
_LENGTH_PREFIXED = {0x02: 4, 0x0D: 4, 0x0E: 4}  # string-like: int32 length + bytes
_SELF_SIZED = {0x03, 0x04, 0x0F}  # documents, arrays, code with scope: int32 total


def id_key(raw: bytes) -> bytes | None:
    """The `_id` element's type byte and value bytes, without decoding the document
    (servers put `_id` first, so this reads a few bytes); None when there is none."""
    pos, end = 4, len(raw) - 1
    while pos < end:
        kind = raw[pos]
        name_end = raw.index(b"\x00", pos + 1)
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
            stop = raw.index(b"\x00", raw.index(b"\x00", start) + 1) + 1
        elif kind == 0x0C:  # DBPointer: string + ObjectId
            stop = start + 4 + _LEN.unpack_from(raw, start)[0] + 12
        else:
            raise BsonFileError(f"unknown BSON element type 0x{kind:02x}")
        if raw[pos + 1 : name_end] == b"_id":
            return raw[pos : pos + 1] + raw[start:stop]
        pos = stop
    return None
