"""A restore that runs past its flow timeout (issue 13 item 4: timeout_seconds on the
flows, BACKSTOP_RESTORE_TIMEOUT_S) still rolls an overwritten target back to its safety
backup.

Prefect's timeout raises inside the flow; backstop then tells the units to stop (STOP)
so the timed-out run writes no more. It used to leave STOP set, so the rollback's own
restore stopped at its first block ("stopped: backstop received a termination signal")
and the target stayed overwritten, as if SIGTERM had come. The fault: the unit writes
the whole target, then hangs (a target server that stops answering before it confirms)
until it is told to stop. The command runs in a process of its own, as in production:
Prefect's timeout is an alarm signal there (in pytest's process, pytest-timeout holds
the alarm and Prefect falls back to a thread that cannot interrupt a blocked wait)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import subprocess_env

from conformance.test_rollback import older_target_and_newer_backup

pytestmark = pytest.mark.integration

# Long enough for the steps before the load (a safety backup of a few kilobytes) on a
# busy machine; the rollback's restore, the same flow, has as long.
TIMEOUT_S = 20

HANGING_RESTORE = """
import sys
from pathlib import Path

from faults import fail_after_restore_writes

from backstop.drivers.registry import get_driver_class
from backstop.drivers.stop import STOP, Stopped
from backstop.flows.cli import main


class Patch:
    setattr = staticmethod(setattr)


def hang_until_stopped():
    Path(marker).touch()
    STOP.wait()
    return Stopped("the unit was told to stop")


marker, technology, backup_id, *argv = sys.argv[1:]
fail_after_restore_writes(Patch, get_driver_class(technology), hang_until_stopped, backup_id, 1)
sys.exit(main(argv))
"""


@pytest.mark.parametrize("harness", ["kvdir"], indirect=True)
def test_a_timed_out_overwrite_is_rolled_back(harness, run, prefect_harness, tmp_path):
    target, backup_id = older_target_and_newer_backup(harness, run)
    before = harness.records(target)
    marker = tmp_path / "hung"
    env = subprocess_env(prefect_harness) | {
        "BACKSTOP_RESTORE_TIMEOUT_S": str(TIMEOUT_S),
        # tests/ (faults) and the kvdir plugin, as in this process.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    argv = ["restore", harness.technology, *harness.target_args(target), "--store", run.store,
            "--backup", backup_id, "--mode", "overwrite"]  # fmt: skip

    failed = subprocess.run(
        [sys.executable, "-c", HANGING_RESTORE, str(marker), harness.technology, backup_id,
         *argv],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert marker.exists(), "the fault never fired: the restore did not reach its load"
    assert f"timed out after {TIMEOUT_S}" in failed.stderr, failed.stderr
    # Said as a time limit naming its setting, not as an unexpected error.
    assert "BACKSTOP_RESTORE_TIMEOUT_S" in failed.stderr, failed.stderr
    assert "unexpected error" not in failed.stderr, failed.stderr
    # The unit wrote the whole target before it hung; the rollback put it back.
    assert harness.records(target) == before, failed.stderr[-3000:]
