"""What reaches the Schemaless driver from users and manifests, checked before use:
driver options (`--option K=V` gives text, a deployment or the Python API may give
lists and booleans) and the table names a manifest names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Dialect

from backstop.drivers.errors import BadInputError, IntegrityError

IGNORE_EXTRA_COLUMNS = "ignore_extra_columns"
RESTORE_OPTIONS = (IGNORE_EXTRA_COLUMNS,)
# Longer than any engine allows (PostgreSQL 63 bytes, MySQL 64 characters); SQLite has
# no limit, but a manifest naming a megabyte-long table is not one backstop wrote.
MAX_TABLE_NAME = 1024
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "")


def table_list(options: Mapping[str, Any]) -> list[str]:
    """The `tables` option: a comma-separated string (`--option tables=a,b`) or a list
    of names; anything else is refused rather than iterated (a string's letters)."""
    value = options.get("tables")
    if value is None:
        return []
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, list | tuple) and all(isinstance(name, str) for name in value):
        names = list(value)
    else:
        raise BadInputError(
            f"option tables={value!r}: give table names as a comma-separated string "
            "(tables=cells,events) or a list of strings"
        )
    return list(dict.fromkeys(name for name in names if name))  # in order, once each


def flag(options: Mapping[str, Any], key: str) -> bool:
    """A yes/no option: a boolean, or its text from the command line."""
    value = options.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise BadInputError(f"option {key}={value!r}: expected true or false")


def check_restore_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(RESTORE_OPTIONS))
    if unknown:
        raise BadInputError(
            f"schemaless restore does not know the option(s) {', '.join(unknown)} "
            f"(known: {', '.join(RESTORE_OPTIONS)})"
        )
    flag(options, IGNORE_EXTRA_COLUMNS)


def check_stored_table_name(name: object, unit: str) -> str:
    """A table name read from a manifest: it only ever reaches SQL quoted or bound, but
    a name no database could hold means the manifest was not written by a backup."""
    if not isinstance(name, str) or not name:
        raise IntegrityError(f"{unit}: the manifest names a table {name!r}, not a table name")
    if len(name) > MAX_TABLE_NAME or "\x00" in name:
        shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}..."
        raise IntegrityError(
            f"{unit}: the manifest names a table {shown} that no database holds "
            f"({len(name)} characters{', a NUL byte' if chr(0) in name else ''})"
        )
    return name


def fits_engine(name: str, dialect: Dialect) -> bool:
    """Whether the target engine can hold this table name as it is: PostgreSQL would
    silently truncate a longer one (its limit is in bytes), MySQL refuses it."""
    size = len(name.encode()) if dialect.name == "postgresql" else len(name)
    return size <= dialect.max_identifier_length
