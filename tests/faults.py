"""Faults injected at a chosen moment of a real run."""

from __future__ import annotations

from collections.abc import Callable


class KillOnFirstWrite:
    """A progress reporter that runs `kill` once the first block of the unit whose label
    contains `unit` has been packaged: the stop lands in the middle of the backup,
    deterministically."""

    def __init__(self, kill: Callable[[], None], unit: str = "") -> None:
        self.kill, self.unit, self.killed = kill, unit, False

    def start(self, label: str, total_bytes: int | None = None):
        def advance(records: int, nbytes: int) -> None:
            if records and not self.killed and self.unit in label:
                self.killed = True
                self.kill()

        return advance

    def finish(self, label: str) -> None:
        pass
