"""Offline validation of ZooKeeper snapshot files (pure Python, streaming).

The layout (FileSnap / SerializeUtils / DataTree, jute big-endian):

    header     int magic "ZKSN", int version, long dbid
    sessions   int count, count x (long id, int timeout)
    ACL cache  int count, count x (long ref, int n, n x (int perms, string scheme, string id))
    nodes      (string path, buffer data, long acl ref, StatPersisted) ... until path "/"
    seal       long Adler32 of every byte so far, string "/"
    optional   ZxidDigest (long zxid, int version, long digest) + seal      (3.6+)
    optional   long lastProcessedZxid + seal                               (3.9+)

The file may be gzip- or snappy-compressed (zookeeper.snapshot.compression.method);
the Adler32 covers the uncompressed bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from backstop.drivers.digests import SetDigest
from backstop.drivers.errors import IntegrityError
from backstop.drivers.framing import bytes_left
from backstop.drivers.zookeeper.znodes import MAX_DATA, node_hash

MAGIC = 0x5A4B534E  # "ZKSN"
GZIP_MAGIC = b"\x1f\x8b"
SNAPPY_MAGIC = b"\x82SNAPPY\x00"
# Every length and count in the file is checked before it is used (the file may be
# crafted): strings (paths, ACL parts) and node data against these limits, counts
# against the bytes the file can still hold where that is known.
MAX_STRING = 1 << 20
MAX_BUFFER = MAX_DATA
MAX_COUNT = 50_000_000
# The ACL cache is held in memory while the nodes are read: ZooKeeper keeps one entry
# per distinct ACL list (a handful, usually), so these bounds are generous.
MAX_ACL_LISTS = 100_000
MAX_ACLS = 200_000  # ACL entries over the whole cache
MAX_ACL_TEXT = 16 << 20  # bytes of schemes and ids over the whole cache
MAX_SNAPPY_BLOCK = 64 << 20  # xerial snappy writes 32 KiB blocks
_DIGEST_SECTION = 8 + 4 + 8 + 8 + 4 + 1  # ZxidDigest + seal
_ZXID_SECTION = 8 + 8 + 4 + 1  # lastProcessedZxid + seal
_OPEN_ACL = ((31, "world", "anyone"),)


class SnapshotError(IntegrityError, ValueError):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"invalid ZooKeeper snapshot at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass
class SnapshotSummary:
    version: int
    dbid: int
    compression: str
    sessions: int
    acl_entries: int
    nodes: int  # every node in the file, system nodes included
    user_nodes: int  # outside /zookeeper and not ephemeral: what a logical backup holds
    digest: str  # of (path, data, ACL) over user_nodes, as the logical backup computes it
    max_zxid: int  # the largest czxid/mzxid/pzxid seen
    last_zxid: int | None  # lastProcessedZxid, when the server wrote it (3.9+)
    zxid_digest: dict | None = None
    bytes: int = 0


class _SnappyStream:
    """Reads xerial snappy framing (SnappyOutputStream): a header, then length-prefixed blocks."""

    def __init__(self, raw: BinaryIO) -> None:
        import cramjam

        self._raw = raw
        self._snappy = cramjam.snappy
        self._error = cramjam.DecompressionError
        header = raw.read(16)
        if len(header) < 16 or not header.startswith(SNAPPY_MAGIC):
            raise SnapshotError(0, "bad snappy stream header")
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            parts, have = [self._buf[self._pos :]], len(self._buf) - self._pos
            while have < n and (block := self._block()):
                parts.append(block)
                have += len(block)
            self._buf, self._pos = b"".join(parts), 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def _block(self) -> bytes:
        """The next block decompressed; b"" at the end. Both its stored and its declared
        decompressed length are checked before anything is allocated."""
        size = self._raw.read(4)
        if len(size) < 4:
            return b""
        (length,) = struct.unpack(">i", size)
        if not 0 <= length <= MAX_SNAPPY_BLOCK:
            raise SnapshotError(-1, f"implausible snappy block length {length}")
        block = self._raw.read(length)
        if len(block) < length:
            raise SnapshotError(-1, "snappy block truncated")
        try:
            if self._snappy.decompress_raw_len(block) > MAX_SNAPPY_BLOCK:
                raise SnapshotError(-1, "a snappy block claims an implausible decompressed size")
            return bytes(self._snappy.decompress_raw(block))
        except self._error as exc:
            raise SnapshotError(-1, f"snappy block cannot be decompressed ({exc})") from None


class _Jute:
    """Big-endian jute primitives over a stream, keeping the running Adler32 and offset."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.adler = 1
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        data = self._stream.read(n) if n else b""
        if len(data) < n:
            raise SnapshotError(self.offset + len(data), f"file ends inside {what} (truncated)")
        self.adler = zlib.adler32(data, self.adler)
        self.offset += n
        return data

    def remaining(self, limit: int) -> int:
        """How many bytes follow, counting up to `limit` (the tail sections are small)."""
        rest = self._stream.read(limit)
        self._stream = _Prefixed(rest, self._stream)
        return len(rest)

    def int(self, what: str) -> int:
        return struct.unpack(">i", self.take(4, what))[0]

    def long(self, what: str) -> int:
        return struct.unpack(">q", self.take(8, what))[0]

    def count(self, what: str, entry_bytes: int, limit: int = MAX_COUNT) -> int:
        """A count of entries of at least `entry_bytes` each, checked against `limit`
        and, where known, against the bytes the file still holds."""
        at = self.offset
        value = self.int(what)
        if not 0 <= value <= limit:
            raise SnapshotError(at, f"implausible {what} {value}")
        left = bytes_left(self._stream)
        if left is not None and value * entry_bytes > left:
            raise SnapshotError(
                at, f"{what} {value} needs more bytes than the file holds ({left} left)"
            )
        return value

    def buffer(self, what: str, limit: int = MAX_BUFFER) -> bytes | None:
        at = self.offset
        length = self.int(f"length of {what}")
        if length == -1:
            return None
        if not 0 <= length <= limit:
            raise SnapshotError(at, f"implausible length {length} of {what}")
        left = bytes_left(self._stream)
        if left is not None and length > left:
            raise SnapshotError(at, f"{what} claims {length} bytes, the file holds {left} more")
        return self.take(length, what)

    def string(self, what: str) -> str | None:
        at = self.offset
        data = self.buffer(what, MAX_STRING)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError(at, f"{what} is not UTF-8") from None

    def seal(self, what: str) -> None:
        expected = self.adler
        at = self.offset
        value = self.long(f"{what} checksum") & 0xFFFFFFFFFFFFFFFF
        if value != expected:
            raise SnapshotError(
                at,
                f"{what} Adler32 checksum mismatch (file says {value:#x}, content gives "
                f"{expected:#x}): the file was altered or corrupted",
            )
        path = self.string(f"{what} seal")
        if path != "/":
            raise SnapshotError(at + 8, f"{what} is not sealed by '/' (found {path!r})")


