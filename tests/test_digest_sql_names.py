"""The server-side digests (drivers/schemaless/digest_sql.py) on tables whose names
hold quotes, percent signs and placeholders: the same digests as Python's, and the
name never read as SQL or as a parameter marker."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, insert

from backstop.drivers.schemaless.digest_sql import sql_digests
from backstop.drivers.schemaless.engines import cell_table

HOSTILE = ["it's", 'say "hi"', "100%", "%s and %(x)s", "a`b"]


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_server_digests_of_hostile_table_names_match_a_plain_one(engine, new_databases):
    from datetime import datetime

    (url,) = new_databases(engine, 1)
    db = create_engine(url)
    rows = [
        {"added_id": i, "row_key": f"{i:08d}-0000-0000-0000-000000000000", "column_name": "c",
         "ref_key": i, "body": b"x" * i, "created_at": datetime(2026, 1, 1)}
        for i in range(1, 6)
    ]  # fmt: skip
    digests = {}
    with db.begin() as conn:
        for name in ["plain", *HOSTILE]:
            table = cell_table(name)
            table.create(conn)
            conn.execute(insert(table), rows)
    for name in ["plain", *HOSTILE]:
        with db.begin() as conn:
            digests[name] = sql_digests(conn, name)
    db.dispose()
    assert digests["plain"]
    assert all(digests[name] == digests["plain"] for name in HOSTILE)
