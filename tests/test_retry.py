"""Task retries follow the driver's error classification, through real Prefect runs."""

from __future__ import annotations

import pytest
from prefect import flow, task

from backstop.drivers.errors import PermanentError, TransientError
from backstop.drivers.schemaless import SchemalessDriver
from backstop.tasks.retry import RETRYING, classified


def make_flow(error: Exception, fail_times: int):
    attempts = {"n": 0}

    @task(**RETRYING)
    def flaky() -> int:
        attempts["n"] += 1
        if attempts["n"] <= fail_times:
            raise error
        return attempts["n"]

    @flow
    def run() -> int:
        return flaky()

    return run, attempts


def test_transient_errors_are_retried_until_success():
    run, attempts = make_flow(TransientError("connection reset"), fail_times=2)
    assert run() == 3
    assert attempts["n"] == 3


def test_permanent_errors_fail_at_once():
    run, attempts = make_flow(PermanentError("authentication failed"), fail_times=5)
    with pytest.raises(PermanentError, match="authentication failed"):
        run()
    assert attempts["n"] == 1


def test_transient_errors_give_up_after_the_retry_budget():
    run, attempts = make_flow(TransientError("still down"), fail_times=99)
    with pytest.raises(TransientError):
        run()
    assert attempts["n"] == RETRYING["retries"] + 1


def test_sqlite_lock_is_transient_and_missing_table_permanent(tmp_path):
    import sqlite3

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    driver = SchemalessDriver()
    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
    with pytest.raises(TransientError, match="locked"), classified(driver, "reading"):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT * FROM t")).all()
        except OperationalError:
            raise
    holder.execute("ROLLBACK")
    with (
        pytest.raises(PermanentError, match="no such table"),
        classified(driver, "reading"),
        engine.connect() as conn,
    ):
        conn.execute(text("SELECT * FROM missing")).all()


def test_a_first_step_is_reused_by_its_own_unit_on_a_retry_only(monkeypatch):
    """A task of two steps (tasks/retry.py two_steps): on a retry of its run, the first
    step's result is reused, never run again; and it belongs to that run and unit alone.
    A unit that failed for good leaves its entry: the next run, with Prefect's runtime
    id forced to one value by its environment variable, still takes its own."""
    from backstop.tasks.retry import two_steps

    monkeypatch.setenv("PREFECT__RUNTIME__TASK_RUN__ID", "00000000-0000-0000-0000-000000000000")
    ran: list[str] = []
    second_step = {"shard-X": [PermanentError("read-back: the stored bytes differ")],
                   "shard-A": [TransientError("read-back: connection reset")]}  # fmt: skip

    @task(**RETRYING)
    def snapshot_and_read_back(unit: str) -> str:
        def read_back(snapshot: str) -> str:
            if second_step.get(unit):
                raise second_step[unit].pop()
            return f"{snapshot}, read back"

        # One unit name for all: as a task called inside another task's run would see.
        *_, checked = two_steps(
            "snapshot", "shard", lambda: ran.append(unit) or f"snapshot of {unit}", read_back
        )
        return checked

    @flow
    def run() -> list[object]:
        units = ("shard-X", "shard-A", "shard-B")
        return [snapshot_and_read_back(u, return_state=True) for u in units]

    failed, *states = run()
    assert failed.is_failed()
    assert [s.result() for s in states] == [
        "snapshot of shard-A, read back",
        "snapshot of shard-B, read back",
    ]
    assert ran == ["shard-X", "shard-A", "shard-B"]  # shard-A's snapshot once, across its retry
    outside = two_steps("snapshot", "shard", lambda: "outside any task", lambda first: first)
    assert outside[0] == outside[2] == "outside any task"
