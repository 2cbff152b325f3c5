"""Where a URL points, whatever its spelling: the building blocks of `Driver.identity`.

Two URLs name the same place when their identities are equal, or when one place
holds the other (a ZooKeeper chroot inside another): identities are written
`<kind>://<server>[/<path>]` so that holding is a path prefix. An identity never
holds a password: it is stored in manifests and shown in messages.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import redact_url


def same_place(a: str, b: str) -> bool:
    """Is one identity the other, or inside it?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def normalized_url(url: str) -> str:
    """The default identity: scheme, host and path of the URL, lower-cased where URLs
    are case-insensitive, without user, password, query or a trailing slash."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInputError(f"{redact_url(url)!r} is not a valid URL: {exc}") from None
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def canonical_host(host: str, port: int) -> str:
    """`host:port` with the host resolved to one address, so `localhost`, `127.0.0.1`
    and a DNS alias agree. IPv4 is preferred (`localhost` resolves to ::1 too, yet
    servers in practice listen on one address); a host that does not resolve stays
    as written, lower-cased."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"{host.lower()}:{port}"
    v4 = sorted(info[4][0] for info in infos if info[0] == socket.AF_INET)
    v6 = sorted(info[4][0] for info in infos if info[0] == socket.AF_INET6)
    address = (v4 or v6 or [host.lower()])[0]
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def file_identity(kind: str, path: Path) -> str:
    """A file or folder by what it is on disk: symlinks and `.`/`..` resolved; a file
    with several hard links by device and inode, so every link names the same place.
    (A single-link file keeps its path, which stays stable across a file replaced by
    a restore.) A file that does not exist yet is its resolved would-be path."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return f"{kind}://{real}"
    if stat.st_nlink > 1 and not Path(real).is_dir():
        return f"{kind}://inode/{stat.st_dev}:{stat.st_ino}"
    return f"{kind}://{real}"


def _enclosing(identity: str) -> list[str]:
    """Every identity that holds this one (a path prefix ending at a `/`)."""
    return [identity[:k] for k, char in enumerate(identity) if char == "/"]


class _Places:
    """Identities by place, so that `same_place` against all of them is a few set
    lookups, not a comparison per pair (4,096 shards made the pairwise check 8 million
    comparisons)."""

    def __init__(self) -> None:
        self._at: dict[str, int] = {}  # identity -> its first index
        self._holding: dict[str, int] = {}  # an identity holding one added -> that one's index

    def add(self, identity: str, index: int) -> None:
        key = identity.rstrip("/")
        self._at.setdefault(key, index)
        for outer in _enclosing(key):
            self._holding.setdefault(outer, index)

    def find(self, identity: str) -> int | None:
        """The index of an identity added in the same place (same_place), or None."""
        key = identity.rstrip("/")
        for candidate in (key, *_enclosing(key)):
            if candidate in self._at:
                return self._at[candidate]
        return self._holding.get(key)


def check_distinct(identities: Sequence[str], urls: Sequence[str], role: str) -> None:
    """Refuse two URLs of one list that name the same place (one would overwrite the
    other's restore, or a shard would be read twice)."""
    places = _Places()
    for j, identity in enumerate(identities):
        i = places.find(identity)
        if i is not None:
            raise BadInputError(
                f"--{role} {redact_url(urls[i])} and --{role} {redact_url(urls[j])} are the "
                f"same place ({identity}); each --{role} must be a different one"
            )
        places.add(identity, j)


def check_apart(
    written: Sequence[str], written_urls: Sequence[str], read: Sequence[str],
    read_urls: Sequence[str], written_role: str, read_role: str,
) -> None:  # fmt: skip
    """Refuse writing into a place that is (or holds, or lies inside) one being read."""
    places = _Places()
    for j, identity in enumerate(read):
        places.add(identity, j)
    for i, identity in enumerate(written):
        j = places.find(identity)
        if j is not None:
            raise BadInputError(
                f"--{written_role} {redact_url(written_urls[i])} is also a --{read_role} "
                f"({redact_url(read_urls[j])}: the same place, {identity}); it would be "
                "overwritten, so it must be another server, database or path"
            )
