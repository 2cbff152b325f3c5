"""Namespaces (db.collection), their patterns, and what is left out by default."""

from __future__ import annotations

import fnmatch
import re

from backstop.drivers.errors import BadInputError

SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
_PATTERN = re.compile(r"^[^\s.$/\\\"]+(\.[^\s$/\\\"]+)?$")


def check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not _PATTERN.match(pattern):
            raise BadInputError(
                f"namespace pattern {pattern!r}: expected db or db.collection, where * and ? "
                "are wildcards (e.g. shop.orders, shop.*, *.audit)"
            )
    return patterns


def selected(namespace: str, include: list[str], exclude: list[str]) -> bool:
    db = namespace.split(".", 1)[0]

    def matches(pattern: str) -> bool:
        if "." not in pattern:
            return fnmatch.fnmatchcase(db, pattern)
        return fnmatch.fnmatchcase(namespace, pattern)

    if any(matches(p) for p in exclude):
        return False
    return not include or any(matches(p) for p in include)
