"""Faults injected at a chosen moment of a real run."""

from __future__ import annotations

from collections import Counter
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


class _CountingStream:
    """A store stream that tells its call's counter how much it delivered."""

    def __init__(self, stream, counted: Callable[[int], None]) -> None:
        self._stream, self._counted = stream, counted

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._counted(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class ReadFault:
    """Wraps a driver's FileSource: counts the bytes each restore_unit call reads from
    the store (`read_by_unit`) and, once a call has read `after_bytes[unit]`, raises
    `error`; `times` times in all, so a retried task meets it once and then runs clean.
    With no thresholds it only measures (a clean run, to place the fault of the next)."""

    def __init__(
        self,
        error: Callable[[], BaseException],
        after_bytes: dict[str, int] | None = None,
        times: int = 1,
    ) -> None:
        import threading

        self.error, self.after_bytes, self.times = error, after_bytes or {}, times
        self.read_by_unit: dict[str, int] = {}
        self.fired: list[str] = []
        self._lock = threading.Lock()

    def source(self, unit: str, source):
        import contextlib

        read = {"bytes": 0}

        def counted(nbytes: int) -> None:
            read["bytes"] += nbytes
            with self._lock:
                self.read_by_unit[unit] = read["bytes"]
                limit = self.after_bytes.get(unit)
                if limit is None or read["bytes"] < limit or len(self.fired) >= self.times:
                    return
                self.fired.append(unit)
            raise self.error()

        class Source:
            @contextlib.contextmanager
            def open(self, *args, **kwargs):
                with source.open(*args, **kwargs) as stream:
                    yield _CountingStream(stream, counted)

        return Source()


def fail_restore_reads(monkeypatch, driver_class, fault: ReadFault, backup_id: str) -> None:
    """Restores of `backup_id` (not a rollback's restore of its safety backup) read
    through `fault`."""
    original = driver_class.restore_unit

    def restore_unit(self, unit, target, source, plan):
        if getattr(source, "_backup_id", None) == backup_id:
            source = fault.source(unit.name, source)
        return original(self, unit, target, source, plan)

    monkeypatch.setattr(driver_class, "restore_unit", restore_unit)


def fail_after_restore_writes(
    monkeypatch, driver_class, error: Callable[[], BaseException], backup_id: str, times: int
) -> list[str]:
    """Each of the first `times` restore_unit calls for `backup_id` writes its unit
    completely, then raises `error` (a failure between the load and its report)."""
    original = driver_class.restore_unit
    failed: list[str] = []

    def restore_unit(self, unit, target, source, plan):
        result = original(self, unit, target, source, plan)
        if getattr(source, "_backup_id", None) == backup_id and len(failed) < times:
            failed.append(unit.name)
            raise error()
        return result

    monkeypatch.setattr(driver_class, "restore_unit", restore_unit)
    return failed


def fail_backup_write_once(monkeypatch, driver_class, error: Callable[[], BaseException]):
    """The first block any backup_unit writes is written, then `error` is raised, once:
    the unit has written part of its data when it fails (a driver that buffers a small
    source into one block fails after its only write)."""
    return fail_backup_writes(monkeypatch, driver_class, error, times=1)


def fail_backup_writes(
    monkeypatch,
    driver_class,
    error: Callable[[], BaseException],
    chosen: Callable[[object], bool] = lambda unit: True,
    times: int | None = None,
):
    """A chosen unit's backup_unit writes its first block, then `error` is raised;
    `times` times in all (None: every time, as a shard whose server is gone)."""
    original = driver_class.backup_unit
    writes = {"n": 0, "fired": 0}

    class Writer:
        def __init__(self, writer) -> None:
            self._writer = writer

        def write(self, data, *args, **kwargs):
            written = self._writer.write(data, *args, **kwargs)
            writes["n"] += 1
            if times is None or writes["fired"] < times:
                writes["fired"] += 1
                raise error()
            return written

        def __getattr__(self, name: str):
            return getattr(self._writer, name)

    class Sink:
        def __init__(self, sink) -> None:
            self._sink = sink

        def open(self, *args, **kwargs):
            import contextlib

            @contextlib.contextmanager
            def opened():
                with self._sink.open(*args, **kwargs) as writer:
                    yield Writer(writer)

            return opened()

        def __getattr__(self, name: str):
            return getattr(self._sink, name)

    def backup_unit(self, unit, sink):
        return original(self, unit, Sink(sink) if chosen(unit) else sink)

    monkeypatch.setattr(driver_class, "backup_unit", backup_unit)
    return writes


def fail_once_after(
    monkeypatch,
    owner: object,
    method: str,
    error: Callable[[], BaseException],
    when: Callable[[object], bool] = lambda self: True,
) -> list[bool]:
    """Patch `owner.method` so that the first call after which `when(self)` holds runs
    in full and then raises `error()` (a fault right after a batch was committed); later
    calls are untouched. The returned list holds one entry once the fault has fired."""
    original = getattr(owner, method)
    fired: list[bool] = []

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not fired and when(self):
            fired.append(True)
            raise error()
        return result

    monkeypatch.setattr(owner, method, wrapper)
    return fired


class RunOnFirstProgress:
    """A progress reporter that runs `action` (and waits for it) the first time a unit
    whose label starts with `label` reports progress: the backup or restore holds still,
    mid-way, while something else happens."""

    def __init__(self, action: Callable[[], None], label: str) -> None:
        self.action, self.label, self.ran = action, label, False

    def start(self, label: str, total_bytes: int | None = None):
        def advance(records: int, nbytes: int) -> None:
            if not self.ran and label.startswith(self.label):
                self.ran = True
                self.action()

        return advance

    def finish(self, label: str) -> None:
        pass


def counting(monkeypatch, driver_class, method: str) -> Counter:
    """Count the driver's `method` calls per unit."""
    calls: Counter = Counter()
    original = getattr(driver_class, method)

    def wrapped(self, unit, *args, **kwargs):
        calls[unit.name] += 1
        return original(self, unit, *args, **kwargs)

    monkeypatch.setattr(driver_class, method, wrapped)
    return calls
