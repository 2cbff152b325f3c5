"""The command's side of the validator process (tasks/gx_worker.py): requests of the
command's threads queue, and each exchange takes the asking thread's own request and
those waiting behind it, up to _BATCH_ROWS records, as one message."""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
from typing import Any

from backstop.tasks.gx_worker import (
    _BATCH_ROWS,
    Expectation,
    Reply,
    Request,
    Validator,
    _receive,
    _send,
    enabled,
)


class _Pending:
    """A request waiting in the queue for whichever thread talks to the child next;
    pickled by its own thread, so that a value that cannot be sent fails there."""

    def __init__(self, request: Request) -> None:
        self.request = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self.rows = len(next(iter(request[0].values()), ()))
        self.reply: Reply | None = None
        self.orphaned = False  # its exchange was cut short: ask again


class ValidatorProcess:
    """The parent's handle on the child: started at once (the import runs while the
    caller goes on). Threads queue their requests; whichever holds the pipe sends all
    that wait (up to _BATCH_ROWS records) as one message, so that units finishing
    together share a validation (Validator.validate_many)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "backstop.tasks.gx_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lock = threading.Lock()  # the pipe: one exchange at a time
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._ready = False
        self.exchanges = 0  # messages sent, for the tests

    def validate(
        self, columns: dict[str, Any], expectations: list[Expectation]
    ) -> list[dict[str, Any]]:
        pending = _Pending((columns, expectations))
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if pending.reply is None and not pending.orphaned:
                if self.alive():
                    self._exchange(self._take_batch(pending))
                else:  # killed under an earlier exchange: every request waiting asks anew
                    with self._queue_lock:
                        waiting, self._queue = self._queue, []
                    for other in waiting:
                        other.orphaned = True
        if pending.orphaned:  # an exchange was cut short, or its process died
            return validator().validate(columns, expectations)
        if pending.reply is None:  # cannot happen: this thread's own batch holds it
            raise RuntimeError("data-quality validation: a request went unanswered")
        status, value = pending.reply
        if status != "ok":
            raise RuntimeError(f"data-quality validation failed: {value}")
        return value

    def _take_batch(self, own: _Pending) -> list[_Pending]:
        """This thread's own request, and others waiting behind it up to _BATCH_ROWS."""
        with self._queue_lock:
            self._queue.remove(own)
            batch, rows = [own], own.rows
            while self._queue and rows + self._queue[0].rows <= _BATCH_ROWS:
                rows += self._queue[0].rows
                batch.append(self._queue.pop(0))
            return batch

    def _exchange(self, batch: list[_Pending]) -> None:
        try:
            if not self._ready:
                _receive(self._process.stdout)
                self._ready = True
            self.exchanges += 1
            _send(self._process.stdin, ("validate", [p.request for p in batch]))
            replies = _receive(self._process.stdout)
        except (EOFError, OSError) as exc:
            failure = (
                f"the data-quality process ended unexpectedly (exit code "
                f"{self._process.poll()}): {exc}"
            )
            replies = [("error", failure)] * len(batch)
        except BaseException:
            # Cut short (a signal, a cancellation): its reply, or the rest of its
            # request, is still in a pipe, where the next request would take it for
            # its own. This child is done; validator() starts another, where the other
            # threads of this batch ask again.
            self._process.kill()
            self._process.wait()
            for other in batch:
                other.orphaned = True
            raise
        for other, reply in zip(batch, replies, strict=True):
            other.reply = reply

    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()


_shared: ValidatorProcess | Validator | None = None
_shared_lock = threading.Lock()


def validator() -> ValidatorProcess | Validator:
    """This process's validator: a child process (started on first use), or Great
    Expectations in this process when BACKSTOP_QUALITY_PROCESS=0."""
    global _shared
    with _shared_lock:
        if isinstance(_shared, ValidatorProcess) and not _shared.alive():
            _shared = None  # it died (killed, out of memory): start another
        if _shared is None:
            if enabled():
                _shared = ValidatorProcess()
                atexit.register(_shared.stop)
            else:
                _shared = Validator()
        return _shared
