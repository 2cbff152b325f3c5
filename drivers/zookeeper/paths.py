"""ZooKeeper URLs and the subtree patterns of --include / --exclude."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import redact_url


@dataclass(frozen=True)
class ZkUrl:
    hosts: str  # host:port[,host:port...]
    chroot: str  # "" or "/path"
    username: str | None = None
    password: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # e.g. admin_port

    @property
    def connect_string(self) -> str:
        return self.hosts + self.chroot


def parse_zk_url(url: str) -> ZkUrl:
    """zk://[user:password@]host:port[,host:port...][/chroot]"""
    if not url.startswith("zk://"):
        raise BadInputError(f"{redact_url(url)!r} is not a zk:// URL")
    rest, _, query = url[len("zk://") :].partition("?")
    params = dict(parse_qsl(query))
    unknown = set(params) - {"admin_port", "admin_url"}
    if unknown:
        raise BadInputError(
            f"{redact_url(url)!r}: unknown parameter(s) {', '.join(sorted(unknown))}"
        )
    userinfo, _, rest = rest.rpartition("@")
    hosts, slash, chroot = rest.partition("/")
    chroot = (slash + chroot).rstrip("/") if slash else ""
    if not hosts:
        raise BadInputError(f"{redact_url(url)!r} names no host")
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        # isdigit() alone accepts digits int() refuses (superscripts): ASCII only.
        valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
        if not colon or not name or not valid_port:
            raise BadInputError(f"{redact_url(url)!r}: {host!r} is not host:port")
    if chroot:
        check_pattern_free(chroot, url)
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret)
    return ZkUrl(hosts=hosts, chroot=chroot, username=username, password=password, params=params)


def check_pattern_free(chroot: str, url: str) -> None:
    segments = chroot[1:].split("/")
    if any(s in ("", ".", "..") for s in segments) or "\x00" in chroot:
        raise BadInputError(f"{redact_url(url)!r}: {chroot!r} is not a valid chroot")


_FORBIDDEN = re.compile(r"[?\[\]{}()|+^$\\]")


class SubtreePattern:
    """An absolute path whose segments may be `*` (within one segment) or `**` (any depth).

    A pattern selects the subtrees rooted at the paths it matches.
    """

    def __init__(self, text: str) -> None:
        if not text.startswith("/") or text != text.strip() or "//" in text:
            raise BadInputError(
                f"subtree pattern {text!r}: must be an absolute path like /app/config or /svc/*/leader"
            )
        if _FORBIDDEN.search(text):
            raise BadInputError(
                f"subtree pattern {text!r}: unknown syntax; only * (one segment) and ** "
                "(any depth) are wildcards"
            )
        segments = [s for s in text.split("/")[1:] if s]
        for segment in segments:
            if "**" in segment and segment != "**":
                raise BadInputError(f"subtree pattern {text!r}: ** must be a whole segment")
            if segment in (".", ".."):
                raise BadInputError(f"subtree pattern {text!r}: . and .. are not allowed")
        self.text = text
        parts = [self._segment(s) for s in segments]
        self._subtree = re.compile("^" + "".join(parts) + "(?:/.*)?$")
        # Prefixes of the pattern: a path matching one may have matching descendants.
        self._prefixes = [re.compile("^" + "".join(parts[:i]) + "$") for i in range(1, len(parts))]

    @staticmethod
    def _segment(segment: str) -> str:
        if segment == "**":
            return "(?:/[^/]+)*"
        return "/" + re.escape(segment).replace(r"\*", "[^/]*")

    def selects(self, path: str) -> bool:
        return path != "/" and bool(self._subtree.match(path))

    def may_select_below(self, path: str) -> bool:
        if path == "/":
            return True
        return any(p.match(path) for p in self._prefixes)


class Selection:
    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None):
        self.include = [SubtreePattern(p) for p in include or []]
        self.exclude = [SubtreePattern(p) for p in exclude or []]

    def wants(self, path: str) -> bool:
        """Is this node part of the selection?"""
        if any(p.selects(path) for p in self.exclude):
            return False
        return not self.include or path == "/" or any(p.selects(path) for p in self.include)

    def descends(self, path: str) -> bool:
        """Could this node or its descendants be part of the selection?"""
        if any(p.selects(path) for p in self.exclude):
            return False
        return not self.include or any(
            p.selects(path) or p.may_select_below(path) for p in self.include
        )
