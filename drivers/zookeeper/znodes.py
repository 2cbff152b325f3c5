"""The serialization of znodes in a logical backup ("zookeeper-znodes/1"), and digests.

A record is a kind byte (1: the node's state, 2: the node was deleted), the path, and
for state records the data, the ACLs and the stat:

    uint8 kind | uint32 len(path) | path (UTF-8)
    int32 len(data) (-1: null) | data | uint16 n_acl | n_acl x (int32 perms |
    uint16 len(scheme) | scheme | uint16 len(id) | id) | stat: int64 czxid, mzxid,
    ctime, mtime | int32 version, cversion, aversion | int64 ephemeralOwner, pzxid

Records are applied in order: a later record for the same path replaces an earlier
one. Paths are relative to the backed-up root ("/" is the root itself).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

from backstop.drivers.digests import SetDigest, algorithm_problem

FORMAT = "zookeeper-znodes/1"
NODE, DELETED = 1, 2

_HEAD = struct.Struct("<BI")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_ACL = struct.Struct("<iH")
_STAT = struct.Struct("<qqqqiiiqq")
_READ_BLOCK = 1 << 20

Acl = tuple[int, str, str]  # perms, scheme, id


class ZnodeFormatError(ValueError):
    """A znode stream that is truncated, altered, or holds an unsafe path."""


@dataclass(frozen=True)
class Znode:
    kind: int
    path: str
    data: bytes | None = None
    acls: tuple[Acl, ...] = ()
    stat: tuple[int, ...] = (0,) * 9  # czxid mzxid ctime mtime version cversion aversion eph pzxid

    @property
    def mzxid(self) -> int:
        return self.stat[1]

    @property
    def pzxid(self) -> int:
        return self.stat[8]

    @property
    def aversion(self) -> int:
        return self.stat[6]

    @property
    def ephemeral_owner(self) -> int:
        return self.stat[7]


def check_path(path: str) -> None:
    """Refuse paths that could escape the restore root or that ZooKeeper would reject."""
    if not path.startswith("/") or "\x00" in path:
        raise ZnodeFormatError(f"unsafe znode path {path!r}")
    if path != "/" and (
        path.endswith("/") or any(p in ("", ".", "..") for p in path[1:].split("/"))
    ):
        raise ZnodeFormatError(f"unsafe znode path {path!r}")


def pack(node: Znode) -> bytes:
    return b"".join(pack_parts(node))


def pack_parts(node: Znode) -> list[bytes]:
    """The record as a list of byte strings, so a writer can join many records at once."""
    path = node.path.encode("utf-8")
    parts = [_HEAD.pack(node.kind, len(path)), path]
    if node.kind == NODE:
        data = node.data
        parts.append(_I32.pack(-1 if data is None else len(data)))
        if data:
            parts.append(data)
        parts.append(_U16.pack(len(node.acls)))
        for perms, scheme, ident in node.acls:
            s, i = scheme.encode(), ident.encode()
            parts += [_ACL.pack(perms, len(s)), s, _U16.pack(len(i)), i]
        parts.append(_STAT.pack(*node.stat))
    return parts


class _Cursor:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.offset = 0  # of the record being parsed, for messages
        self._eof = False

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._pos < n and not self._eof:
            block = self._stream.read(_READ_BLOCK)
            if not block:
                self._eof = True
                break
            self._buf = self._buf[self._pos :] + block
            self.offset += self._pos
            self._pos = 0
        return len(self._buf) - self._pos >= n

    def take(self, n: int) -> bytes:
        if not self._fill(n):
            raise ZnodeFormatError(f"znode stream truncated near byte {self.offset + self._pos}")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def at_end(self) -> bool:
        return not self._fill(1)


def read(stream: BinaryIO) -> Iterator[Znode]:
    cur = _Cursor(stream)
    while not cur.at_end():
        kind, path_len = _HEAD.unpack(cur.take(_HEAD.size))
        if kind not in (NODE, DELETED):
            raise ZnodeFormatError(f"unknown record kind {kind} near byte {cur.offset}")
        try:
            path = cur.take(path_len).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ZnodeFormatError(f"znode path is not UTF-8 near byte {cur.offset}") from exc
        check_path(path)
        if kind == DELETED:
            yield Znode(DELETED, path)
            continue
        (data_len,) = _I32.unpack(cur.take(4))
        data = None if data_len < 0 else cur.take(data_len)
        (n_acl,) = _U16.unpack(cur.take(2))
        acls = []
        for _ in range(n_acl):
            perms, s_len = _ACL.unpack(cur.take(_ACL.size))
            scheme = cur.take(s_len).decode()
            (i_len,) = _U16.unpack(cur.take(2))
            acls.append((perms, scheme, cur.take(i_len).decode()))
        stat = _STAT.unpack(cur.take(_STAT.size))
        yield Znode(NODE, path, data, tuple(acls), stat)


def node_hash(path: str, data: bytes | None, acls: tuple[Acl, ...] | list[Acl]) -> int:
    """A 128-bit hash of what a restore must reproduce: path, data and ACLs (XXH3-128,
    see backstop.drivers.digests)."""
    acl_text = ";".join(f"{p}:{s}:{i}" for p, s, i in sorted(acls))
    h = xxhash.xxh3_128(path.encode("utf-8") + b"\x00")
    if data:
        h.update(data)  # fed separately: no copy of up to 1 MB per node
    h.update(b"\x00" + acl_text.encode())
    return h.intdigest()


def digest_problems(digest: SetDigest, meta: dict, what: str) -> list[str]:
    """How a tree's digest differs from the one a backup recorded (none: equal)."""
    if digest.count != meta["nodes"]:
        return [f"{digest.count} nodes on the target, {meta['nodes']} in the {what}"]
    if problem := algorithm_problem(meta, what):
        return [problem]
    if digest.hex != meta["digest"]:
        return [f"the digest of (path, data, ACL) differs from the {what}'s"]
    return []
