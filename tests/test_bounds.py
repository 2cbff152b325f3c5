"""Resource bounds on hostile input (issue 11, defect 6), through the real command.

A stored file whose header claims a huge record, with every checksum fixed up, must
fail the restore at once with an integrity error, in bounded memory; SIGTERM/SIGINT stop
a running command within a bounded wait, even while a unit is stuck in a blocking read,
and leave no manifest behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import subprocess_env
from crafted import backup_ids, rewrite_stored_file, store_folder, zeros

from backstop.drivers.schemaless.cells import _HEADER

RSS_LIMIT = 600 << 20
BACKSTOP = str(Path(sys.executable).parent / "backstop")


def _backup(cli, shards: list[str], store_url: str) -> str:
    result = cli("backup", "schemaless", *[a for s in shards for a in ("--source", s)],
                 "--store", store_url, "--json")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    return result.json["backup_id"]


def _restore_argv(store_url: str, backup_id: str, tmp_path: Path, shards: int) -> list[str]:
    (tmp_path / "target").mkdir(exist_ok=True)
    targets = [f"sqlite:///{tmp_path / 'target' / f'shard{i}.db'}" for i in range(shards)]
    return [BACKSTOP, "restore", "schemaless", "--store", store_url, "--backup", backup_id,
            *[a for t in targets for a in ("--target", t)], "--json"]  # fmt: skip


def _run_watching_memory(argv: list[str], env: dict, timeout: float) -> tuple[int, str, int]:
    """Run the command; return its exit code, stdout and the largest RSS seen. A child
    that grows past RSS_LIMIT is killed (the test has failed; no need to wait)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watched = psutil.Process(proc.pid)
    peak = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > RSS_LIMIT or time.monotonic() > deadline:
            proc.kill()
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode(errors="replace"), peak


def test_a_cell_claiming_a_huge_body_fails_the_restore_in_bounded_memory(
    cli, shards, local_store, tmp_path, prefect_harness
):
    backup_id = _backup(cli, shards, local_store.url)
    store = store_folder(local_store.url)
    # One cell whose header claims a 3.5 GB body, followed by 768 MiB of zeros: the file
    # really holds far more than memory should ever take, and its checksums all match.
    header = _HEADER.pack(1, 0, 0, 36, 4, 3_500_000_000) + str(uuid.uuid4()).encode() + b"body"
    name = rewrite_stored_file(store, "schemaless", backup_id, [header, *zeros(768 << 20)])

    code, out, peak = _run_watching_memory(
        _restore_argv(local_store.url, backup_id, tmp_path, len(shards)),
        subprocess_env(prefect_harness),
        timeout=300,
    )
    assert peak < RSS_LIMIT, f"the restore grew to {peak >> 20} MiB"
    assert code == 1, out
    error = json.loads(out.strip().splitlines()[-1])["error"]
    assert name in error and "3,500,000,000-byte body" in error, error


def _wait_for_reader(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Block until the command (or a process under it) holds `path` open for reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(proc.pid)
            for process in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    if any(f.path == str(path) for f in process.open_files()):
                        return
        time.sleep(0.05)
    raise AssertionError("the command never opened the stored file")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_restore_stuck_in_a_read(
    cli, local_store, tmp_path, prefect_harness, signum
):
    # A store that hardly answers: 10 kB/s (the lowest bandwidth limit), and a stored
    # file of 2 MB of incompressible cells, whose read takes minutes. (A stored file
    # that is a FIFO, the old way to make a read hang, is refused as damage now; a
    # silent server's blocking reads are tests/test_silent_sql_server.py's.)
    source = _large_source(tmp_path / "source", cells=500, body=4096, random=True)
    backup_id = _backup(cli, [source], local_store.url)
    store = store_folder(local_store.url)
    manifest = json.loads((store / "schemaless" / backup_id / "manifest.json").read_text())
    stored = store / "schemaless" / backup_id / manifest["units"][0]["files"][0]["name"]
    assert stored.stat().st_size > 1 << 20

    proc = subprocess.Popen(
        [*_restore_argv(local_store.url, backup_id, tmp_path, 1), "--limit-download", "0.01"],
        env=subprocess_env(prefect_harness),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_reader(stored, proc)
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the restore did not stop after the signal")
    assert proc.returncode == 128 + signum, err.decode(errors="replace")
    assert json.loads(out.decode().strip().splitlines()[-1])["status"] == "interrupted"
    # Nothing was added to the store: no manifest of a safety or any other backup.
    assert backup_ids(store, "schemaless") == [backup_id]


def _large_source(
    folder: Path, cells: int = 2_000, body: int = 256 << 10, *, random: bool = False
) -> str:
    """A SQLite shard of `cells` cells with `body`-byte bodies: zeros (quick to make,
    still a few seconds of reading, hashing and compressing for the backup), or random
    bytes (incompressible: stored as large as they are)."""
    import sqlite3

    from backstop.flows.demo import make_schemaless_datastore

    [url] = make_schemaless_datastore(folder, shards=1, cells=0)
    fill = "randomblob" if random else "zeroblob"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO cells (row_key, column_name, ref_key, body, created_at) "
            f"SELECT printf('%08d-0000-4000-8000-%012d', i, i), 'c', 1, {fill}(?), "
            "'2026-01-01 00:00:00' FROM n",
            (cells, body),
        )
    return url


def test_sigterm_stops_a_running_backup_and_leaves_no_manifest(tmp_path, prefect_harness):
    source = _large_source(tmp_path / "source")
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [BACKSTOP, "backup", "schemaless", "--source", source, "--store", store.as_uri(), "--json"],
        env=subprocess_env(prefect_harness),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Running: the unit has started writing its data file into the store.
    deadline = time.monotonic() + 300
    while not any(p.is_file() for p in store.glob("schemaless/*/**/*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the backup never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the backup did not stop after SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, err.decode(errors="replace")
    assert json.loads(out.decode().strip().splitlines()[-1])["status"] == "interrupted"
    assert not list(store.rglob("manifest.json"))
    # The partial backup was discarded once its unit had stopped writing.
    assert not [p for p in store.rglob("*") if p.is_file()]
