"""Resumable backups against a real server that dies (issue 15): a shard's PostgreSQL
is killed (SIGKILL, every backend) while its shard is being read; the backup fails,
keeps the shards it stored, and once the server is back `backup --resume` takes that
shard alone into the same backup, which restores exactly. The conformance suite
(tests/conformance/test_resume.py) covers the same for every driver with a fault."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from servers.sql import PostgresServer
from test_schemaless_sql import back_up, cells_of, fill, restore_into

from backstop.drivers.errors import BackstopError

pytestmark = pytest.mark.integration


def _kill_while_read(server: PostgresServer, database: str, done: threading.Event) -> list[str]:
    """Kill `server` once a query reading the cell table of `database` is running."""
    seen: list[str] = []

    def watch() -> None:
        url = server.url().replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
                    " AND query ILIKE %s AND pid <> pg_backend_pid()",
                    (database, "%FROM%cells%"),
                ).fetchone()
                if row:
                    seen.append(row[0])
                    break
                time.sleep(0.02)
        if seen:
            time.sleep(0.2)  # well into the stream
            server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return seen


def test_a_shard_whose_server_dies_mid_backup_is_resumed_alone(
    pg_server, new_databases, local_store, tmp_path
):
    dying = PostgresServer(tmp_path / "dying").start()
    try:
        urls = new_databases("postgresql", 2)
        name = dying.create_database()
        urls.append(dying.url(name))
        for index, url in enumerate(urls):
            fill(url, 1_500 if index < 2 else 30_000, seed=index)
        before = [cells_of(url) for url in urls]

        done = threading.Event()
        seen = _kill_while_read(dying, name, done)
        try:
            with pytest.raises(BackstopError) as failed:
                back_up(urls, local_store)
        finally:
            done.set()
        assert seen, "the dying shard was never seen being read"
        message = str(failed.value)
        assert "2 of 3 units are stored" in message, message
        backup_id = re.search(r"--resume (\S+) ", message)[1]
        store = local_store.open()
        assert store.list_backups() == []  # incomplete: not listed, not restorable

        dying.start()  # the server is back, with its data
        assert cells_of(urls[2]) == before[2]
        outcome = back_up(urls, local_store, resume=backup_id)
        assert (outcome.backup_id, outcome.kept_units) == (backup_id, 2)
        [manifest] = store.list_backups()
        # Each shard at its own point: the resumed one read all its cells.
        assert manifest.units[2].point["watermarks"]["cells"] == before[2][-1][0]
        assert any("resumed" in w for w in manifest.consistency.warnings)

        targets = new_databases("postgresql", 3)
        restored = restore_into(targets, local_store)
        assert restored.verified
        assert [cells_of(t) for t in targets] == before
        assert [cells_of(u) for u in urls] == before  # the sources are untouched
    finally:
        dying.stop()
