"""Units on Dask (issue 15): a real distributed.LocalCluster of 2 worker processes, the
CLI as a separate process (the runner is chosen when the flows are imported). A backup
and a restore round-trip exactly, an encrypted one is read back in full on the workers,
and a worker killed mid-backup leaves a backup that completes and round-trips, or one
that fails cleanly (no manifest)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psutil
import pytest
from conftest import subprocess_env

from backstop.flows.demo import make_schemaless_datastore
from backstop.flows.keys import generate_keys
from backstop.tasks.store import StoreSpec

pytestmark = pytest.mark.integration

SHARDS = 4


def _cells(url: str) -> list[tuple]:
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        return db.execute(
            "SELECT row_key, column_name, ref_key, body, created_at FROM cells "
            "ORDER BY row_key, column_name, ref_key"
        ).fetchall()


def _backstop(api: str, *argv: str) -> subprocess.Popen:
    env = subprocess_env(api) | {"BACKSTOP_DASK_WORKERS": "2"}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "backstop"), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(api: str, *argv: str) -> tuple[int, str]:
    proc = _backstop(api, *argv)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def test_units_on_dask_workers_round_trip_and_read_back_in_full(prefect_harness, tmp_path):
    sources = make_schemaless_datastore(tmp_path / "source", shards=SHARDS, cells=8_000)
    keys = generate_keys(str(tmp_path / "keys"))
    store = str(tmp_path / "store")
    code, out = _run(prefect_harness, "backup", "schemaless", *_args("--source", sources),
                     "--store", store, "--runner", "dask",
                     "--recipients-file", keys["files"]["recipient"], "--json")  # fmt: skip
    assert code == 0, out
    targets = [f"sqlite:///{tmp_path / 'target'}/shard{i}.db" for i in range(SHARDS)]
    (tmp_path / "target").mkdir()
    code, out = _run(prefect_harness, "restore", "schemaless", *_args("--target", targets),
                     "--store", store, "--runner", "dask",
                     "--identity", keys["files"]["identity"], "--json")  # fmt: skip
    assert code == 0, out
    assert [_cells(t) for t in targets] == [_cells(s) for s in sources]
    # The read-back ran on the workers, other processes than the flow's: in full.
    [manifest] = StoreSpec(url=store, identity=keys["files"]["identity"]).open().list_backups()
    read_back = [c for c in manifest.quality.checks if c["check"] == "read-back"]
    assert len(read_back) == SHARDS and not any(c.get("stored_bytes_only") for c in read_back)


def _children(proc: subprocess.Popen, running: str) -> list[psutil.Process]:
    """The CLI's own child processes whose command line holds `running`."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=False):
        try:
            if running in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The Dask worker processes of the CLI's LocalCluster (its nannies, in the CLI's
    process, start each with multiprocessing)."""
    return _children(proc, "multiprocessing")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_worker_killed_mid_backup_leaves_a_whole_backup_or_none(
    prefect_harness, tmp_path, encrypted
):
    sources = make_schemaless_datastore(tmp_path / "source", shards=SHARDS, cells=200_000)
    before = [_cells(s) for s in sources]
    store = tmp_path / "store"
    keys = generate_keys(str(tmp_path / "keys"))
    write = ["--recipients-file", keys["files"]["recipient"]] if encrypted else []
    read = ["--identity", keys["files"]["identity"]] if encrypted else []
    proc = _backstop(prefect_harness, "backup", "schemaless", *_args("--source", sources),
                     "--store", str(store), "--runner", "dask", *write, "--json")  # fmt: skip
    deadline = time.monotonic() + 300
    killed = None
    validators_in_cli = set()  # the suites run on the workers: none in the CLI itself
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        written = [p for p in store.rglob("*.zst*") if p.stat().st_size > 0]
        workers = _workers(proc)
        validators_in_cli |= {c.pid for c in _children(proc, "backstop.tasks.gx_worker")}
        if written and workers:
            killed = workers[0]
            killed.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed is not None, f"no worker was killed (exit {proc.returncode}): {out}{err}"
    assert not validators_in_cli, "the CLI started a validator that the Dask workers do not use"
    assert [_cells(s) for s in sources] == before, "the source changed"
    manifests = list(store.rglob("manifest.json"))
    print(f"after the kill: exit {proc.returncode}")  # which of the two outcomes (-s)
    if proc.returncode != 0:  # failed cleanly: nothing that looks complete
        assert not manifests, out + err
        return
    [manifest] = StoreSpec(url=str(store), identity=read[1] if read else None).open().list_backups()
    names = [f.name for f in manifest.files]
    assert len(names) == len(set(names)) == SHARDS  # each unit's file once
    # Nothing but the backup's own files: a re-run unit's first attempt was removed.
    stored = {p.name for p in store.rglob("*.zst*")}
    assert stored == {(f.path or f.name).rsplit("/", 1)[-1] for f in manifest.files}
    targets = [f"sqlite:///{tmp_path / 'target'}/shard{i}.db" for i in range(SHARDS)]
    (tmp_path / "target").mkdir()
    code, restored = _run(prefect_harness, "restore", "schemaless", *_args("--target", targets),
                          "--store", str(store), *read, "--json")  # fmt: skip
    assert code == 0, restored
    assert [_cells(t) for t in targets] == before
