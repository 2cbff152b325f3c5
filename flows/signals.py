"""SIGTERM and SIGINT stop any command within seconds, releasing what it holds.

A signal becomes an exception in the main thread (Prefect's own TerminationSignal
inside a flow run, `Interrupted` elsewhere), so the flows' cleanup runs: quiesce
released, a partial backup discarded (no manifest). The units on worker threads are
told through backstop.drivers.stop.STOP, which every stored-file read and write checks
per block; one stuck in a blocking call is not waited for (exit_if_stuck).

No Prefect import here: the command installs this before anything slow starts.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from backstop.drivers.stop import STOP

# How long an interrupted command waits for its worker threads before exiting anyway.
STOP_GRACE_S = float(os.environ.get("BACKSTOP_STOP_GRACE_S", "10"))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread (a KeyboardInterrupt, so that only
    cleanup code catches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While a command runs: SIGTERM and SIGINT raise Interrupted in the main thread
    (once: a second signal does not cut the cleanup short), and STOP tells the units."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    raised = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal raised
        STOP.set()
        if not raised:
            raised = True
            raise Interrupted(signum)
        print("backstop: stopping; cleaning up first", file=sys.stderr)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_if_stuck(code: int) -> None:
    """After an interrupted command has cleaned up: if a unit is still stuck on a worker
    thread (which the interpreter would wait for at exit), end the process now."""
    deadline = time.monotonic() + STOP_GRACE_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread()
           for t in threading.enumerate()):  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