def _open(stream: BinaryIO) -> tuple[object, str]:
    head = stream.read(8)
    rest = _Prefixed(head, stream)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=rest), "gzip"
    if head.startswith(SNAPPY_MAGIC):
        return _SnappyStream(rest), "snappy"
    return rest, "none"


class _Prefixed:
    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    @property
    def remaining(self) -> int | None:
        left = bytes_left(self._stream)
        return None if left is None else len(self._head) + left

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._stream.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            if len(out) < n:
                out += self._stream.read(n - len(out))
            return out
        return self._stream.read(n)


def validate(
    stream: BinaryIO, on_node: Callable[[str, bytes | None], None] | None = None
) -> SnapshotSummary:
    """Parse and check a whole snapshot; raise SnapshotError naming the offset and reason."""
    source, compression = _open(stream)
    try:
        return _validate(_Jute(source), compression, on_node)
    except (OSError, EOFError, zlib.error) as exc:  # gzip/snappy decoding failures
        raise SnapshotError(-1, f"{compression} decompression failed: {exc}") from None


def _acl_cache(j: _Jute) -> dict[int, tuple]:
    """The ACL lists nodes refer to, within the bounds on what it may hold in memory."""
    acl_cache: dict[int, tuple] = {}
    entries = text = 0
    for _ in range(j.count("ACL cache size", 12, MAX_ACL_LISTS)):
        ref = j.long("ACL reference")
        acls = []
        for _ in range(j.count("ACL list length", 12, MAX_ACLS - entries)):
            at = j.offset
            perms = j.int("ACL perms")
            scheme = j.string("ACL scheme") or ""
            ident = j.string("ACL id") or ""
            text += len(scheme) + len(ident)
            if text > MAX_ACL_TEXT:
                raise SnapshotError(at, f"the ACL cache holds more than {MAX_ACL_TEXT} bytes")
            acls.append((perms, scheme, ident))
        entries += len(acls)
        acl_cache[ref] = tuple(acls)
    return acl_cache


