"""Retries driven by the driver's error classification, never blind ones."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect.cache_policies import NO_CACHE

from backstop.drivers.contract import Driver
from backstop.drivers.errors import (
    BackstopError,
    ErrorKind,
    PermanentError,
    TransientError,
    is_transient,
)

T = TypeVar("T")
U = TypeVar("U")


def _delays() -> list[float]:
    raw = os.environ.get("BACKSTOP_RETRY_DELAYS", "2,5,15")
    return [float(x) for x in raw.split(",") if x.strip()]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry only what the driver called transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


# Options for every task that talks to a database or the store.
RETRYING: dict[str, Any] = {
    "retries": int(os.environ.get("BACKSTOP_RETRIES", "3")),
    "retry_delay_seconds": _delays(),
    "retry_condition_fn": retry_on_transient,
    "cache_policy": NO_CACHE,
}


@contextmanager
def classified(driver: Driver, what: str) -> Iterator[None]:
    """Turn a client library's exception into TransientError or PermanentError.

    The original exception is not chained: its text may hold connection details,
    and tracebacks are logged. Its type and masked message are kept.
    """
    try:
        yield
    except BackstopError as exc:
        exc.args = (f"{what}: {exc}",)  # same error, now naming the unit or step
        raise
    except Exception as exc:
        kind = driver.classify(exc)
        error = TransientError if kind is ErrorKind.TRANSIENT else PermanentError
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise error(f"{what}: {type(exc).__name__}: {detail}") from None


# What a task run's attempt finished, kept for the run's retries: the first step of a
# task that runs two (a snapshot then its read-back, a load then its verification), so
# that a transient failure of the second retries that step alone, and the units of a
# pack that finished (tasks/packs.py), so that a retry runs only those that failed.
# Running them again would be safe but not free: a snapshot writes its files again, a
# load re-run after its commit counts its cells as skipped. Kept in this process only:
# a task that Dask re-runs on another worker (its worker died) runs again in full.
# A task run that ends for good drops its entries (forget_run); one stopped or re-run
# elsewhere leaves them, evicted oldest first past _KEPT_MAX (a retry that finds none
# runs the step again, which is idempotent).
_KEPT: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_KEPT_MAX = 4096
_KEPT_LOCK = threading.Lock()


def _attempt(step: str, unit: str) -> tuple[tuple[str, str, str] | None, bool]:
    """(this task run's key for `step` of `unit`, whether this is a retry). The key is
    the run's own id as Prefect's engine holds it (not prefect.runtime, which an
    environment variable overrides), with the unit and the step: a task function called
    inside another task's run never finds that run's entries."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        return None, False
    return (str(context.task_run.id), unit, step), context.task_run.run_count > 1


def recall(step: str, unit: str) -> tuple[bool, Any]:
    """(found, what) an earlier attempt of this task run remembered; never on a first
    attempt."""
    key, retry = _attempt(step, unit)
    if retry:
        with _KEPT_LOCK:
            if key in _KEPT:
                return True, _KEPT[key]
    return False, None


def remember(step: str, unit: str, value: Any) -> None:
    key, _ = _attempt(step, unit)
    if key is not None:
        with _KEPT_LOCK:
            _KEPT[key] = value
            while len(_KEPT) > _KEPT_MAX:
                _KEPT.popitem(last=False)


def forget(step: str, units: Sequence[str]) -> None:
    """The task run has returned: what it remembered is no longer needed."""
    keys = [_attempt(step, unit)[0] for unit in units]
    with _KEPT_LOCK:
        for key in keys:
            _KEPT.pop(key, None)


def forget_run() -> None:
    """This task run has ended for good (returned, or failed with no retry left): all
    it remembered goes, the first steps of units whose second step failed included."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        return
    run = str(context.task_run.id)
    with _KEPT_LOCK:
        for key in [k for k in _KEPT if k[0] == run]:
            del _KEPT[key]


def two_steps(
    step: str, unit: str, first: Callable[[], T], second: Callable[[T], U]
) -> tuple[T, float, U]:
    """`first()`, then `second(its result)`, in one task run: (first's result, when it
    finished (epoch seconds, to time the flow's phases), second's result). A retry of
    the run after `second` failed reuses first's result."""
    found, done = recall(step, unit)
    if not found:
        done = (first(), time.time())
        remember(step, unit, done)
    result, finished = done
    after = second(result)
    forget(step, [unit])
    return result, finished, after
