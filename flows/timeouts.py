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
}


def timeout_variable(flow: str) -> str:
    return f"BACKSTOP_{flow.upper()}_TIMEOUT_S"


def flow_timeout(flow: str) -> float | None:
    """Seconds the named flow may run (BACKSTOP_<FLOW>_TIMEOUT_S, else the default);
    None (no timeout) for 0. A value that is not a number fails the import with the
    variable named (exit 2 from the CLI), before any run starts."""
    name = timeout_variable(flow)
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUTS_S[flow])
    try:
        seconds = float(raw)
    except ValueError:
        raise BadInputError(f"{name}={raw!r}: expected seconds (0 for no timeout)") from None
    if seconds < 0:
        raise BadInputError(f"{name}={raw!r}: expected seconds (0 for no timeout)")
    return seconds or None
