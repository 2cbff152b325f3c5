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
    """The child's loop: ("validate", columns, expectations) -> ("ok", outcomes) or
    ("error", text); EOF ends it."""
    try:
        validator = Validator()
    except BaseException as exc:  # reported on the first request
        validator, failure = None, f"{type(exc).__name__}: {exc}"
    _send(replies, ("ready", None))
    while True:
        try:
            _, columns, expectations = _receive(requests)
        except EOFError:
            return
        if validator is None:
            _send(replies, ("error", f"Great Expectations could not start: {failure}"))
            continue
        try:
            _send(replies, ("ok", validator.validate(columns, expectations)))
        except Exception as exc:
            _send(replies, ("error", f"{type(exc).__name__}: {exc}"))


# -- the parent ---------------------------------------------------------------------------
class ValidatorProcess:
    """The parent's handle on the child: started at once (the import runs while the
    caller goes on), used by one thread at a time."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "backstop.tasks.gx_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lock = threading.Lock()
        self._ready = False

    def validate(
        self, columns: dict[str, Any], expectations: list[Expectation]
    ) -> list[dict[str, Any]]:
        with self._lock:
            try:
                if not self._ready:
                    _receive(self._process.stdout)
                    self._ready = True
                _send(self._process.stdin, ("validate", columns, expectations))
                status, value = _receive(self._process.stdout)
            except (EOFError, OSError) as exc:
                raise RuntimeError(
                    f"the data-quality process ended unexpectedly (exit code "
                    f"{self._process.poll()}): {exc}"
                ) from exc
            except BaseException:
                # Cut short (a signal, a cancellation): its reply, or the rest of its
                # request, is still in a pipe, where the next request would take it for
                # its own. This child is done; validator() starts another.
                self._process.kill()
                self._process.wait()
                raise
        if status != "ok":
            raise RuntimeError(f"data-quality validation failed: {value}")
        return value

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
