"""Per-range digests of a cell table, computed by the database server where it can.

A restored table is proven equal to its backup range by range: the cells whose
`added_id >> RANGE_BITS` is the same form one range, and each range has a count and an
ordered digest. PostgreSQL and MariaDB compute the target's digests in SQL (one pass
over the table on the server, nothing sent back but one row per range); Python
computes the same function of the backed-up cells. A mismatch names its ranges.

The digest of a range ("sha256-ordered-rows/1"): each cell's canonical bytes

    "<added_id>|<ref_key>|<created_at µs since 1970, UTC>|<len(row_key)>|<len(column_name)>|"
    + row_key + column_name (UTF-8; lengths in characters) + body (raw bytes)

hash to a SHA-256 digest (32 bytes); the range's digest is the SHA-256 of those
digests concatenated in added_id order. Every column of every cell enters it byte for
byte (the lengths keep the variable-length fields apart), and the counts per range
catch a cell missing or added. SHA-256 rather than MD5: both servers and Python hash
it with the CPU's SHA instructions through OpenSSL, 1.7x faster per ~1 KB cell here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from backstop.drivers.schemaless.cells import Cell, to_micros

ALGORITHM = "sha256-ordered-rows/1"
RANGE_BITS = 16  # 65,536 added_ids per range: one row per range comes back
RANGE = 1 << RANGE_BITS
# MariaDB's GROUP_CONCAT of a range's row digests: 32 bytes per cell.
_GROUP_CONCAT_LEN = 32 * RANGE + 1024

Digests = dict[int, tuple[int, str]]  # range index -> (cells, digest)


def range_bounds(index: int) -> tuple[int, int]:
    """The first and last added_id of a range."""
    return index << RANGE_BITS, ((index + 1) << RANGE_BITS) - 1


def row_digest(added_id: int, row_key: str, column_name: str, ref_key: int, body: bytes,
               micros: int) -> bytes:  # fmt: skip
    """One cell's SHA-256 over its canonical bytes (see the module's docstring)."""
    head = f"{added_id}|{ref_key}|{micros}|{len(row_key)}|{len(column_name)}|{row_key}{column_name}"
    return hashlib.sha256(head.encode("utf-8") + bytes(body)).digest()


def python_digests(cells: Iterable[Iterable[Cell]]) -> Digests:
    """The digests of batches of cells (created_at in µs, or as a database driver
    returns it), in added_id order."""
    digests: dict[int, list[bytes]] = {}
    for batch in cells:
        for added_id, row_key, column_name, ref_key, body, created in batch:
            micros = created if type(created) is int else to_micros(created)
            digests.setdefault(added_id >> RANGE_BITS, []).append(
                row_digest(added_id, row_key, column_name, ref_key, body, micros)
            )
    return {
        index: (len(rows), hashlib.sha256(b"".join(rows)).hexdigest())
        for index, rows in digests.items()
    }


def computes_in_sql(conn: Connection) -> bool:
    return conn.dialect.name in ("postgresql", "mysql", "mariadb")


def _postgres_query(quoted: str) -> str:
    # concat() prints every value with its type's output function: a CHAR(36) row key
    # keeps the padding the driver returns it with, as the backup read it.
    # extract(epoch ...) is numeric (exact) for timestamp and timestamptz alike.
    head = (
        "concat(added_id, '|', ref_key, '|', "
        "(extract(epoch FROM created_at) * 1000000)::bigint, '|', "
        "char_length(concat(row_key)), '|', char_length(column_name), '|', "
        "row_key, column_name)"
    )
    row = f"sha256(convert_to({head}, 'UTF8') || body)"
    return (
        f"SELECT added_id >> {RANGE_BITS} AS r, count(*), "
        f"encode(sha256(string_agg({row}, ''::bytea ORDER BY added_id)), 'hex') "
        f"FROM {quoted} GROUP BY 1 ORDER BY 1"
    )


def _mariadb_query(quoted: str) -> str:
    # TIMESTAMPDIFF counts the microseconds exactly (DATETIME has no time zone), as the
    # backup reads created_at. CONCAT with the BLOB body is a binary string: the text
    # parts enter as their utf8mb4 bytes.
    row = (
        "UNHEX(SHA2(CONCAT(added_id, '|', ref_key, '|', "
        "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', created_at), '|', "
        "CHAR_LENGTH(row_key), '|', CHAR_LENGTH(column_name), '|', "
        "CONVERT(row_key USING utf8mb4), CONVERT(column_name USING utf8mb4), body), 256))"
    )
    return (
        f"SELECT FLOOR(added_id / {RANGE}) AS r, COUNT(*), "
        f"SHA2(GROUP_CONCAT({row} ORDER BY added_id SEPARATOR ''), 256) "
        f"FROM {quoted} GROUP BY r ORDER BY r"
    )


def sql_digests(conn: Connection, table: str) -> Digests:
    """Every cell of the table, digested by the server: one row per range comes back."""
    # The name is quoted by the dialect and the statements go without parameters (so
    # the DB-API reads no % in them as a marker); the numbers are module constants:
    # nothing else in them comes from outside (tests/test_digest_sql_names.py).
    quoted = conn.dialect.identifier_preparer.quote(table)
    if conn.dialect.name == "postgresql":
        # The sort inside each range's aggregate stays in memory.
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        query = _postgres_query(quoted)
    else:
        conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {_GROUP_CONCAT_LEN}")
        query = _mariadb_query(quoted)
    return {
        int(index): (int(count), str(digest))
        for index, count, digest in conn.exec_driver_sql(query)
    }


def compare(
    unit: str, table: str, expected: Digests, found: Digests, *, totals: bool = True
) -> list[str]:
    """The problems of a target's digests against the backup's, naming the ranges
    (the first few) and, unless `totals` is false, the whole table's counts."""
    shown = 5
    problems = []
    expected_total = sum(count for count, _ in expected.values())
    found_total = sum(count for count, _ in found.values())
    if totals and found_total != expected_total:
        problems.append(
            f"{unit}/{table}: {found_total} cells in the target, {expected_total} in the backup"
        )
    differing = []
    for index in sorted(expected.keys() | found.keys()):
        want, got = expected.get(index, (0, "")), found.get(index, (0, ""))
        if want == got:
            continue
        first, last = range_bounds(index)
        if want[0] != got[0]:
            what = f"{got[0]} cells in the target, {want[0]} in the backup"
        else:
            what = "cells differ from the backup's"
        differing.append(f"{unit}/{table}: added_id {first}..{last}: {what}")
    problems += differing[:shown]
    if len(differing) > shown:
        problems.append(f"{unit}/{table}: {len(differing) - shown} more ranges differ")
    return problems
