"""`run_each`, the flows' way to run a task once per unit: every unit runs even when
one fails, the first failure in order is raised once all have finished, and no more
than a window of units is submitted at a time, so that what a runner holds per
submitted unit (Prefect's context, under Dask the result too) does not grow with the
number of units (issue 15: 1,024 shards on Dask held 1.7 GB more than one)."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from backstop.drivers.errors import PermanentError, TransientError
from backstop.drivers.stop import STOP, check_stop
from backstop.flows.runtime import StoppableTaskRunner, in_flight, per_task, run_each
from backstop.tasks.packs import each_in_pack
from backstop.tasks.retry import retry_on_transient

pytestmark = pytest.mark.integration

_ran: list[int] = []
_lock = threading.Lock()


@task(cache_policy=NO_CACHE)
def scheduler_holds(index: int) -> int:
    """How many tasks the Dask scheduler holds while this one runs."""
    from distributed import get_client

    return get_client().run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


@task(cache_policy=NO_CACHE)
def fails_on(index: int, failing: list[int]) -> int:
    with _lock:
        _ran.append(index)
    if index in failing:
        raise RuntimeError(f"unit {index} failed")
    return index * 10


def test_the_dask_scheduler_holds_a_window_of_units_not_all_of_them(monkeypatch):
    monkeypatch.setenv("BACKSTOP_IN_FLIGHT", "3")
    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": False},
    )

    @flow(task_runner=runner)
    def fan_out() -> list[int]:
        return run_each(scheduler_holds, list(range(30)))

    held = fan_out()
    assert len(held) == 30
    # 3 in flight, plus a finished one or two whose release is still on its way.
    assert max(held) <= 6, held


def test_every_unit_runs_and_the_first_failure_in_order_is_raised(monkeypatch):
    monkeypatch.setenv("BACKSTOP_IN_FLIGHT", "2")
    _ran.clear()

    @flow(task_runner=StoppableTaskRunner(max_workers=2))
    def fan_out(failing: list[int]) -> list[int]:
        return run_each(fails_on, list(range(12)), unmapped(failing))

    assert fan_out([]) == [i * 10 for i in range(12)]
    _ran.clear()
    with pytest.raises(RuntimeError, match="unit 4 failed"):
        fan_out([9, 4])
    assert sorted(_ran) == list(range(12))  # the units after a failure ran too


@task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
def pack_of(units: list[int], transient: int, permanent: int) -> list[object]:
    def run_one(index: int) -> int:
        unit = units[index]
        with _lock:
            _ran.append(unit)
        if unit == transient:
            raise TransientError(f"unit {unit}: connection reset")
        if unit == permanent:
            raise PermanentError(f"unit {unit}: no such table")
        return unit * 10

    return each_in_pack("test", [str(u) for u in units], run_one)


def test_a_pack_runs_again_only_its_transient_failure_and_returns_it_when_retries_end(caplog):
    _ran.clear()

    @flow(task_runner=StoppableTaskRunner(max_workers=2))
    def fan_out(transient: int, permanent: int) -> list[int]:
        return run_each(pack_of, list(range(8)), unmapped(transient), unmapped(permanent),
                        packs_of=4)  # fmt: skip

    assert fan_out(-1, -1) == [u * 10 for u in range(8)]
    _ran.clear()
    # Unit 6 fails transiently on all 3 attempts, unit 5 for good on the first: the
    # retries run unit 6 alone, and its pack's task run fails with the first failure in
    # the units' order.
    with pytest.raises(PermanentError, match="unit 5"):
        fan_out(6, 5)
    assert sorted(_ran) == [0, 1, 2, 3, 4, 5, 6, 6, 6, 7], _ran
    # Only the first failure is raised; each is logged where it happened.
    failed = [r.getMessage() for r in caplog.records if " failed" in r.getMessage()]
    assert sum(m.startswith("5 failed: PermanentError") for m in failed) == 1, failed
    assert sum(m.startswith("6 failed (retried): TransientError") for m in failed) == 2, failed
    assert sum(m.startswith("6 failed: TransientError") for m in failed) == 1, failed
    _ran.clear()
    with pytest.raises(TransientError, match="unit 6"):
        fan_out(6, -1)
    assert sorted(_ran) == [0, 1, 2, 3, 4, 5, 6, 6, 6, 7], _ran


def test_units_are_sized_for_the_dask_cluster_from_the_first_units(monkeypatch):
    """prefect-dask makes its client on the first submit: the first units of a flow
    (nothing is submitted before them) were sized for BACKSTOP_WORKERS' 4 threads."""
    monkeypatch.delenv("BACKSTOP_IN_FLIGHT", raising=False)
    monkeypatch.delenv("BACKSTOP_UNITS_PER_TASK", raising=False)
    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 6, "processes": False},
    )

    @flow(task_runner=runner)
    def sizes() -> tuple[int, int]:
        return in_flight(), per_task(1024)

    assert sizes() == (24, 10)  # 12 threads: 2 x 12 in flight; 1,024 // (8 x 12)


