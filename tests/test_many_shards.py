"""Many shards (issue 15): a 256-shard Schemaless datastore on SQLite, small shards (20
cells each), through the installed `backstop` command as a separate process: a backup
with 256 `--source` flags, `list`, `verify`, and a restore into 256 fresh target
shards. The restored cells equal the source's, column for column as stored; the
manifest names 256 units and each data file once; the source files are unchanged.

The manifest's size and each command's wall time are printed (`-s` shows them), not
asserted: benchmarks/bench_scale.py measures them on a quiet machine."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from backstop.flows.demo import compare_shards, make_schemaless_datastore
from backstop.tasks.manifest import MANIFEST_NAME
from backstop.tasks.store import StoreSpec

pytestmark = pytest.mark.integration

SHARDS = 256
CELLS_PER_SHARD = 20


def _flags(flag: str, urls: list[str]) -> list[str]:
    return [arg for url in urls for arg in (flag, url)]


def _file_digests(urls: list[str]) -> dict[str, str]:
    return {
        url: hashlib.sha256(Path(url.removeprefix("sqlite:///")).read_bytes()).hexdigest()
        for url in urls
    }


def _backstop(api: str, walls: dict[str, float], name: str, *argv: str) -> dict:
    """`backstop <argv> --json` as its own process: its one JSON object; the wall time
    from start to exit goes into `walls`."""
    started = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "backstop"), *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(api),
    )
    walls[name] = round(time.perf_counter() - started, 2)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"{name}: expected one JSON line on stdout, got {proc.stdout!r}"
    return json.loads(lines[0])


def test_256_shards_back_up_list_verify_and_restore_exactly(prefect_harness, tmp_path):
    sources = make_schemaless_datastore(
        tmp_path / "source", shards=SHARDS, cells=SHARDS * CELLS_PER_SHARD
    )
    before = _file_digests(sources)
    store = tmp_path / "store"
    walls: dict[str, float] = {}

    backed = _backstop(prefect_harness, walls, "backup", "backup", "schemaless",
                       *_flags("--source", sources), "--store", str(store))  # fmt: skip
    assert backed["status"] == "completed"
    assert backed["records"] == SHARDS * CELLS_PER_SHARD
    backup_id = backed["backup_id"]

    listed = _backstop(prefect_harness, walls, "list", "list", "--store", str(store))
    assert [b["backup_id"] for b in listed["backups"]] == [backup_id]
    assert not listed["unreadable"]
    [entry] = listed["backups"]
    assert entry["records"] == SHARDS * CELLS_PER_SHARD and len(entry["sources"]) == SHARDS

    verified = _backstop(prefect_harness, walls, "verify", "verify", "--store", str(store))
    assert verified["ok"] is True and not verified["problems"], verified
    assert verified["files"] >= SHARDS

    # The manifest: one unit per shard, in the order of the sources, each file once.
    manifest_path = store / "schemaless" / backup_id / MANIFEST_NAME
    manifest_bytes = manifest_path.stat().st_size
    started = time.perf_counter()
    [manifest] = StoreSpec(url=str(store)).open().list_backups("schemaless")
    load_s = time.perf_counter() - started
    assert len(manifest.units) == SHARDS
    assert len({u.name for u in manifest.units}) == SHARDS
    assert [u.source for u in manifest.units] == sources  # shard i is the i-th --source
    assert [u.records for u in manifest.units] == [CELLS_PER_SHARD] * SHARDS
    assert all(u.files for u in manifest.units)
    names = [f.name for f in manifest.files]
    assert len(names) == len(set(names)) == manifest.totals.files == verified["files"]
    stored = {p.relative_to(manifest_path.parent).as_posix() for p in store.rglob("*.cells*")}
    assert stored == {f.path or f.name for f in manifest.files}

    (tmp_path / "target").mkdir()
    targets = [f"sqlite:///{tmp_path / 'target'}/shard{i}.db" for i in range(SHARDS)]
    restored = _backstop(prefect_harness, walls, "restore", "restore", "schemaless",
                         "--store", str(store), *_flags("--target", targets),
                         "--backup", backup_id)  # fmt: skip
    assert restored["backup_id"] == backup_id and restored["verified"]
    assert restored["records"] == SHARDS * CELLS_PER_SHARD

    comparison = compare_shards(sources, targets)
    assert comparison.equal, comparison.differences
    assert comparison.cells == SHARDS * CELLS_PER_SHARD
    assert _file_digests(sources) == before, "a source shard changed"

    print(
        f"\n{SHARDS} shards x {CELLS_PER_SHARD} cells: manifest {manifest_bytes:,} bytes "
        f"({manifest_bytes / SHARDS:,.0f} per shard), read and validated in {load_s:.3f} s; "
        "wall s: " + ", ".join(f"{name} {wall}" for name, wall in walls.items())
    )
