"""Collection files: a plain concatenation of BSON documents, as mongodump writes them.

Documents are carried as raw bytes end to end; nothing is decoded and re-encoded.
The digest of a collection is order-independent (the sum of each document's SHA-256,
modulo 2**128), so a restored collection can be compared whatever order the server
returns it in.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import BinaryIO

FORMAT = "bson-concat/1"
METADATA_FORMAT = "mongodump-metadata/1"
_LEN = struct.Struct("<i")
_READ_BLOCK = 1 << 20
MAX_DOCUMENT = 48 * 1024 * 1024  # BSON limit is 16 MiB; leave room for servers that differ
MODULUS = 1 << 128


class BsonFileError(ValueError):
    """The stream is not a sequence of whole BSON documents (truncated or altered)."""


def document_hash(raw: bytes) -> int:
    return int.from_bytes(hashlib.sha256(raw).digest()[:16], "big")


class Digest:
    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def add(self, raw: bytes) -> None:
        self.value = (self.value + document_hash(raw)) % MODULUS
        self.count += 1

    @property
    def hex(self) -> str:
        return f"{self.value:032x}"


def read_documents(stream: BinaryIO) -> Iterator[bytes]:
    """Each raw BSON document of a concatenation, checked for framing."""
    buffer = b""
    offset = 0
    eof = False
    while True:
        while len(buffer) < 4 and not eof:
            block = stream.read(_READ_BLOCK)
            eof = not block
            buffer += block
        if not buffer:
            return
        if len(buffer) < 4:
            raise BsonFileError(f"BSON stream ends inside a length prefix at byte {offset}")
        (length,) = _LEN.unpack_from(buffer, 0)
        if not 5 <= length <= MAX_DOCUMENT:
            raise BsonFileError(f"implausible BSON document length {length} at byte {offset}")
        while len(buffer) < length and not eof:
            block = stream.read(max(_READ_BLOCK, length - len(buffer)))
            eof = not block
            buffer += block
        if len(buffer) < length:
            raise BsonFileError(
                f"BSON stream truncated: a {length}-byte document at byte {offset} has only "
                f"{len(buffer)} bytes"
            )
        document = buffer[:length]
        if document[-1:] != b"\x00":
            raise BsonFileError(f"BSON document at byte {offset} does not end with a NUL")
        yield document
        buffer = buffer[length:]
        offset += length
