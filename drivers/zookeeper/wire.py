"""A lean ZooKeeper client for pipelined reads, speaking the wire protocol directly.

kazoo costs about 200 µs per request in Python (a connection thread, a lock and an
async result per request); a tree walk needs three requests per node. This session
writes requests in batches and parses replies in order (ZooKeeper answers a session's
requests in the order it sent them), which makes a walk an order of magnitude faster.
It only reads: writes go through kazoo.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from backstop.drivers.errors import PermanentError

OP_EXISTS, OP_GET_DATA, OP_GET_ACL, OP_GET_CHILDREN, OP_SYNC, OP_PING = 3, 4, 6, 8, 9, 11
OP_MULTI_READ = 22  # ZooKeeper 3.6+
OP_AUTH, OP_CLOSE = 100, -11
CHUNK = 128  # nodes per multiRead
XID_AUTH, XID_PING = -4, -2
NO_NODE, NO_AUTH, AUTH_FAILED = -101, -102, -115

_REPLY = struct.Struct(">iqi")
_STAT = struct.Struct(">qqqqiiiqiiq")  # czxid mzxid ctime mtime version cversion aversion
#                                         ephemeralOwner dataLength numChildren pzxid
# The same bytes read straight into the persisted order (czxid, mzxid, ctime, mtime,
# version, cversion, aversion, ephemeralOwner, pzxid: dataLength and numChildren skipped).
_PERSISTED = struct.Struct(">qqqqiiiq8xq")
_I32 = struct.Struct(">i")
_HEAD = struct.Struct(">iii")
_MULTI_HEADER = struct.Struct(">i?i")  # type, done, err

Stat = tuple[int, int, int, int, int, int, int, int, int]  # persisted order: see znodes


_ACL_CACHE_MAX = 4096  # distinct ACL lists remembered per session (most trees have a few)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _I32.pack(len(data)) + data


class ZkReadError(Exception):
    def __init__(self, code: int, path: str) -> None:
        super().__init__(f"ZooKeeper error {code} at {path}")
        self.code, self.path = code, path


class ReadSession:
    def __init__(
        self,
        hosts: str,
        chroot: str = "",
        auth: Iterable[tuple[str, str]] = (),
        timeout_s: float = 15.0,
        window: int = 512,
    ) -> None:
        self._hosts = [h.rsplit(":", 1) for h in hosts.split(",")]
        self._chroot = chroot
        self._auth = list(auth)
        self._timeout = timeout_s
        self.window = window
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        # A tree's nodes share a handful of ACL lists: each distinct reply body is parsed
        # once, and the nodes share one tuple (less work, less memory, and callers can
        # remember per-ACL work by it).
        self._acls: dict[bytes, tuple] = {}
        self._xid = 0
        self.last_zxid = 0
        self.multi_read = True  # switched off for servers older than 3.6

    # -- connection ---------------------------------------------------------------
    def __enter__(self) -> ReadSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        last: Exception | None = None
        for host, port in self._hosts:
            try:
                self._sock = socket.create_connection((host, int(port)), timeout=self._timeout)
                break
            except OSError as exc:
                last = exc
        if self._sock is None:
            raise ConnectionError(f"no ZooKeeper server reachable ({last})")
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout_ms = int(self._timeout * 2000)
        body = struct.pack(">iqiq", 0, 0, timeout_ms, 0) + _I32.pack(16) + bytes(16) + b"\x00"
        self._sock.sendall(_I32.pack(len(body)) + body)
        self._frame()  # ConnectResponse: protocol, timeout, session id, password
        for scheme, credential in self._auth:
            payload = _I32.pack(0) + _string(scheme) + _I32.pack(len(credential.encode()))
            payload += credential.encode()
            self._send([(XID_AUTH, OP_AUTH, payload)])
            _xid, _, err, _ = self._reply()
            if err:
                raise PermanentError("ZooKeeper authentication failed (check the credentials)")

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._send([(self._next_xid(), OP_CLOSE, b"")])
        self._sock.close()
        self._sock = None

    # -- framing ------------------------------------------------------------------
    def _next_xid(self) -> int:
        self._xid += 1
        return self._xid

    def _send(self, requests: list[tuple[int, int, bytes]]) -> None:
        out = bytearray()
        for xid, op, payload in requests:
            out += _HEAD.pack(8 + len(payload), xid, op)
            out += payload
        self._sock.sendall(out)

    def _frame(self) -> memoryview:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (length,) = _I32.unpack_from(buf, 0)
                end = 4 + length
                if len(buf) >= end:
                    with memoryview(buf) as view:
                        frame = view[4:end].tobytes()  # one copy (a slice would be two)
                    del buf[:end]  # cheap: CPython moves a bytearray's start
                    return memoryview(frame)
            self._fill()

    def _fill(self) -> None:
        """Append what the server sent next to the buffer (waiting for it)."""
        try:
            chunk = self._sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("ZooKeeper did not answer in time") from None
        if not chunk:
            raise ConnectionError("ZooKeeper closed the connection")
        self._buf += chunk

    def _reply(self) -> tuple[int, int, int, memoryview]:
        while True:
            frame = self._frame()
            xid, zxid, err = _REPLY.unpack_from(frame, 0)
            if xid == XID_PING or xid == -1:  # a ping answer or a (never requested) watch
                continue
            if zxid > 0:
                self.last_zxid = zxid
            return xid, zxid, err, frame[_REPLY.size :]

    def _path(self, path: str) -> str:
        if not self._chroot:
            return path
        return self._chroot if path == "/" else self._chroot + path

    # -- operations ---------------------------------------------------------------
    def current_zxid(self) -> int:
        """The server's last processed zxid, after a sync."""
        path = _string(self._path("/"))
        self._send(
            [(self._next_xid(), OP_SYNC, path), (self._next_xid(), OP_EXISTS, path + b"\x00")]
        )
        self._reply()
        self._reply()
        return self.last_zxid

    def fetch(
        self, roots: Iterable[str], *, descend: Callable[[str], bool] | None = None
    ) -> Iterator[tuple[str, bytes | None, Stat, tuple]]:
        """(path, data, stat, acls) for each root, and, with `descend`, for every
        descendant it accepts (breadth-first, parents first). Gone nodes are skipped.

        Nodes go in chunks: one multiRead (getData, and getChildren when descending)
        for the chunk, then one getACL per node (ACLs cannot be multi-read). Chunks
        totalling up to `window` nodes are in flight; replies come in request order.
        """
        queue: deque[str] = deque(roots)
        chunks: deque[list[str]] = deque()
        in_flight = 0
        while queue or chunks:
            while queue and in_flight < self.window:
                chunk = [queue.popleft() for _ in range(min(CHUNK, len(queue)))]
                self._send(self._chunk_requests(chunk, bool(descend)))
                chunks.append(chunk)
                in_flight += len(chunk)
            chunk = chunks.popleft()
            in_flight -= len(chunk)
            for path, data, stat, children, acls in self._chunk_replies(chunk, bool(descend)):
                if descend:
                    prefix = "/" if path == "/" else path + "/"
                    queue.extend(c for c in map(prefix.__add__, sorted(children)) if descend(c))
                yield path, data, stat, acls

    def fetch_batch(self, paths: list[str]) -> list[tuple[str, bytes | None, Stat, list, tuple]]:
        """(path, data, stat, children, acls) for each present path, pipelined by chunk."""
        out: list = []
        chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
        sent = 0
        for index, chunk in enumerate(chunks):
            while sent < len(chunks) and sent - index < max(1, self.window // CHUNK):
                self._send(self._chunk_requests(chunks[sent], True))
                sent += 1
            out.extend(self._chunk_replies(chunk, True))
        return out

    def _chunk_requests(self, chunk: list[str], children: bool) -> list[tuple[int, int, bytes]]:
        wires = [_string(self._path(p)) for p in chunk]
        if self.multi_read:
            body = bytearray()
            for wire in wires:
                body += _MULTI_HEADER.pack(OP_GET_DATA, 0, -1) + wire + b"\x00"
                if children:
                    body += _MULTI_HEADER.pack(OP_GET_CHILDREN, 0, -1) + wire + b"\x00"
            body += _MULTI_HEADER.pack(-1, 1, -1)
            requests = [(self._next_xid(), OP_MULTI_READ, bytes(body))]
        else:
            requests = []
            for wire in wires:
                requests.append((self._next_xid(), OP_GET_DATA, wire + b"\x00"))
                if children:
                    requests.append((self._next_xid(), OP_GET_CHILDREN, wire + b"\x00"))
        requests += [(self._next_xid(), OP_GET_ACL, wire) for wire in wires]
        return requests

    def _acl_replies(self, count: int) -> list[tuple[int, tuple]]:
        """(error code, ACLs) of the next `count` getACL replies; equal reply bodies
        share one parsed tuple."""
        cache, buf, out = self._acls, self._buf, []
        pos = 0  # frames are read in place, the buffer trimmed once they are used
        try:
            while len(out) < count:
                if len(buf) - pos < 4 or len(buf) < pos + 4 + _I32.unpack_from(buf, pos)[0]:
                    del buf[:pos]
                    pos = 0
                    self._fill()
                    continue
                (length,) = _I32.unpack_from(buf, pos)
                start, end = pos + 4, pos + 4 + length
                pos = end
                xid, zxid, err = _REPLY.unpack_from(buf, start)
                if xid == XID_PING or xid == -1:
                    continue
                if zxid > 0:
                    self.last_zxid = zxid
                if err:
                    out.append((err, ()))
                    continue
                # The reply is the ACL list, then the node's stat: the list is the key.
                body = bytes(buf[start + _REPLY.size : end - _STAT.size])
                acls = cache.get(body)
                if acls is None:
                    acls = _parse(OP_GET_ACL, memoryview(body))
                    if len(cache) < _ACL_CACHE_MAX:
                        cache[body] = acls
                out.append((0, acls))
        finally:
            del buf[:pos]
        return out

    def _chunk_replies(self, chunk: list[str], children: bool):
        per_node: list[list] = []  # [result or error code, ...] in op order per node
        ops = (OP_GET_DATA, OP_GET_CHILDREN) if children else (OP_GET_DATA,)
        if self.multi_read:
            _, _, err, body = self._reply()
            if err:
                raise ZkReadError(err, chunk[0])
            results = _parse_multi(body)
            width = len(ops)
            per_node = [results[i * width : (i + 1) * width] for i in range(len(chunk))]
        else:
            for _ in chunk:
                node = []
                for op in ops:
                    _, _, err, body = self._reply()
                    node.append(err if err else _parse(op, body))
                per_node.append(node)
        acl_replies = self._acl_replies(len(chunk))  # each node's getACL, in order
        for path, results, (err, acls) in zip(chunk, per_node, acl_replies, strict=True):
            first = results[0]
            if err or first.__class__ is int or (children and results[1].__class__ is int):
                codes = [r for r in [*results, err or None] if isinstance(r, int)]
                if NO_NODE in codes:
                    continue  # deleted meanwhile
                raise ZkReadError(codes[0], path)
            yield path, first[0], first[1], (results[1] if children else []), acls

    def stats(self, paths: Iterable[str]) -> Iterator[tuple[str, Stat | None]]:
        """(path, stat or None when gone), pipelined."""
        pending: deque[str] = deque()
        source = iter(paths)
        exhausted = False
        while True:
            batch = []
            while (
                not exhausted
                and len(pending) < self.window * 2
                and (len(pending) <= self.window or batch)
            ):
                try:
                    path = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(path)
                batch.append((self._next_xid(), OP_EXISTS, _string(self._path(path)) + b"\x00"))
            if batch:
                self._send(batch)
            if not pending:
                return
            path = pending.popleft()
            _, _, err, body = self._reply()
            if err == NO_NODE:
                yield path, None
            elif err:
                raise ZkReadError(err, path)
            else:
                yield path, _PERSISTED.unpack_from(body, 0)


def _parse(op: int, body: memoryview) -> Any:
    if op == OP_GET_DATA:
        (length,) = _I32.unpack_from(body, 0)
        if length < 0:
            return None, _PERSISTED.unpack_from(body, 4)
        return bytes(body[4 : 4 + length]), _PERSISTED.unpack_from(body, 4 + length)
    if op == OP_GET_CHILDREN:
        (count,) = _I32.unpack_from(body, 0)
        pos, names = 4, []
        for _ in range(count):
            (n,) = _I32.unpack_from(body, pos)
            names.append(str(body[pos + 4 : pos + 4 + n], "utf-8"))
            pos += 4 + n
        return names
    # OP_GET_ACL
    (count,) = _I32.unpack_from(body, 0)
    pos, acls = 4, []
    for _ in range(count):
        (perms,) = _I32.unpack_from(body, pos)
        (n,) = _I32.unpack_from(body, pos + 4)
        scheme = str(body[pos + 8 : pos + 8 + n], "utf-8")
        pos += 8 + n
        (m,) = _I32.unpack_from(body, pos)
        ident = str(body[pos + 4 : pos + 4 + m], "utf-8")
        pos += 4 + m
        acls.append((perms, scheme, ident))
    return tuple(acls)


def _parse_multi(body: memoryview) -> list:
    """A MultiResponse of getData/getChildren results; an error result is its int code."""
    results: list = []
    append = results.append
    header, i32, stat = _MULTI_HEADER.unpack_from, _I32.unpack_from, _PERSISTED.unpack_from
    pos = 0
    while True:
        op, done, _err = header(body, pos)
        pos += 9  # _MULTI_HEADER.size
        if done:
            return results
        if op == OP_GET_DATA:
            (length,) = i32(body, pos)
            pos += 4
            if length < 0:
                data = None
            else:
                data = body[pos : pos + length].tobytes()
                pos += length
            append((data, stat(body, pos)))
            pos += 68  # _STAT.size
        elif op == OP_GET_CHILDREN:
            (count,) = i32(body, pos)
            pos += 4
            names = []
            for _ in range(count):
                (n,) = i32(body, pos)
                names.append(str(body[pos + 4 : pos + 4 + n], "utf-8"))
                pos += 4 + n
            append(names)
        elif op == -1:  # ErrorResponse
            (code,) = i32(body, pos)
            pos += 4
            append(code)
        else:
            raise ZkReadError(op, "multiRead")
