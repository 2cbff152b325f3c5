"""The writer threads that keep adding to a source for the whole run, backups included.
Each remembers when every one of its writes was acknowledged: what a restored target
must hold is decided from those times (benchmarks/load/technologies.py says how)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WriterStats:
    name: str
    ops: int = 0
    items: int = 0
    errors: int = 0
    last_errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0


class Writer(threading.Thread):
    """Calls `op()` `rate` times a second until stopped; `op` writes and returns the
    keys it added. Every acknowledged key is kept with the time of its acknowledgement
    (time.time(), so that it compares with the flow runs' start times)."""

    def __init__(self, name: str, op: Callable[[], list[Any]], rate: float) -> None:
        super().__init__(name=f"writer-{name}", daemon=True)
        self.op = op
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.stats = WriterStats(name)
        self.acked: list[tuple[float, Any]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                keys = self.op()
            except Exception as exc:  # counted and reported; the writer keeps going
                self.stats.errors += 1
                self.stats.last_errors = [
                    *self.stats.last_errors[-4:],
                    f"{type(exc).__name__}: {exc}"[:300],
                ]
                keys = []
            took = time.monotonic() - started
            self.stats.slowest_s = max(self.stats.slowest_s, round(took, 3))
            if keys:
                now = time.time()
                with self.lock:
                    self.acked.extend((now, key) for key in keys)
                self.stats.ops += 1
                self.stats.items += len(keys)
            next_at = max(next_at + self.period, time.monotonic())
            self.stopped.wait(next_at - time.monotonic())

    def acked_before(self, moment: float) -> set[Any]:
        with self.lock:
            return {key for at, key in self.acked if at < moment}

    def stop(self) -> None:
        self.stopped.set()
