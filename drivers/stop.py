"""Stopping on request: the flag a SIGTERM/SIGINT sets (backstop.flows.signals) and
long-running work checks.

Worker threads cannot be interrupted from outside in Python, so the stored-file
streams (backstop.tasks.packaging) check STOP per block they read or write: a unit
deep in a long read stops within one block instead of at the end of its data.
"""

from __future__ import annotations

import threading

from backstop.drivers.errors import PermanentError

STOP = threading.Event()


class Stopped(PermanentError):
    """The process was asked to stop while this work was running (never retried)."""


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped("stopped: backstop received a termination signal")
