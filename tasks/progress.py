"""Progress of long steps, shown on a terminal by the CLI and nowhere else.

Tasks report through the current reporter; the default one does nothing, so flows
run from a deployment or a test print no progress.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int, int], None]  # (records, bytes)


class ProgressReporter:
    def start(self, label: str, total_bytes: int | None = None) -> Advance:
        return lambda records, nbytes: None

    def finish(self, label: str) -> None:
        pass


class RichProgress(ProgressReporter):
    """A live display on stderr: one line per unit with records, bytes and rate."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[records]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, label: str, total_bytes: int | None = None) -> Advance:
        with self._lock:
            task_id = self._progress.add_task(label, total=total_bytes, records="")
            self._tasks[label] = task_id
        counts = {"records": 0}

        def advance(records: int, nbytes: int) -> None:
            counts["records"] += records
            shown = f"{counts['records']:,} records" if counts["records"] else ""
            self._progress.update(task_id, advance=nbytes, records=shown)

        return advance

    def finish(self, label: str) -> None:
        with self._lock:
            task_id = self._tasks.pop(label, None)
        if task_id is not None:
            task = self._progress.tasks[task_id]
            self._progress.update(task_id, total=task.completed)


_current: ProgressReporter = ProgressReporter()


def reporter() -> ProgressReporter:
    return _current


@contextmanager
def reporting(new: ProgressReporter) -> Iterator[ProgressReporter]:
    global _current
    previous, _current = _current, new
    try:
        yield new
    finally:
        _current = previous
