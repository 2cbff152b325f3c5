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

Great Expectations holds the bounds of ExpectColumnValuesToBeBetween as floats, which
past 2**53 cannot tell one integer from the next: 2**53 + 1 passed `max_value=2**53`.
Integer columns against integer bounds are judged with integer arithmetic there
(tasks/gx_exact.py), alone and grouped.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
import threading
from collections import OrderedDict
from typing import IO, Any

from backstop.tasks.gx_exact import BOUNDS as _BOUNDS
from backstop.tasks.gx_exact import SAMPLE, exactly

Expectation = tuple[str, dict[str, Any]]  # ("ExpectColumnValuesToNotBeNull", {"column": ...})
_LENGTH = struct.Struct(">Q")

_SUITES_KEPT = 256  # suites kept built (Validator._suite)
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
        self._suites: OrderedDict[str, Any] = OrderedDict()
        self._built = 0
        self._suites_lock = threading.Lock()
        self.passed_together = 0  # requests whose verdicts one validation gave (tests)
        self._lock = threading.Lock()  # GX contexts are not made for concurrent use

    def _suite(self, expectations: list[Expectation]) -> Any:
        """The suite of these expectations, built once while it is in use: each shard's
        bounds (its watermark) make a suite of their own, so the cache keeps the
        _SUITES_KEPT most recently used, and memory stays flat in the shards."""
        return self._built_suite(expectations)[0]

    def _built_suite(self, expectations: list[Expectation]) -> tuple[Any, list[Any]]:
        """(suite, each expectation as Great Expectations holds it)."""
        key = repr(expectations)
        with self._suites_lock:  # threads share it when validating in their own process
            if key in self._suites:
                self._suites.move_to_end(key)
                return self._suites[key]
            self._built += 1
            suite = self._gx.ExpectationSuite(name=f"backstop-{self._built}")
            forms = []
            for name, kwargs in expectations:
                expectation = getattr(self._gx.expectations, name)(**kwargs)
                forms.append((expectation.expectation_type, _kwargs(expectation.configuration)))
                suite.add_expectation(expectation)
            self._suites[key] = (suite, forms)
            while len(self._suites) > _SUITES_KEPT:
                self._suites.popitem(last=False)
            return suite, forms

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
        return self._judged(columns, expectations, [_outcome(o) for o in result.results])

    def _judged(
        self,
        columns: dict[str, Any],
        expectations: list[Expectation],
        outcomes: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Great Expectations' outcomes, each of ExpectColumnValuesToBeBetween for the
        rules as asked (tasks/gx_exact.py). Its bounds are floats: of two rules whose bounds are
        one float it kept one, and both are reported, each judged on its own bounds."""
        forms = self._built_suite(expectations)[1]
        judged: list[dict[str, Any]] = []
        for outcome in outcomes:
            form = (outcome["type"], outcome["kwargs"])
            asked = [
                kwargs
                for (name, kwargs), each in zip(expectations, forms, strict=True)
                if name == _BETWEEN and each == form
            ]
            if not asked:
                judged.append(outcome)
            for kwargs in asked:
                one = exactly(outcome, kwargs, columns.get(kwargs.get("column")))
                if one not in judged:  # the same rule twice: once, as GX reports it
                    judged.append(one)
        return judged

    def validate_many(self, requests: list[Request]) -> list[Reply]:
        """Several requests' verdicts, each as if validated alone. Requests of one shape
        (the same columns with the same dtypes, and the same rules; the bounds of
        ExpectColumnValuesToBeBetween may differ) are validated together first: Great
        Expectations costs ~50 ms a call whatever the rows, which made it the queue
        every small shard waited in. All of them pass, or each is validated alone for
        its own counts and samples. Only what provably passes together exactly when
        each passes alone is grouped (_shape); anything else is validated alone, and so
        is a message of one request (nothing to group it with: no _shape)."""
        if len(requests) == 1:
            return [self._alone(requests[0])]
        replies: list[Reply | None] = [None] * len(requests)
        shapes: dict[Any, list[int]] = {}
        for index, (columns, expectations) in enumerate(requests):
            try:
                shape = _shape(columns, expectations)
            except Exception:  # e.g. a bound too large for a float: judged alone, by GX
                shape = object()
            shapes.setdefault(shape, []).append(index)
        for members in shapes.values():
            if len(members) > 1:
                together = self._together([requests[i] for i in members])
                if together is not None:
                    self.passed_together += len(members)
                    for i, outcomes in zip(members, together, strict=True):
                        replies[i] = ("ok", outcomes)
                    continue
            for i in members:
                replies[i] = self._alone(requests[i])
        return [r for r in replies if r is not None]

    def _alone(self, request: Request) -> Reply:
        try:
            return ("ok", self.validate(*request))
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}")

    def _together(self, group: list[Request]) -> list[list[dict[str, Any]]] | None:
        """Every request's outcomes, when one validation of their records together
        passes; None when it does not (or any doubt: an error). A bound that differs
        between them becomes a column (each row's own bound) checked by a pair rule; a
        request without that bound gets each row's own value, which always passes.
        Integers past a float's reach are judged first, each request on its own bounds
        (tasks/gx_exact.py): one that fails there is not grouped."""
        import pandas as pd

        first = group[0][1]
        differs = {
            e
            for e, (name, kwargs) in enumerate(first)
            if name == _BETWEEN and any(other[e][1] != kwargs for _, other in group[1:])
        }
        taken = set(group[0][0])
        helper = {(e, side): f"__backstop_{side}_{e}" for e in differs for side in _BOUNDS}
        if taken & set(helper.values()):
            return None
        try:
            judged = [
                self._judged(columns, expectations, self._passed(expectations))
                for columns, expectations in group
            ]
            if not all(o["success"] for outcomes in judged for o in outcomes):
                return None
            frames = []
            for columns, expectations in group:
                frame = pd.DataFrame(columns)
                for e in differs:
                    kwargs = expectations[e][1]
                    values = frame[kwargs["column"]]
                    for side in _BOUNDS:
                        bound = kwargs.get(side)
                        frame[helper[e, side]] = values if bound is None else bound
                frames.append(frame)
            combined = pd.concat(frames, ignore_index=True)
            if any(
                combined[c].dtype != frames[0][c].dtype for c in taken
            ):  # concat changed a column's type: not the values each was judged on
                return None
            suite: list[Expectation] = []
            for e, (name, kwargs) in enumerate(first):
                if e not in differs:
                    suite.append((name, kwargs))
                    continue
                column = kwargs["column"]
                for a, b in ((column, helper[e, "min_value"]), (helper[e, "max_value"], column)):
                    suite.append(("ExpectColumnPairValuesAToBeGreaterThanB", {
                        "column_A": a, "column_B": b, "or_equal": True,
                        "ignore_row_if": "either_value_is_missing",
                    }))  # fmt: skip
            with self._lock:
                batch = self._batch.get_batch(batch_parameters={"dataframe": combined})
                result = batch.validate(
                    self._suite(suite), result_format={"result_format": "BOOLEAN_ONLY"}
                )
            if not (result.success and all(o.success for o in result.results)):
                return None
            return judged
        except Exception:
            return None

    def _passed(self, expectations: list[Expectation]) -> list[dict[str, Any]]:
        """The outcomes of a suite that passed, as its own validation reports them."""
        return [
            {
                "type": expectation.expectation_type,
                "kwargs": _kwargs(expectation.configuration),
                "success": True,
                "unexpected_count": 0,
                "sample": [],
            }
            for expectation in self._suite(expectations).expectations
        ]


Request = tuple[dict[str, Any], list[Expectation]]  # a chunk's columns and its rules
Reply = tuple[str, Any]  # ("ok", outcomes) or ("error", text)
_BETWEEN = "ExpectColumnValuesToBeBetween"
# Rules that judge each record alone, so that records pass together iff each passes,
# with the arguments they may have to be grouped (no `mostly`, no strict bounds).
_ROW_WISE = {
    "ExpectColumnValuesToNotBeNull": {"column"},
    "ExpectColumnValuesToMatchRegex": {"column", "regex"},
    _BETWEEN: {"column", *_BOUNDS},
}


def _shape(columns: dict[str, Any], expectations: list[Expectation]) -> Any:
    """What requests validated together share: the columns, each with one dtype and
    rows, and the rules, bounds of Between aside. A request that cannot be grouped
    safely is a shape of its own: other rules or arguments, a column a rule names that
    is missing, a bound that is not a finite number, or min above max (alone, GX
    refuses those; together, rows would be skipped)."""
    import math

    import pandas as pd

    alone = object()
    if not expectations:
        return alone
    for name, kwargs in expectations:
        if name not in _ROW_WISE or not set(kwargs) <= _ROW_WISE[name]:
            return alone
        if kwargs.get("column") not in columns:
            return alone
        if name == _BETWEEN:
            bounds = [kwargs.get(side) for side in _BOUNDS]
            for bound in bounds:
                if bound is not None and (
                    isinstance(bound, bool)
                    or not isinstance(bound, int | float)
                    or not math.isfinite(bound)
                ):
                    return alone
            if None not in bounds and bounds[0] > bounds[1]:
                return alone
    try:
        frame = pd.DataFrame(columns)
    except Exception:
        return alone
    if not len(frame):
        return alone
    dtypes = tuple(sorted((str(c), str(frame[c].dtype)) for c in frame.columns))
    for column in frame.columns:
        # Python objects compare and print as their own types do: only text (and
        # nulls, which every rule skips) is grouped.
        if frame[column].dtype == object and not all(
            v is None or isinstance(v, str) for v in frame[column]
        ):
            return alone
    rules = tuple(
        (name, repr(sorted((k, v) for k, v in kwargs.items()
                           if name != _BETWEEN or k not in _BOUNDS)))
        for name, kwargs in expectations
    )  # fmt: skip
    return dtypes, rules


def _kwargs(config: Any) -> dict[str, Any]:
    """An expectation's arguments as Great Expectations holds them (bounds as floats)."""
    return {k: v for k, v in config.kwargs.items() if k != "batch_id"}


def _outcome(outcome: Any) -> dict[str, Any]:
    config = outcome.expectation_config
    found = outcome.result or {}
    return {
        "type": config.type,
        "kwargs": _kwargs(config),
        "success": bool(outcome.success),
        "unexpected_count": found.get("unexpected_count"),
        "sample": [str(v)[:80] for v in (found.get("partial_unexpected_list") or [])[:SAMPLE]],
    }


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: ("validate", [pickled (columns, expectations), ...]) -> one
    reply per request, ("ok", outcomes) or ("error", text); EOF ends it."""
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
        _send(replies, _answer(validator, batch))


def _answer(validator: Validator, batch: list[bytes]) -> list[Reply]:
    """One reply per pickled request: a request that cannot be read, or that breaks
    the grouping, gets its own error and leaves the others' verdicts alone."""
    answers: list[Reply | None] = [None] * len(batch)
    asked: list[tuple[int, Request]] = []
    for index, each in enumerate(batch):
        try:
            asked.append((index, pickle.loads(each)))  # pickled by our parent
        except Exception as exc:
            answers[index] = ("error", f"{type(exc).__name__}: {exc}")
    try:
        verdicts = validator.validate_many([request for _, request in asked])
    except Exception as exc:  # validate_many answers each; this is a last belt
        verdicts = [("error", f"{type(exc).__name__}: {exc}")] * len(asked)
    for (index, _), verdict in zip(asked, verdicts, strict=True):
        answers[index] = verdict
    return [a for a in answers if a is not None]


# -- the parent ---------------------------------------------------------------------------
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
