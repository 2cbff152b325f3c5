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


class Renames:
    """Namespace mapping for restore, mongorestore's --nsFrom/--nsTo in one rule each.

    A rule maps a database (`shop=shop_copy`: every collection of shop) or a namespace
    pattern (`shop.*=archive.shop_*`: each `*` in the source is carried, in order, to
    the `*` of the target). The first matching rule wins; unmatched names stay.
    """

    def __init__(self, rules: list[tuple[str, str]]) -> None:
        self._rules: list[tuple[re.Pattern[str], str]] = []
        for source, target in rules:
            check_patterns([source, target])
            if "?" in source or "?" in target or source.count("*") != target.count("*"):
                raise BadInputError(
                    f"rename {source}={target}: use * (not ?) as the wildcard, as many in the "
                    "target as in the source"
                )
            if ("." in source) != ("." in target):
                raise BadInputError(
                    f"rename {source}={target}: map a database to a database (shop=shop_copy) "
                    "or a namespace to a namespace (shop.orders=archive.orders)"
                )
            if "." not in source:
                source, target = source + ".*", target + ".*"
            regex = "".join("(.*)" if c == "*" else re.escape(c) for c in source)
            self._rules.append((re.compile(f"^{regex}$"), target))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def target(self, namespace: str) -> str:
        for pattern, target in self._rules:
            match = pattern.match(namespace)
            if match:
                parts = iter(match.groups())
                return "".join(next(parts) if c == "*" else c for c in target)
        return namespace

    def check_distinct(self, namespaces: list[str]) -> None:
        """Two backed-up collections may not land in one."""
        seen: dict[str, str] = {}
        for namespace in namespaces:
            target = self.target(namespace)
            if target in seen:
                raise BadInputError(f"rename sends both {seen[target]} and {namespace} to {target}")
            if "." not in target or not target.split(".", 1)[1]:
                raise BadInputError(f"rename turns {namespace} into {target!r}: not db.collection")
            seen[target] = namespace
