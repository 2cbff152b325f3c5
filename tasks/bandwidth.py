"""Bandwidth limits on store streams (`--limit-upload`, `--limit-download`, in MB/s).

As restic's and rclone's: one token bucket per direction for the whole process, shared
by every data stream of a limited store, so four parallel uploads together stay under
the limit. MB is 10^6 bytes. The bucket starts full and holds a small burst (a tenth of
a second's worth, at least 256 KiB), so a transfer of tens of MB averages within about
1% of the limit; large writes and reads are metered in pieces of at most 64 KiB, so one
64 MiB write cannot pass as a burst.

The registry is per process: the first store opened with a limit creates the bucket,
and a store opened later with a smaller limit lowers it (never raises it) for the rest
of the process's life: two stores asking for different limits get the smaller. Streams
of a store opened without a limit are not metered.

Only the data files' streams (ArtifactStore.open_write / open_read) are metered; the
manifest and other small files read whole are not.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from backstop.drivers.stop import STOP

UPLOAD = "upload"
DOWNLOAD = "download"
MB = 1_000_000  # bytes: limits are in MB/s, as in restic's and rclone's decimal units

BURST_S = 0.1  # the bucket holds this many seconds' worth of bytes ...
MIN_BURST = 256 << 10  # ... and at least this many
PIECE = 64 << 10  # the most bytes one metered write or read call moves at once
# The limits a limit may take: below 10 kB/s a 64 KiB piece waits longer than 6 s (and a
# typo like 1e-9 would wait years); above 1 TB/s there is nothing to limit.
MIN_MB_S, MAX_MB_S = 0.01, 1e6
MAX_WAIT_S = 60.0  # one sleep at most; a longer debt is slept in turns

log = logging.getLogger(__name__)


def _sleep(seconds: float) -> None:
    """Wait for tokens; a stop request (SIGTERM) ends the wait at once (the stream's
    own check_stop then stops it)."""
    STOP.wait(min(seconds, MAX_WAIT_S))


class TokenBucket:
    """A token bucket of `rate` bytes per second holding at most `burst` bytes.

    Thread-safe. A caller reserves its bytes under the lock (the bucket may go into
    debt: the next callers wait longer, in turn) and sleeps outside it until they are
    paid for, so the bytes granted by time t never exceed burst + rate * t.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = _sleep,
    ) -> None:
        check_rate(rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._fixed_burst = burst
        self.rate = float(rate)
        self.burst = self._burst_for(self.rate)
        self._tokens = self.burst  # starts full
        self._last = clock()

    def _burst_for(self, rate: float) -> float:
        if self._fixed_burst is not None:
            return float(self._fixed_burst)
        return max(rate * BURST_S, float(MIN_BURST))

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = now

    def reserve(self, n: int) -> float:
        """Take n bytes' worth of tokens; the seconds to wait before using them."""
        with self._lock:
            self._refill(self._clock())
            self._tokens -= n
            return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def acquire(self, n: int) -> None:
        """Wait until n bytes may pass (in bursts of at most `burst`)."""
        while n > 0:
            take = min(n, max(1, int(self.burst)))
            delay = self.reserve(take)
            if delay > 0:
                self._sleep(delay)
            n -= take

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (the tokens earned so far at the old one are kept,
        up to the new burst)."""
        check_rate(rate)
        with self._lock:
            self._refill(self._clock())
            self.rate = float(rate)
            self.burst = self._burst_for(self.rate)
            self._tokens = min(self._tokens, self.burst)


def check_rate(rate: float) -> None:
    if not (isinstance(rate, int | float) and 0 < rate < math.inf):
        raise ValueError(f"a rate must be a finite number more than 0, got {rate!r}")


class MeteredFile:
    """A binary file object whose writes and reads pass through `bucket`, in pieces of
    at most PIECE bytes. Everything else (close, flush, seek, tell, closed, name, ...)
    is the wrapped file's own, and so are the errors (of their own types)."""

    def __init__(self, fh: IO[bytes], bucket: TokenBucket) -> None:
        self._fh = fh
        self._bucket = bucket
        self._piece = max(1, min(PIECE, int(bucket.burst)))

    def __getattr__(self, name: str) -> Any:
        if name == "_fh":  # not yet set: no recursion
            raise AttributeError(name)
        return getattr(self._fh, name)

    def __enter__(self) -> MeteredFile:
        self._fh.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._fh.__exit__(*exc)

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    # -- writes -------------------------------------------------------------------------
    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            piece = view[done : done + self._piece]
            self._bucket.acquire(len(piece))
            while piece:  # a raw file may take part of it
                written = self._fh.write(piece)
                if written is None:  # a non-blocking file that would block
                    written = 0
                piece = piece[written:]
                done += written
                if not written:
                    break
            if piece:
                break
        return done

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    # -- reads --------------------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        """As the wrapped file's read: `size` bytes unless the end comes first (all of
        it for -1 or None), fetched a piece at a time."""
        if size is None or size < 0:
            size = sys.maxsize
        parts = []
        left = size
        while left > 0:
            data = self._fh.read(min(left, self._piece))
            if not data:
                break
            self._bucket.acquire(len(data))
            parts.append(data)
            left -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        want = self._piece if size is None or size < 0 else min(size, self._piece)
        data = self._fh.read1(want) if hasattr(self._fh, "read1") else self._fh.read(want)
        self._bucket.acquire(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            n = self._fh.readinto(view[done : done + self._piece])
            if not n:
                break
            self._bucket.acquire(n)
            done += n
        return done

    def readinto1(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._piece]
        n = self._fh.readinto1(view) if hasattr(self._fh, "readinto1") else self._fh.readinto(view)
        self._bucket.acquire(n or 0)
        return n

    def readline(self, size: int | None = -1) -> bytes:
        line = self._fh.readline(-1 if size is None else size)
        self._bucket.acquire(len(line))
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines


def metered(fh: IO[bytes], bucket: TokenBucket | None) -> IO[bytes]:
    """`fh` itself when there is no limit; else the same file, metered."""
    return fh if bucket is None else MeteredFile(fh, bucket)  # type: ignore[return-value]


# -- the process's buckets -----------------------------------------------------------------
_BUCKETS: dict[str, TokenBucket] = {}
_REGISTRY_LOCK = threading.Lock()
_ANNOUNCED: set[tuple[Any, str, float]] = set()


def bucket(direction: str, mb_per_s: float | None) -> TokenBucket | None:
    """The process's bucket for `direction` (UPLOAD or DOWNLOAD), made or lowered to
    `mb_per_s`; None (no metering) when no limit is asked for."""
    if mb_per_s is None:
        return None
    rate = float(mb_per_s) * MB
    check_rate(rate)
    with _REGISTRY_LOCK:
        found = _BUCKETS.get(direction)
        if found is None:
            found = _BUCKETS[direction] = TokenBucket(rate)
        elif rate < found.rate:
            found.set_rate(rate)
    _announce(direction, found.rate)
    return found


def limits() -> dict[str, float]:
    """The limits in force in this process, in MB/s by direction."""
    with _REGISTRY_LOCK:
        return {direction: b.rate / MB for direction, b in _BUCKETS.items()}


def reset() -> None:
    """Forget the process's limits (tests: one process runs many flows)."""
    with _REGISTRY_LOCK:
        _BUCKETS.clear()
        _ANNOUNCED.clear()


def describe(direction: str, rate: float) -> str:
    return f"{direction} limited to {rate / MB:g} MB/s (shared by every stream of this process)"


def _announce(direction: str, rate: float) -> None:
    """Say the limit once in each flow run's log (and again if it is lowered). Outside
    a run (the CLI's checks before Prefect starts) it is said at debug level only, and
    Prefect is not imported for it."""
    run_id = _flow_run_id()
    key = (run_id, direction, rate)
    with _REGISTRY_LOCK:
        if key in _ANNOUNCED:
            return
        _ANNOUNCED.add(key)
    if run_id is None:
        log.debug("%s", describe(direction, rate))
        return
    from prefect import get_run_logger

    get_run_logger().info("%s", describe(direction, rate))


def _flow_run_id() -> Any:
    if "prefect.context" not in sys.modules:  # no run without Prefect; do not import it
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return task_run.task_run.flow_run_id
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return flow_run.flow_run.id
    return None
