"""A backup or a restore killed mid-run, then run again, ends right: a killed backup
leaves no manifest, a restore rerun with --mode overwrite leaves the target equal to the
backup; prune never removes a backup that is still running, however short its grace.
Every driver, through the real command in a process of its own (a kill is a real
SIGKILL, a pause SIGSTOP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.integration


def _start(command: str, harness, urls: list[str], store: Path, api_url: str):
    env = subprocess_env(api_url)
    # The same imports as this process (the kvdir plugin is installed on sys.path).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    args = harness.source_args(urls) if command == "backup" else harness.target_args(urls)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "backstop"), command, harness.technology,
         *args, "--store", store.as_uri(), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _start_backup(harness, source: list[str], store: Path, api_url: str) -> subprocess.Popen:
    return _start("backup", harness, source, store, api_url)


def _leased_folder(
    proc: subprocess.Popen, store: Path, seen: tuple[Path, ...] = (), kind: str = "backup"
) -> Path:
    """The folder a backup writes (or a restore reads) once it holds its lease there,
    another than `seen`: the command is running."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        for lease in store.glob(f"*/*/.lease-{kind}-*"):
            if lease.parent not in seen:
                return lease.parent
        time.sleep(0.005)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else (b"", b"")
    pytest.fail(f"the backup never held a lease (exit {proc.returncode}): {out!r} {err!r}")


def test_a_killed_backup_leaves_no_manifest_and_prune_spares_a_running_one(
    harness, run, prefect_harness, tmp_path
):
    source = harness.make_source()
    before = harness.digest(source)
    store = tmp_path / "store"

    killed = _start_backup(harness, source, store, prefect_harness)
    killed_folder = _leased_folder(killed, store)
    killed.kill()
    killed.wait(timeout=60)
    assert not (killed_folder / "manifest.json").exists()

    running = _start_backup(harness, source, store, prefect_harness)
    folder = _leased_folder(running, store, seen=(killed_folder,))
    running.send_signal(signal.SIGSTOP)  # still running, as a slow backup is
    try:
        pruned = run("prune", "--store", store.as_uri(), "--keep-last", "1",
                     "--grace-hours", "0", "--json")  # fmt: skip
        assert pruned.code == 0, pruned.stdout
        assert folder.is_dir(), "prune removed a backup that was still running"
    finally:
        running.send_signal(signal.SIGCONT)
    out, err = running.communicate(timeout=600)
    assert running.returncode == 0, out + err
    assert (folder / "manifest.json").is_file()

    listed = run("list", "--store", store.as_uri(), "--json").json["backups"]
    assert [b["backup_id"] for b in listed] == [folder.name]  # never the killed one
    target = harness.make_target()
    restored = run("restore", harness.technology, *harness.target_args(target),
                   "--store", store.as_uri(), "--json")  # fmt: skip
    assert restored.code == 0, restored.stdout
    assert harness.digest(target) == before == harness.digest(source)


def test_a_restore_killed_mid_run_is_made_right_by_running_it_again(
    harness, run, prefect_harness, tmp_path
):
    source = harness.make_source()
    before = harness.digest(source)
    store = tmp_path / "store"
    assert run("backup", harness.technology, *harness.source_args(source),
               "--store", store.as_uri(), "--json").code == 0  # fmt: skip

    target = harness.make_target()
    killed = _start("restore", harness, target, store, prefect_harness)
    _leased_folder(killed, store, kind="restore")  # reading the backup: under way
    killed.kill()
    killed.wait(timeout=60)

    again = run("restore", harness.technology, *harness.target_args(target),
                "--store", store.as_uri(), "--mode", "overwrite", "--json")  # fmt: skip
    assert again.code == 0, again.stdout
    assert again.json["verified"] is True
    assert harness.digest(target) == before
    # What the rerun may have kept of the killed attempt is a safety backup, never latest.
    roles = {b["role"] for b in run("list", "--store", store.as_uri(), "--json").json["backups"]}
    assert roles <= {"adhoc", "safety"}
