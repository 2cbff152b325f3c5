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