def _validate(j: _Jute, compression: str, on_node) -> SnapshotSummary:
    magic = j.int("magic")
    if magic != MAGIC:
        raise SnapshotError(0, f"bad magic {magic:#x}, expected ZKSN ({MAGIC:#x})")
    version = j.int("version")
    if version != 2:
        raise SnapshotError(4, f"unsupported snapshot version {version}")
    dbid = j.long("dbid")

    sessions = j.count("session count", 12)
    for _ in range(sessions):
        j.long("session id")
        j.int("session timeout")

    acl_cache = _acl_cache(j)

    digest = SetDigest()
    nodes = 0
    max_zxid = 0
    seen: set[str] = set()
    while True:
        at = j.offset
        path = j.string("node path")
        if path == "/":
            break
        if path is None:
            raise SnapshotError(at, "null node path")
        if nodes == 0 and path != "":
            raise SnapshotError(at, f"the first node must be the root, found {path!r}")
        if nodes and (not path.startswith("/") or "\x00" in path or path.endswith("/")):
            raise SnapshotError(at, f"malformed node path {path!r}")
        if path in seen:
            raise SnapshotError(at, f"node {path!r} appears twice")
        if nodes and (path.rsplit("/", 1)[0] or "") not in seen:
            raise SnapshotError(at, f"node {path!r} comes before its parent")
        data = j.buffer(f"data of {path or '/'}")
        ref = j.long(f"ACL reference of {path or '/'}")
        if ref != -1 and ref not in acl_cache:
            raise SnapshotError(at, f"node {path!r} refers to unknown ACL {ref}")
        stat = struct.unpack(">qqqqiiiqq", j.take(60, f"stat of {path or '/'}"))
        seen.add(path)
        nodes += 1
        max_zxid = max(max_zxid, stat[0], stat[1], stat[8])
        shown = path or "/"
        if on_node:
            on_node(shown, data)
        if not (shown == "/zookeeper" or shown.startswith("/zookeeper/")) and not stat[7]:
            # Reference -1 is ZooKeeper's shorthand for world:anyone with every permission.
            acls = _OPEN_ACL if ref == -1 else acl_cache[ref]
            digest.add(node_hash(shown, data, acls))
    if nodes == 0:
        raise SnapshotError(j.offset, "no nodes (not even the root)")
    j.seal("snapshot")

    zxid_digest = None
    last_zxid = None
    remaining = j.remaining(_DIGEST_SECTION + _ZXID_SECTION + 1)
    valid = (0, _ZXID_SECTION, _DIGEST_SECTION, _DIGEST_SECTION + _ZXID_SECTION)
    if remaining not in valid:
        if remaining < valid[-1]:
            raise SnapshotError(
                j.offset + remaining,
                f"file ends inside its trailing digest/zxid sections ({remaining} bytes: truncated)",
            )
        raise SnapshotError(j.offset, "unexpected bytes after the sealed snapshot")
    if remaining in (_DIGEST_SECTION, _DIGEST_SECTION + _ZXID_SECTION):
        zxid_digest = {
            "zxid": j.long("digest zxid"),
            "version": j.int("digest version"),
            "value": j.long("digest value"),
        }
        j.seal("digest section")
        remaining -= _DIGEST_SECTION
    if remaining == _ZXID_SECTION:
        last_zxid = j.long("last processed zxid")
        j.seal("last-zxid section")
        remaining = 0
    return SnapshotSummary(
        version=version,
        dbid=dbid,
        compression=compression,
        sessions=sessions,
        acl_entries=len(acl_cache),
        nodes=nodes,
        user_nodes=digest.count,
        digest=digest.hex,
        max_zxid=max_zxid,
        last_zxid=last_zxid,
        zxid_digest=zxid_digest,
        bytes=j.offset,
    )
