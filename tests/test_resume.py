"""Resumable backups against a real server that dies (issue 15): a shard's PostgreSQL
is killed (SIGKILL, every backend) once its shard's first block is stored; the backup
fails with no manifest, keeps the shards it stored, and once the server is back
`backup --resume` takes that shard alone into the same backup, which restores exactly.
The conformance suite (tests/conformance/test_resume.py) covers every driver."""

from __future__ import annotations

import re

import pytest
from conftest import server_unavailable
from faults import KillOnFirstWrite
from servers.sql import PostgresServer, postgres_installed
from test_schemaless_sql import back_up, cells_of, fill, restore_into

from backstop.drivers.errors import BackstopError
from backstop.tasks.progress import reporting

pytestmark = pytest.mark.integration


def test_a_shard_whose_server_dies_mid_backup_is_resumed_alone(
    tmp_path, new_databases, local_store
):
    if not postgres_installed():
        server_unavailable("PostgreSQL is not installed")
    dying = PostgresServer(tmp_path / "dying").start()
    try:
        urls = [*new_databases("postgresql", 3), dying.url(dying.create_database())]
        for index, url in enumerate(urls):
            fill(url, 15_000, seed=index)
        before = [cells_of(url) for url in urls]

        killer = KillOnFirstWrite(dying.kill, unit="shard-003")
        with reporting(killer), pytest.raises(BackstopError) as failed:
            back_up(urls, local_store)
        assert killer.killed
        message = str(failed.value)
        assert "3 of 4 units are stored" in message, message
        backup_id = re.search(r"--resume (\S+) ", message)[1]
        store = local_store.open()
        assert store.list_backups() == []  # no manifest: not listed, not restorable
        assert [f.backup_id for f in store.folders()] == [backup_id]

        dying.start()  # the server is back, with its data
        assert cells_of(urls[3]) == before[3]
        outcome = back_up(urls, local_store, resume=backup_id)
        assert (outcome.backup_id, outcome.kept_units) == (backup_id, 3)
        [manifest] = store.list_backups()
        # Each shard at its own point: the resumed one has every cell of its shard.
        assert manifest.units[3].point["watermarks"]["cells"] == before[3][-1][0]
        assert any("resumed" in w for w in manifest.consistency.warnings)

        targets = new_databases("postgresql", 4)
        restored = restore_into(targets, local_store)
        assert restored.verified
        assert [cells_of(t) for t in targets] == before
        assert [cells_of(u) for u in urls] == before  # the sources are untouched
    finally:
        dying.stop()
