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


def check_distinct(identities: Sequence[str], urls: Sequence[str], role: str) -> None:
    """Refuse two URLs of one list that name the same place (one would overwrite the
    other's restore, or a shard would be read twice)."""
    for i, first in enumerate(identities):
        for j in range(i + 1, len(identities)):
            if same_place(first, identities[j]):
                raise BadInputError(
                    f"--{role} {redact_url(urls[i])} and --{role} {redact_url(urls[j])} are the "
                    f"same place ({identities[j]}); each --{role} must be a different one"
                )


def check_apart(
    written: Sequence[str], written_urls: Sequence[str], read: Sequence[str],
    read_urls: Sequence[str], written_role: str, read_role: str,
) -> None:  # fmt: skip
    """Refuse writing into a place that is (or holds, or lies inside) one being read."""
    for target, target_url in zip(written, written_urls, strict=True):
        for source, source_url in zip(read, read_urls, strict=True):
            if same_place(target, source):
                raise BadInputError(
                    f"--{written_role} {redact_url(target_url)} is also a --{read_role} "
                    f"({redact_url(source_url)}: the same place, {target}); it would be "
                    "overwritten, so it must be another server, database or path"
                )
