"""Retries driven by the driver's error classification, never blind ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.cache_policies import NO_CACHE

from backstop.drivers.contract import Driver
from backstop.drivers.errors import (
    BackstopError,
    ErrorKind,
    PermanentError,
    TransientError,
    is_transient,
)


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
