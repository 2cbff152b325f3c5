"""The load test's short mode (benchmarks/load/run.py) against this session's servers:
backup-and-restore cycles of Schemaless (SQLite and PostgreSQL), ZooKeeper and Docstore
(FerretDB) as flow runs on a real `prefect server` and a process worker, 4 in flight,
while writers keep writing. Every cycle's restore must be verified (by the restore flow
and against the source as of the backup's consistency point), no writer may fail, and
the worker's and the server's RSS, open files and threads must stay flat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]
TECHNOLOGIES = ["schemaless-sqlite", "schemaless-postgresql", "zookeeper", "docstore"]
WAIT_S = 840  # the short mode takes 2-7 minutes on 2 shared cores


@pytest.mark.timeout(WAIT_S + 120)
@pytest.mark.parametrize("zk_server", ["3.9"], indirect=True)
def test_short_load_verifies_every_cycle_and_stays_flat(
    zk_server, pg_server, ferret_source, ferret_target, tmp_path: Path
):
    out = tmp_path / "load-short.md"
    argv = [
        sys.executable, "-m", "benchmarks.load", "--mode", "short", "--out", str(out),
        "--pg-url", pg_server.url(), "--zk-hosts", zk_server.hosts,
        "--mongo-source", ferret_source.url, "--mongo-target", ferret_target.url,
        "--work-dir", str(tmp_path),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    log_path = tmp_path / "load.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        code = None
        try:
            code = process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:  # a timeout, or this test interrupted: stop it and what it started
            if process.poll() is None:
                # SIGTERM: the load test stops its worker and Prefect server on the way out.
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    if code is None:
        pytest.fail(f"the short load test ran past {WAIT_S} s:\n{_tail(log_path)}")
    json_path = out.with_suffix(".json")
    assert json_path.is_file(), f"no report (exit {code}):\n{_tail(log_path)}"
    print(out.read_text())  # the figures, shown with -rP or on failure
    report = json.loads(json_path.read_text())
    failed = [
        {k: r.get(k) for k in ("cycle", "technology", "failure", "backup", "restore")}
        for r in report["cycle_records"]
        if not r["verified"]
    ]
    assert report["failures"] == 0, json.dumps(failed, indent=1)[:6000]
    assert report["technologies"] == TECHNOLOGIES
    per_technology = {t["technology"]: t for t in report["per_technology"]}
    for name in TECHNOLOGIES:
        assert per_technology[name]["cycles"] >= 2, per_technology[name]
        assert per_technology[name]["verified"] == per_technology[name]["cycles"]
    assert report["verified"] == report["cycles"] == len(report["cycle_records"])
    assert all(r["restore_says_verified"] for r in report["cycle_records"])
    # 4 runs started and not final at once; never more running than the pool allows.
    assert report["peak_in_flight"] == report["concurrency"] == 4
    assert report["peak_running"] <= 4
    assert report["writer_errors"] == 0, report["writers"]
    assert all(w["items"] > 0 for w in report["writers"]), report["writers"]
    assert not report["leftover_processes"], report["leftover_processes"]
    unflat = [j for j in report["judgments"] if j["flat"] is False]
    assert report["flat"] and not unflat, json.dumps(unflat, indent=1)
    assert code == 0, _tail(log_path)


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
