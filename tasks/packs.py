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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from backstop.drivers.errors import is_transient
from backstop.drivers.stop import check_stop
from backstop.tasks.retry import forget_run, recall, remember

T = TypeVar("T")


@dataclass(frozen=True)
class UnitFailed:
    """A unit of a pack that failed, remembered for the task run's retries."""

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


def each_in_pack(step: str, names: Sequence[str], run_one: Callable[[int], T]) -> list[T]:
    """`run_one(i)` for each unit of the pack, in order: their results.

    Every unit has its turn whatever the others do. Then a transient failure is raised,
    so that Prefect retries the task run; the retry runs only the units that failed
    transiently (what finished, or failed for good, is remembered for the run's
    retries). With none left to retry, the first failure in the units' order is raised:
    the task run fails, as a unit's own would, and the flow fails with it; a resumable
    backup keeps every unit that was stored (its records are in the store). Each unit's
    failure is logged as it happens. A stop (SIGTERM) ends the pack."""
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
                _say_failed(name, exc)
            if isinstance(outcome, UnitFailed) and is_transient(outcome.error):
                transient = transient or outcome.error
            else:
                remember(step, name, outcome)
        outcomes.append(outcome)
    if transient is not None and not _last_attempt():
        raise transient  # Prefect retries the run (retry_on_transient)
    forget_run()
    failed = [o for o in outcomes if isinstance(o, UnitFailed)]
    if failed:  # the task run fails, as a unit's own would (each failure was logged)
        raise failed[0].error
    return outcomes


def _say_failed(name: str, error: BaseException) -> None:
    """Every unit's failure is logged where it happens, with the unit's name: the task
    run fails with the first one only (in the units' order). The message is the
    classified one (tasks/retry.py classified), no connection detail."""
    try:
        from prefect import get_run_logger

        logger = get_run_logger()
    except Exception:  # called outside a task run (a test, a script)
        logger = logging.getLogger("backstop")
    retried = is_transient(error) and not _last_attempt()
    logger.error("%s failed%s: %s: %s", name, " (retried)" if retried else "",
                 type(error).__name__, error)  # fmt: skip
