"""Several small units in one task run: a pack.

A task run costs the Prefect server and the flow's process about 0.1 s of CPU whatever
its unit holds (docs/scale.md), which is most of the work for a small shard. With
thousands of shards, the flow gives each task run a pack of units (runtime.per_task)
and the units of a pack run one after the other, each as it would alone: its own
connection slots, progress line, log figures and resume record. What a pack must not
change is failure: one unit's failure does not fail the others, and a transient one
is retried by Prefect (retry_on_transient) without running again what already
finished, in this task run's retries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from backstop.drivers.errors import is_transient
from backstop.drivers.stop import check_stop
from backstop.tasks.retry import forget, recall, remember

T = TypeVar("T")


@dataclass(frozen=True)
class UnitFailed:
    """A unit of a pack that failed: raised by the flow, in the units' order, once every
    unit has finished (runtime.run_each)."""

    error: BaseException


def pack_run_name(verb: str) -> Callable[[], str]:
    """A pack's task-run name in the Prefect UI: `backup-shard-0007` for a unit alone,
    `backup-shard-0000..shard-0015 (16 units)` for a pack."""

    def name() -> str:
        from prefect.runtime import task_run

        names = [u.name for u in task_run.parameters["units"]]
        if len(names) == 1:
            return f"{verb}-{names[0]}"
        return f"{verb}-{names[0]}..{names[-1]} ({len(names)} units)"

    return name


def _last_attempt() -> bool:
    """Whether Prefect will not retry this task run again after this attempt."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        return True
    return context.task_run.run_count > (context.task.retries or 0)


def each_in_pack(step: str, names: Sequence[str], run_one: Callable[[int], T]) -> list[T | UnitFailed]:
    """`run_one(i)` for each unit of the pack, in order: its result, or UnitFailed.

    A transient failure is raised once every unit has had its turn, so that Prefect
    retries the task run; the retry runs only the units that failed transiently (what
    finished, or failed for good, is remembered for the run's retries). On the last
    attempt it is returned as UnitFailed like any other. A stop (SIGTERM) ends the pack."""
    outcomes: list[Any] = []
    transient: BaseException | None = None
    for index, name in enumerate(names):
        found, outcome = recall(step, name)
        if not found:
            check_stop()
            try:
                outcome = run_one(index)
            except Exception as exc:  # the other units still run
                outcome = UnitFailed(exc)
            if isinstance(outcome, UnitFailed) and is_transient(outcome.error):
                transient = transient or outcome.error
            else:
                remember(step, name, outcome)
        outcomes.append(outcome)
    if transient is not None and not _last_attempt():
        raise transient
    forget(step, names)
    return outcomes
