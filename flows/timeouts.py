"""How long each flow may run before Prefect fails it (Flow(timeout_seconds=...)).

A run that hangs (a server that stops answering mid-stream, a lock never granted)
otherwise holds its deployment's concurrency slot forever, and every later scheduled
run of that source waits behind it. The defaults are generous: at the measured rates
(benchmarks/results: 12,000-200,000 records/s on 2 cores) they allow for backups of
hundreds of millions of records; a restore (load + verification + quality suite)
takes two to three times as long as its backup, and a drill is both.

Each is read from the environment when the flow module is imported, so a deployment
overrides it through its work pool's job variables (`env: {BACKSTOP_BACKUP_TIMEOUT_S:
"3000"}`): a worker starts a new process per run. 0 means no timeout.
"""

from __future__ import annotations

import math
import os

from backstop.drivers.errors import BadInputError

HOUR = 3600
DEFAULT_TIMEOUTS_S: dict[str, int] = {
    "backup": 6 * HOUR,
    "restore": 12 * HOUR,
    "verify": 6 * HOUR,
    "drill": 18 * HOUR,
    "prune": 1 * HOUR,
    "export": 12 * HOUR,
    "rekey": 12 * HOUR,
}
# A year: far past any run, well inside what the alarm timer (setitimer) accepts.
MAX_TIMEOUT_S = 365 * 24 * HOUR


def timeout_variable(flow: str) -> str:
    return f"BACKSTOP_{flow.upper()}_TIMEOUT_S"


def flow_timeout(flow: str) -> float | None:
    """Seconds the named flow may run (BACKSTOP_<FLOW>_TIMEOUT_S, else the default);
    None (no timeout) for 0. A value that is not a number of seconds from 0 to
    MAX_TIMEOUT_S fails the import with the variable named (exit 2 from the CLI)."""
    name = timeout_variable(flow)
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUTS_S[flow])
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    # nan, inf and anything past the alarm timer's range would pass float() and then
    # crash every run of the flow inside Prefect's timeout (setitimer: ValueError,
    # OverflowError), far from the variable that caused it.
    if not 0 <= seconds <= MAX_TIMEOUT_S:
        raise BadInputError(
            f"{name}={raw!r}: expected seconds from 0 (no timeout) to {MAX_TIMEOUT_S}"
        )
    return seconds or None


def check_timeouts() -> None:
    """Every flow's timeout variable, checked where nothing slow has started yet (the
    CLI): the flow modules import one another, so any of them fails any flow."""
    for flow in DEFAULT_TIMEOUTS_S:
        flow_timeout(flow)
