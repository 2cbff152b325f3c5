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
from backstop.drivers.errors import IntegrityError, PermanentError
from backstop.drivers.framing import RecordReader

FORMAT = "zookeeper-znodes/1"
NODE, DELETED = 1, 2

_HEAD = struct.Struct("<BI")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_ACL = struct.Struct("<iH")
_STAT = struct.Struct("<qqqqiiiqq")
_NULL_DATA = _I32.pack(-1)
# ZooKeeper itself caps a node's data, and a request's size, at jute.maxbuffer (1 MiB
# by default); these limits leave room for servers configured far above it while
# bounding the memory a stored record can claim.
MAX_DATA = 64 << 20
MAX_PATH = 1 << 20
MAX_ACL_BYTES = 1 << 20

Acl = tuple[int, str, str]  # perms, scheme, id


class ZnodeFormatError(IntegrityError, ValueError):
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
        if data and len(data) > MAX_DATA:
            raise PermanentError(
                f"znode {node.path} holds {len(data):,} bytes; backstop's znode records hold "
                f"at most {MAX_DATA:,}"
            )
        parts.append(_I32.pack(-1 if data is None else len(data)))
        if data:
            parts.append(data)
        parts.append(_U16.pack(len(node.acls)))
        for perms, scheme, ident in node.acls:
            s, i = scheme.encode(), ident.encode()
            parts += [_ACL.pack(perms, len(s)), s, _U16.pack(len(i)), i]
        parts.append(_STAT.pack(*node.stat))
    return parts


class RecordPacker:
    """`pack_parts` and `node_hash` of a node's fields, for loops over whole trees: the
    few distinct ACL lists of a tree are encoded once each, and no Znode is built."""

    def __init__(self) -> None:
        self._acls: dict[tuple, tuple[bytes, bytes]] = {}  # ACLs -> (record bytes, hash tail)

    def _encoded_acls(self, acls: tuple[Acl, ...]) -> tuple[bytes, bytes]:
        encoded = self._acls.get(acls)
        if encoded is None:
            parts = [_U16.pack(len(acls))]
            for perms, scheme, ident in acls:
                s, i = scheme.encode(), ident.encode()
                parts += [_ACL.pack(perms, len(s)), s, _U16.pack(len(i)), i]
            acl_text = ";".join(f"{p}:{s}:{i}" for p, s, i in sorted(acls))
            encoded = (b"".join(parts), b"\x00" + acl_text.encode())
            if len(self._acls) < 4096:  # a tree of many distinct ACLs: encoded per node
                self._acls[acls] = encoded
        return encoded

    def node(
        self, path: str, data: bytes | None, acls: tuple[Acl, ...], stat: tuple[int, ...]
    ) -> tuple[list[bytes], int]:
        """(the NODE record's parts, node_hash) of one node."""
        raw_path = path.encode("utf-8")
        acl_bytes, hash_tail = self._encoded_acls(acls)
        if data is None:
            h = xxhash.xxh3_128(raw_path + b"\x01")
            head = _HEAD.pack(NODE, len(raw_path)) + raw_path + _NULL_DATA
            parts = [head, acl_bytes, _STAT.pack(*stat)]
        else:
            if len(data) > MAX_DATA:
                pack_parts(Znode(NODE, path, data, acls, tuple(stat)))  # raises, naming it
            h = xxhash.xxh3_128(raw_path + b"\x00")
            h.update(data)
            head = _HEAD.pack(NODE, len(raw_path)) + raw_path + _I32.pack(len(data))
            parts = [head, data, acl_bytes, _STAT.pack(*stat)]
        h.update(hash_tail)
        return parts, h.intdigest()


def read(stream: BinaryIO) -> Iterator[Znode]:
    cur = RecordReader(stream, ZnodeFormatError)
    while not cur.at_end():
        at = cur.offset
        kind, path_len = _HEAD.unpack(cur.take(_HEAD.size, "record header", _HEAD.size))
        if kind not in (NODE, DELETED):
            raise cur.fail(f"unknown record kind {kind}", at)
        path = cur.text(path_len, "znode path", MAX_PATH)
        try:
            check_path(path)
        except ZnodeFormatError as exc:
            raise cur.fail(str(exc), at) from None
        if kind == DELETED:
            yield Znode(DELETED, path)
            continue
        (data_len,) = _I32.unpack(cur.take(4, "data length", 4))
        if data_len < -1:
            raise cur.fail(f"negative data length {data_len} of {path}")
        data = None if data_len < 0 else cur.take(data_len, f"data of {path}", MAX_DATA)
        (n_acl,) = _U16.unpack(cur.take(2, "ACL count", 2))
        acls = []
        budget = MAX_ACL_BYTES  # the ACL strings of one node, together
        for _ in range(n_acl):
            perms, s_len = _ACL.unpack(cur.take(_ACL.size, "ACL", _ACL.size))
            scheme = cur.text(s_len, f"ACL scheme of {path}", budget)
            (i_len,) = _U16.unpack(cur.take(2, "ACL id length", 2))
            ident = cur.text(i_len, f"ACL id of {path}", budget - s_len)
            budget -= s_len + i_len
            acls.append((perms, scheme, ident))
        stat = _STAT.unpack(cur.take(_STAT.size, "stat", _STAT.size))
        yield Znode(NODE, path, data, tuple(acls), stat)


def node_hash(path: str, data: bytes | None, acls: tuple[Acl, ...] | list[Acl]) -> int:
    """A 128-bit hash of what a restore must reproduce: path, data and ACLs (XXH3-128,
    see backstop.drivers.digests)."""
    acl_text = ";".join(f"{p}:{s}:{i}" for p, s, i in sorted(acls))
    # Null data and empty data differ (a restore must keep which): the separator after
    # the path says which (\x01 cannot occur in a ZooKeeper path).
    h = xxhash.xxh3_128(path.encode("utf-8") + (b"\x01" if data is None else b"\x00"))
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
