"""Connections per database host, capped by a Prefect global concurrency limit.

Every shard task (a unit's backup, restore, target verification and target quality
check: the steps that hold connections for long) occupies slots of the limit of each
host its URL names while it works, one per connection it holds at once
(Driver.unit_connections: a PostgreSQL verification digests on the server while it
reads for the quality suite, two), so that however many flows run (hourly backups, a
restore, a drill, on any worker), no more connections than the limit's slots are open
to one database server at once. A unit needing more than a limit has occupies all of
it (then runs alone on that host).

- One limit per host, named by `host_limit_names` from the URL's host and port (no
  user, no password, no database), e.g. `backstop-host:db1.example.com:5432`. Two
  names for one server (localhost and 127.0.0.1, a DNS alias) are two limits: host
  names are compared as written, lowercased, with the scheme's default port filled in.
- Created on demand with BACKSTOP_HOST_CONNECTIONS slots (default 8: a flow's four
  task threads (BACKSTOP_WORKERS) each verifying a PostgreSQL or MariaDB shard on two
  connections, so one such flow alone is not slowed); an operator changes a
  host's slots, or switches it off (inactive), on the Prefect UI's Concurrency page,
  and backstop leaves an existing limit as it is. BACKSTOP_HOST_CONNECTIONS=0 switches
  the whole mechanism off (no limit is created or asked for).
- No deadlock: a task takes the slots of all its hosts in one request (the server
  grants all or none), and holds no slot while it waits for one.
- Slots are leases: released when the task ends (also on failure, or a stop by
  SIGTERM/SIGINT, which also ends the waiting), renewed while it works, and given back
  by the server within LEASE_S seconds of a process that died without releasing.

A file database (SQLite) or a URL without a network host has no limit.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import unquote

from backstop.drivers.contract import Driver
from backstop.drivers.errors import BackstopError, BadInputError, PermanentError, TransientError
from backstop.drivers.stop import STOP, check_stop

HOST_CONNECTIONS_ENV = "BACKSTOP_HOST_CONNECTIONS"
DEFAULT_HOST_CONNECTIONS = 8
LIMIT_PREFIX = "backstop-host:"
LEASE_S = 60.0  # the server's minimum lease; renewed at half of it while held
WAIT_STEP_S = 1.0  # longest sleep between two requests for busy slots

# Default ports, so that a URL with and one without the port name one limit.
_DEFAULT_PORTS = {
    "postgresql": 5432,
    "postgres": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "mongodb": 27017,
    "zk": 2181,
    "mssql": 1433,
    "oracle": 1521,
}
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>\d*))?\Z")

log = logging.getLogger(__name__)
_creating = threading.Lock()  # one creation at a time in this process (no 409 races)


def host_connections() -> int:
    """Slots of a host limit backstop creates; 0 switches the limits off."""
    raw = os.environ.get(HOST_CONNECTIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_HOST_CONNECTIONS
    if raw.lower() in ("off", "false", "no"):
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInputError(
            f"{HOST_CONNECTIONS_ENV} must be a number of connections per database host "
            f"(0 or off: no limit), got {raw!r}"
        )
    return value


def host_limit_names(urls: Sequence[str]) -> list[str]:
    """The global concurrency limits the connections to these URLs occupy: one per
    host:port, from the URL's authority only (no secret, stable across runs), sorted
    and without repeats. The one place limit names are made."""
    names = set()
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep:
            continue
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        backend = re.split(r"[+:]", scheme.lower(), maxsplit=1)[0]
        for address in authority.split(","):
            match = _HOST_PORT.match(address.strip())
            if match is None or not match["host"]:
                continue
            port = match["port"] or _DEFAULT_PORTS.get(backend)
            # Percent-decoded (libpq's %2F... names a socket folder), and what Prefect
            # refuses in a name (/ % & < >; an IPv6 zone's %) as _: such a name
            # failed every task.
            host = re.sub(r"[/%&<>]", "_", unquote(match["host"]).lower())
            names.add(f"{LIMIT_PREFIX}{host}:{port}" if port else f"{LIMIT_PREFIX}{host}")
    return sorted(names)


def connection_slots(driver: Driver, step: str, url: str) -> AbstractContextManager[None]:
    """The slots one unit's `step` occupies on `url`'s host (a resolved URL: a
    block:NAME names its host once loaded): as many as the driver's connections."""
    return host_slots([url], driver.unit_connections(step, url))


@contextmanager
def host_slots(urls: Sequence[str], connections: int = 1) -> Iterator[None]:
    """Hold `connections` slots of each host's limit while the block runs; no more
    than a limit has (a unit needing more than its host allows then runs alone there)."""
    slots = host_connections()
    names = host_limit_names(urls) if slots else []
    if not names:
        yield
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            with _creating:
                sizes = _create_missing(client, names, slots)
            occupy = max(1, min([connections, *sizes]))
            lease_id = _acquire(client, names, occupy)
    except BackstopError:
        raise
    except Exception as exc:
        # The Prefect API failed (a 5xx under load, a reset): the unit has not started,
        # so it is retried. Raised as backstop's own error: an httpx error does not
        # survive the pickling that carries a Dask worker's failure back to the flow.
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise TransientError(
            f"taking a connection slot of {', '.join(names)} from the Prefect API failed: "
            f"{type(exc).__name__}{f' {status}' if status else ''}"
        ) from None
    renewing = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lease_id, renewing), name=f"host-slots-{lease_id}", daemon=True
    )
    renewer.start()
    try:
        check_stop()  # a stop that came while waiting: no work starts
        yield
    finally:
        renewing.set()
        _release(lease_id)


def _create_missing(client: Any, names: list[str], slots: int) -> list[int]:
    """Create the limits that do not exist yet; the sizes of the active ones."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    sizes = []
    for name in names:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
                log.info("created the concurrency limit %s: %d connections", name, slots)
            except ObjectAlreadyExists:
                pass  # another process made it meanwhile
            sizes.append(slots)
            continue
        if limit.active:
            sizes.append(limit.limit)
    return sizes


def _acquire(client: Any, names: list[str], occupy: int) -> Any:
    """The lease on `occupy` slots of every limit, asked for all at once; waits
    (stoppably) while any of them is full."""
    import httpx
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    holder = (
        ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id)
        if context is not None
        else None
    )
    waited = False
    while True:
        check_stop()
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=names,
                slots=occupy,
                mode="concurrency",
                lease_duration=LEASE_S,
                holder=holder,
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 422:  # fewer slots than asked: never runs
                raise PermanentError(
                    f"the concurrency limit of {', '.join(names)} has no slots: give it some "
                    "on the Prefect UI's Concurrency page, or switch it off (inactive)"
                ) from None
            if exc.response.status_code != 423:
                raise
            if not waited:
                log.info("waiting for a free connection slot of %s", ", ".join(names))
                waited = True
            retry_after = float(exc.response.headers.get("Retry-After", WAIT_STEP_S))
            STOP.wait(min(max(retry_after, 0.1), WAIT_STEP_S))
            continue
        return response.json()["lease_id"]


def _renew(lease_id: str, done: threading.Event) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not done.wait(LEASE_S / 2):
            try:
                client.renew_concurrency_lease(lease_id=lease_id, lease_duration=LEASE_S)
            except Exception as exc:  # the next renewal may work; the work goes on
                log.warning("renewing connection slots lease %s failed: %s", lease_id, exc)


def _release(lease_id: str) -> None:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id=lease_id)
    except Exception as exc:  # the lease expires on its own within LEASE_S
        log.warning("releasing connection slots lease %s failed: %s", lease_id, exc)
