"""What every flow shares: the bounded task runner and waiting on mapped tasks."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

# Units (shards, collections) run concurrently, but never more than this many.
WORKERS = int(os.environ.get("BACKSTOP_WORKERS", "4"))


def task_runner() -> ThreadPoolTaskRunner:
    return ThreadPoolTaskRunner(max_workers=WORKERS)


def gather(futures: Sequence[PrefectFuture[Any]]) -> list[Any]:
    """Wait for all, then return results or raise the first failure.

    Waiting for every future first matters: a failed backup is cleaned up only once
    no other unit can still be writing into it.
    """
    wait(list(futures))
    return [future.result() for future in futures]


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self._start, 3)
