"""What every flow shares: the bounded task runner and waiting on mapped tasks, both
aware of stopping (backstop.flows.signals, backstop.drivers.stop)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
from typing import Any

from prefect import Task, unmapped
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.collections import isiterable

from backstop.drivers.errors import PermanentError
from backstop.drivers.stop import STOP, check_stop
from backstop.flows.signals import STOP_GRACE_S
from backstop.flows.startup import (
    DASK_ADDRESS_ENV,
    DASK_WORKERS_ENV,
    IN_FLIGHT_ENV,
    RUNNER_ENV,
    UNITS_PER_TASK_ENV,
    count_from_env,
)

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


def runner_threads() -> int:
    """The threads that run this flow's units: BACKSTOP_WORKERS, or every Dask worker's
    threads. The Dask client is made on first use, not at the runner's start: asked
    for here, so that the first units are sized for the cluster too."""
    threads = WORKERS
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if runner is not None and hasattr(type(runner), "client"):  # prefect-dask's runner
        with contextlib.suppress(Exception):  # a scheduler that cannot say: the local figure
            threads = max(threads, sum(runner.client.nthreads().values()))
    return threads


def in_flight() -> int:
    """How many task runs are submitted at once: twice the threads that run them, so
    that none waits for work (BACKSTOP_IN_FLIGHT overrides).

    Not all of them: each submitted run holds its parameters and Prefect's serialized
    context (the flow's parameters included) until it finishes, and under Dask its
    result until its future is released. Submitted all at once, 1,024 shards held
    0.4 GB in the flow's process and 1.3 GB more in the workers (docs/scale.md)."""
    override = count_from_env(IN_FLIGHT_ENV)
    return override if override is not None else 2 * runner_threads()


def per_task(count: int) -> int:
    """How many of `count` units a pack task runs in one task run (tasks/packs.py):
    enough that a task run's own cost is shared when the units are thousands, while
    every thread still gets 8 task runs or more to balance the units' sizes; at most 16,
    one alone for a few units (BACKSTOP_UNITS_PER_TASK overrides)."""
    override = count_from_env(UNITS_PER_TASK_ENV)
    if override is not None:
        return override
    return max(1, min(16, count // (8 * runner_threads())))


def run_each(task: Task[..., Any], *args: Any, packs_of: int | None = None) -> list[Any]:
    """`task.map(*args)`, waited for: every unit's result, in order, or the first
    failure (in order) once every unit has finished.

    `packs_of`: `task` is a pack task (tasks/packs.py), given each mapped argument as a
    list of up to that many units and returning one result per unit.

    Waiting for every unit first matters: a failed backup is cleaned up only once no
    other unit can still be writing into it. A failure does not stop the other units
    (a resumed backup keeps what they stored). At most `in_flight()` task runs are
    submitted at a time, and each result is taken as its run finishes and the future
    dropped, so the flow holds as much per unit as the results themselves. Interrupted
    (a signal), the units are told to stop and given STOP_GRACE_S to do so before the
    cleanup runs; no further unit starts.
    """
    # As task.map does: an iterable is mapped (not a string), anything else passed whole.
    args = tuple(a if isinstance(a, unmapped) or isiterable(a) else unmapped(a) for a in args)
    args = tuple(a if isinstance(a, unmapped) else list(a) for a in args)
    mapped = [len(a) for a in args if not isinstance(a, unmapped)]
    count = mapped[0] if mapped else 0
    if any(n != count for n in mapped):
        raise ValueError(f"mapped arguments differ in length: {mapped}")
    size = packs_of or 1
    calls = [(start, min(start + size, count)) for start in range(0, count, size)]

    def call(start: int, end: int) -> list[Any]:
        if packs_of is None:
            return [a.value if isinstance(a, unmapped) else a[start] for a in args]
        return [a.value if isinstance(a, unmapped) else a[start:end] for a in args]

    pending: dict[int, PrefectFuture[Any]] = {}
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(calls)
    finishing = threading.Event()  # set by each run's done-callback
    lock = threading.Lock()
    slots = threading.Semaphore(in_flight())
    halt = threading.Event()  # the flow was interrupted: submit nothing more
    submitted: list[int] = []
    submit_failed: list[BaseException] = []

    def submit_all() -> None:
        """Submit every call, a window at a time. In a thread of its own: a signal or
        Prefect's timeout interrupts the flow's thread only, never a submit halfway
        (a unit queued but not yet recorded would run on unwaited-for)."""
        for index, (start, end) in enumerate(calls):
            while not slots.acquire(timeout=0.5):
                if halt.is_set():
                    return
            if halt.is_set() or STOP.is_set():
                return
            try:
                future = task.submit(*call(start, end))
            except BaseException as exc:  # the flow's own error, raised once all finish
                submit_failed.append(exc)
                return
            with lock:
                pending[index] = future
                submitted.append(index)
            future.add_done_callback(lambda _: finishing.set())

    def take_finished() -> None:
        """Wait for a run to finish (a second at most), then record every finished one.
        A run leaves `pending` only once its outcome is recorded: an interruption
        arriving meanwhile (a signal, Prefect's timeout) leaves it there to wait for."""
        finishing.wait(timeout=1.0)
        finishing.clear()  # a run finishing after this is seen by this scan or the next
        with lock:
            finished = [(i, f) for i, f in pending.items() if _finished(f)]
        for index, future in finished:
            outcomes[index] = _outcome(future)
            with lock:
                del pending[index]
            slots.release()

    def still_running() -> list[int]:
        with lock:
            return [i for i, future in pending.items() if not _finished(future)]

    submitter = threading.Thread(
        target=contextvars.copy_context().run, args=(submit_all,), name="backstop-submit"
    )
    submitter.start()
    try:
        while submitter.is_alive() or pending:
            take_finished()
    except BaseException as exc:
        halt.set()
        submitter.join()  # at most one submit away: it is never interrupted
        signalled = STOP.is_set()  # a signal sets STOP before it raises
        STOP.set()
        deadline = time.monotonic() + STOP_GRACE_S
        while still_running() and time.monotonic() < deadline:
            finishing.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            finishing.clear()
        if isinstance(exc, asyncio.CancelledError) and not signalled and not still_running():
            # The flow's timeout (Prefect raises it as a cancellation in the flow):
            # these units have stopped, but the run's cleanup still has work to do (a
            # rollback restores the targets' safety backup), which a set STOP would
            # stop at its first block as if the process had been told to exit.
            STOP.clear()
        raise
    if submit_failed:  # every submitted unit has finished (the loop above)
        raise submit_failed[0]
    if len(submitted) < len(calls):
        check_stop()  # stopped before every unit started: the run fails as stopped
    results: list[Any] = []
    for ok, value in outcomes:
        if not ok:
            raise value
        results.extend(value if packs_of is not None else [value])
    return results


def _finished(future: PrefectFuture[Any]) -> bool:
    wrapped = getattr(future, "wrapped_future", None)  # a thread's or Dask's future
    if wrapped is not None:
        return wrapped.done()
    return future.state.is_final()


def _outcome(future: PrefectFuture[Any]) -> tuple[bool, Any]:
    """(succeeded, result or exception) of a finished run. Whatever its future raises is
    the run's own failure (the engine's, Dask's KilledWorker, a cancelled future), kept
    as the unit's outcome; only an interruption of this flow (a BaseException that is
    not a cancelled future) propagates."""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and wrapped.cancelled():
        return False, PermanentError("the unit's task run was cancelled by its runner")
    try:
        value = future.result(raise_on_failure=False)
    except Exception as exc:
        return False, exc
    return not isinstance(value, BaseException), value


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self._start, 3)
