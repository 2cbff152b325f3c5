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
    """A live display on stderr: one line per running unit with records, bytes and rate,
    and one line for the units done. A finished unit's line is folded into that one, so
    the display stays as many lines as units run at once: redrawn 10 times a second, a
    line per unit of 1,024 shards held the GIL most of the time, slowing the backup."""

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
        self._tasks: dict[str, tuple[int, dict[str, int]]] = {}
        self._done = {"units": 0, "records": 0, "bytes": 0}
        self._done_task: int | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, label: str, total_bytes: int | None = None) -> Advance:
        counts = {"records": 0, "bytes": 0}
        with self._lock:
            task_id = self._progress.add_task(label, total=total_bytes, records="")
            self._tasks[label] = (task_id, counts)

        def advance(records: int, nbytes: int) -> None:
            counts["records"] += records
            counts["bytes"] += nbytes
            shown = f"{counts['records']:,} records" if counts["records"] else ""
            self._progress.update(task_id, advance=nbytes, records=shown)

        return advance

    def finish(self, label: str) -> None:
        with self._lock:
            entry = self._tasks.pop(label, None)
            if entry is None:
                return
            task_id, counts = entry
            self._progress.remove_task(task_id)
            done = self._done
            done["units"] += 1
            done["records"] += counts["records"]
            done["bytes"] += counts["bytes"]
            if self._done_task is None:
                self._done_task = self._progress.add_task("done", total=None, records="")
            self._progress.update(
                self._done_task,
                description=f"{done['units']:,} done",
                completed=done["bytes"],
                records=f"{done['records']:,} records",
            )


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