def test_the_window_does_not_size_the_packs(monkeypatch):
    monkeypatch.setenv("BACKSTOP_IN_FLIGHT", "1")
    monkeypatch.delenv("BACKSTOP_UNITS_PER_TASK", raising=False)

    @flow(task_runner=StoppableTaskRunner(max_workers=4))
    def sizes() -> tuple[int, int, int]:
        return in_flight(), per_task(1024), per_task(3)

    assert sizes() == (1, 16, 1)


@task(cache_policy=NO_CACHE)
def blocks(index: int) -> int:
    for _ in range(30):  # 3 s of blocks, stopping at the first after STOP
        check_stop()
        time.sleep(0.1)
    return index


def test_a_flow_timeout_stops_the_units_and_leaves_stop_clear_for_the_cleanup():
    """The timeout of a flow inside another (the safety backup inside a restore, a drill's
    backup) arrives from Prefect's watcher thread, when the flow's thread next runs
    Python: it must not cost the flow a finished unit's record, which left STOP set
    and stopped the rollback at its first block (issue 13's symptom)."""
    seen: dict[str, object] = {}

    @flow(task_runner=StoppableTaskRunner(max_workers=2), timeout_seconds=1)
    def inner() -> None:
        try:
            run_each(blocks, [0, 1])
        except BaseException as exc:
            seen["raised"], seen["stop_set"] = type(exc).__name__, STOP.is_set()
            raise

    @flow(timeout_seconds=120)
    def outer() -> None:  # holds the alarm: the inner timeout comes from a thread
        try:
            inner()
        except BaseException as exc:
            seen["outer_saw"] = type(exc).__name__

    STOP.clear()
    try:
        outer()
    finally:
        STOP.clear()
    assert seen["raised"] == "CancelledError", seen
    assert seen["stop_set"] is False, "STOP left set: the cleanup would be stopped"


def test_a_run_failing_outside_its_task_fails_that_unit_alone(monkeypatch):
    """The engine itself can fail a run (the API down while it sets the run's state): its
    future raises instead of holding a Failed state. That is the unit's outcome, not an
    interruption of the flow: every other unit still runs, and the error is raised once
    they all have."""
    import prefect.task_engine as engine

    original = engine.run_task_sync

    def failing_for_unit_0(*args, **kwargs):
        if kwargs["parameters"].get("index") == 0:
            raise RuntimeError("engine: the API answered 503 while setting Running")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "run_task_sync", failing_for_unit_0)
    monkeypatch.setenv("BACKSTOP_IN_FLIGHT", "2")
    _ran.clear()

    @flow(task_runner=StoppableTaskRunner(max_workers=2))
    def fan_out() -> list[int]:
        return run_each(fails_on, list(range(6)), unmapped([]))

    STOP.clear()
    with pytest.raises(RuntimeError, match="503"):
        fan_out()
    assert sorted(_ran) == [1, 2, 3, 4, 5]  # every other unit ran to its end
    assert not STOP.is_set()
