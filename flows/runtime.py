"""What every flow shares: the bounded task runner and waiting on mapped tasks, both
aware of stopping (backstop.flows.signals, backstop.drivers.stop)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from backstop.drivers.stop import STOP
from backstop.flows.signals import STOP_GRACE_S
from backstop.flows.startup import DASK_ADDRESS_ENV, DASK_WORKERS_ENV, RUNNER_ENV

# Units (shards, collections) run concurrently, but never more than this many.
WORKERS = int(os.environ.get("BACKSTOP_WORKERS", "4"))


class StoppableTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread pool, except that a flow interrupted by a signal does not wait
    for its units on the way out: they stop at their next block (STOP), and one stuck
    in a blocking call must not keep the process alive."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            STOP.set()  # a signal (KeyboardInterrupt, Prefect's TerminationSignal)
        executor = getattr(self, "_executor", None)
        if STOP.is_set() and executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)




def task_runner() -> Any:
    """The units' runner, chosen where the flow runs (an env var: a deployment's job
    variable, or the CLI's --runner): this process's threads, or Dask workers through
    prefect-dask (docs/scale.md)."""
    kind = os.environ.get(RUNNER_ENV, "threads").strip().lower() or "threads"
    if kind == "threads":
        return StoppableTaskRunner(max_workers=WORKERS)
    if kind != "dask":
        raise ValueError(f"{RUNNER_ENV} must be threads or dask, not {kind!r}")
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(DASK_ADDRESS_ENV, "").strip()
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get(DASK_WORKERS_ENV, "2"))
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": WORKERS, "processes": True},
    )


def gather(futures: Sequence[PrefectFuture[Any]]) -> list[Any]:
    """Wait for all, then return results or raise the first failure.

    Waiting for every future first matters: a failed backup is cleaned up only once
    no other unit can still be writing into it. Interrupted (a signal), the units are
    told to stop and given STOP_GRACE_S to do so before the cleanup runs.
    """
    try:
        wait(list(futures))
    except BaseException as exc:
        signalled = STOP.is_set()  # a signal sets STOP before it raises
        STOP.set()
        _, pending = wait(list(futures), timeout=STOP_GRACE_S)
        if isinstance(exc, asyncio.CancelledError) and not signalled and not pending:
            # The flow's timeout (Prefect raises it as a cancellation in the flow):
            # these units have stopped, but the run's cleanup still has work to do (a
            # rollback restores the targets' safety backup), which a set STOP would
            # stop at its first block as if the process had been told to exit.
            STOP.clear()
        raise
    return [future.result() for future in futures]


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self._start, 3)
