"""A SQL server that accepts the connection but never answers (a hung server, a
forwarder whose other side is gone) must fail the connection after a bounded time,
not hold a restore's pre-flight (before Prefect even starts), a backup or a restore
for ever: psycopg waits without end unless given a connect timeout."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError

from backstop.drivers.schemaless import engines


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and says nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    done.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize("make_engine", [engines.source_engine, engines.target_engine])
def test_a_postgresql_server_that_never_answers_fails_the_connection(
    silent_port, monkeypatch, make_engine
):
    monkeypatch.setenv("BACKSTOP_SQL_CONNECT_TIMEOUT", "2")
    url = f"postgresql+psycopg://backstop@127.0.0.1:{silent_port}/cells"
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            with engines.connection(make_engine(url)):
                pass
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(120)  # far beyond the 2 s asked for: only a connection without end
    assert not thread.is_alive(), "the connection to a silent server never ended"
    assert len(outcome) == 1 and isinstance(outcome[0], OperationalError)
    assert "timeout" in str(outcome[0]).lower()
