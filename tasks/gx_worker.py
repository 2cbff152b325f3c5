"""Great Expectations in a process of its own.

Importing Great Expectations takes ~6 s of CPU on the 2-core machines measured (it
pulls in scipy, altair and SQLAlchemy) and validating a 50,000-record chunk ~0.8 s,
all under the GIL of whichever process does it. In a process of its own, the import
overlaps Prefect's import and the flow's start, and the validation of one chunk
overlaps the reading and packaging of the next: the suite runs on the second core.

The protocol is pickle over the child's stdin/stdout, one request at a time: the
expectations as (class name, keyword arguments) pairs and the chunk's columns; back
come plain dicts per expectation. Only backstop's own process talks to the child.
BACKSTOP_QUALITY_PROCESS=0 validates in the calling process instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any

Expectation = tuple[str, dict[str, Any]]  # ("ExpectColumnValuesToNotBeNull", {"column": ...})
_LENGTH = struct.Struct(">Q")
_SAMPLE = 20  # unexpected values sent back per expectation
_BATCH_ROWS = 50_000  # records sent in one message at most (unless one request is more)


def enabled() -> bool:
    return os.environ.get("BACKSTOP_QUALITY_PROCESS", "1").strip().lower() not in ("0", "false")


# -- both sides ---------------------------------------------------------------------------
def _send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _LENGTH.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(data)


# -- the child ----------------------------------------------------------------------------
class Validator:
    """An ephemeral Great Expectations context (no project folder) validating column
    chunks against lists of expectations; usable in any process."""

    def __init__(self) -> None:
        import logging

        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self._gx = gx
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("backstop")
        self._batch = source.add_dataframe_asset("records").add_batch_definition_whole_dataframe(
            "chunk"
        )
        self._suites: dict[str, Any] = {}
        self.passed_together = 0  # requests whose verdicts one validation gave (tests)
        self._lock = threading.Lock()  # GX contexts are not made for concurrent use

    def _suite(self, expectations: list[Expectation]) -> Any:
        key = repr(expectations)
        if key not in self._suites:
            suite = self._gx.ExpectationSuite(name=f"backstop-{len(self._suites)}")
            for name, kwargs in expectations:
                suite.add_expectation(getattr(self._gx.expectations, name)(**kwargs))
            self._suites[key] = suite
        return self._suites[key]

    def validate(
        self, columns: dict[str, Any], expectations: list[Expectation]
    ) -> list[dict[str, Any]]:
        import pandas as pd

        if not expectations:
            return []
        with self._lock:
            batch = self._batch.get_batch(batch_parameters={"dataframe": pd.DataFrame(columns)})
            result = batch.validate(
                self._suite(expectations), result_format={"result_format": "SUMMARY"}
            )
        return [_outcome(o) for o in result.results]

    def validate_many(self, requests: list[Request]) -> list[Reply]:
        """Several requests' verdicts, each as if validated alone. Requests of one shape
        (the same columns and rules; the bounds of ExpectColumnValuesToBeBetween may
        differ) are validated together first: Great Expectations costs ~50 ms a call
        whatever the rows, which made it the queue every small shard waited in. All of
        them pass, or each is validated alone for its own counts and samples."""
        replies: list[Reply | None] = [None] * len(requests)
        shapes: dict[Any, list[int]] = {}
        for index, (columns, expectations) in enumerate(requests):
            shapes.setdefault(_shape(columns, expectations), []).append(index)
        for members in shapes.values():
            if len(members) > 1 and self._all_pass([requests[i] for i in members]):
                self.passed_together += len(members)
                for i in members:
                    replies[i] = ("ok", self._passed(requests[i][1]))
                continue
            for i in members:
                try:
                    replies[i] = ("ok", self.validate(*requests[i]))
                except Exception as exc:
                    replies[i] = ("error", f"{type(exc).__name__}: {exc}")
        return [r for r in replies if r is not None]

    def _all_pass(self, group: list[Request]) -> bool:
        """Whether every request of one shape passes, asked in one validation of their
        records together. A bound that differs between them becomes a column (each
        row's own bound) checked by a pair rule; a request without that bound gets each
        row's own value, which always passes. Any doubt (an error) is a no."""
        import pandas as pd

        first = group[0][1]
        differs = {
            e
            for e, (name, kwargs) in enumerate(first)
            if name == _BETWEEN and any(other[e][1] != kwargs for _, other in group[1:])
        }
        try:
            frames = []
            for columns, expectations in group:
                frame = pd.DataFrame(columns)
                for e in differs:
                    kwargs = expectations[e][1]
                    values = frame[kwargs["column"]]
                    for side in ("min_value", "max_value"):
                        bound = kwargs.get(side)
                        frame[f"__{side}_{e}"] = values if bound is None else bound
                frames.append(frame)
            combined = pd.concat(frames, ignore_index=True)
            suite: list[Expectation] = []
            for e, (name, kwargs) in enumerate(first):
                if e not in differs:
                    suite.append((name, kwargs))
                    continue
                column = kwargs["column"]
                for a, b, strict in (
                    (column, f"__min_value_{e}", kwargs.get("strict_min")),
                    (f"__max_value_{e}", column, kwargs.get("strict_max")),
                ):
                    suite.append(("ExpectColumnPairValuesAToBeGreaterThanB", {
                        "column_A": a, "column_B": b, "or_equal": not strict,
                        "ignore_row_if": "either_value_is_missing",
                    }))  # fmt: skip
            with self._lock:
                batch = self._batch.get_batch(batch_parameters={"dataframe": combined})
                result = batch.validate(
                    self._suite(suite), result_format={"result_format": "BOOLEAN_ONLY"}
                )
            return bool(result.success) and all(o.success for o in result.results)
        except Exception:
            return False

    def _passed(self, expectations: list[Expectation]) -> list[dict[str, Any]]:
        """The outcomes of a suite that passed, as its own validation reports them."""
        return [
            {
                "type": expectation.expectation_type,
                "kwargs": {
                    k: v for k, v in expectation.configuration.kwargs.items() if k != "batch_id"
                },
                "success": True,
                "unexpected_count": 0,
                "sample": [],
            }
            for expectation in self._suite(expectations).expectations
        ]


Request = tuple[dict[str, Any], list[Expectation]]  # a chunk's columns and its rules
Reply = tuple[str, Any]  # ("ok", outcomes) or ("error", text)
_BETWEEN = "ExpectColumnValuesToBeBetween"
# Rules that judge each record alone, so that records pass together iff each passes.
_ROW_WISE = {"ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToMatchRegex", _BETWEEN}


def _shape(columns: dict[str, Any], expectations: list[Expectation]) -> Any:
    """What requests validated together share: the columns and the rules, bounds of
    Between aside. A request with other rules (or none) is its own shape."""
    if not expectations or any(name not in _ROW_WISE for name, _ in expectations):
        return object()
    rules = tuple(
        (name, repr(sorted((k, v) for k, v in kwargs.items()
                           if name != _BETWEEN or k not in ("min_value", "max_value"))))
        for name, kwargs in expectations
    )  # fmt: skip
    return tuple(sorted(columns)), rules


def _outcome(outcome: Any) -> dict[str, Any]:
    config = outcome.expectation_config
    found = outcome.result or {}
    return {
        "type": config.type,
        "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
        "success": bool(outcome.success),
        "unexpected_count": found.get("unexpected_count"),
        "sample": [str(v)[:80] for v in (found.get("partial_unexpected_list") or [])[:_SAMPLE]],
    }


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: ("validate", [(columns, expectations), ...]) -> one reply per
    request, ("ok", outcomes) or ("error", text); EOF ends it."""
    try:
        validator = Validator()
    except BaseException as exc:  # reported on the first request
        validator, failure = None, f"{type(exc).__name__}: {exc}"
    _send(replies, ("ready", None))
    while True:
        try:
            _, batch = _receive(requests)
        except EOFError:
            return
        if validator is None:
            _send(
                replies, [("error", f"Great Expectations could not start: {failure}")] * len(batch)
            )
            continue
        _send(replies, validator.validate_many(batch))


# -- the parent ---------------------------------------------------------------------------
class _Pending:
    """A request waiting in the queue for whichever thread talks to the child next."""

    def __init__(self, request: Request) -> None:
        self.request = request
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
                    self._exchange(self._take_batch())
                else:  # killed under an earlier exchange: every request waiting asks anew
                    for other in self._take_batch():
                        other.orphaned = True
        if pending.orphaned:  # another thread's exchange was cut short, not this one
            return validator().validate(columns, expectations)
        assert pending.reply is not None  # answered by this exchange or an earlier one
        status, value = pending.reply
        if status != "ok":
            raise RuntimeError(f"data-quality validation failed: {value}")
        return value

    def _take_batch(self) -> list[_Pending]:
        with self._queue_lock:
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].rows <= _BATCH_ROWS):
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


def main() -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent decides, and closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go through a private copy of stdout: a library printing must not
    # corrupt the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError):  # the command ended first: nothing to say
        serve(sys.stdin.buffer, replies)
    # Done: end without the interpreter's teardown of Great Expectations, pandas and
    # scipy, which took ~1.8 s on 2 cores while the command waited for this process
    # before it could exit (flows/startup.py exit_now skips the same for the parent).
    for stream in (replies, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
