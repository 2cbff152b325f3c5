"""Connecting to ZooKeeper with kazoo, and what its errors mean."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from kazoo import exceptions as kz
from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from backstop.drivers.errors import ErrorKind, PermanentError, TransientError
from backstop.drivers.identity import canonical_host
from backstop.drivers.redact import redact_url, register_secret
from backstop.drivers.zookeeper.paths import ZkUrl, parse_zk_url
from backstop.drivers.zookeeper.wire import ReadSession

CONNECT_TIMEOUT_S = float(os.environ.get("BACKSTOP_ZK_CONNECT_TIMEOUT", "15"))

_TRANSIENT = (
    kz.ConnectionLoss,
    kz.SessionExpiredError,
    kz.OperationTimeoutError,
    kz.ConnectionClosedError,
    KazooTimeoutError,
    ConnectionError,
    TimeoutError,
)
_PERMANENT_MESSAGES = {
    kz.NoAuthError: "not authorized (the node's ACL denies these credentials)",
    kz.AuthFailedError: "authentication failed (check the digest credentials)",
    kz.InvalidACLError: "invalid ACL",
}


def classify(exc: BaseException) -> ErrorKind:
    """Connection trouble is transient; everything else (auth, ACLs, formats) permanent."""
    if isinstance(exc, TransientError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, _TRANSIENT):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def explain(exc: BaseException, path: str | None = None) -> Exception:
    """A permanent kazoo error as a PermanentError with a message an operator can act on."""
    for cls, message in _PERMANENT_MESSAGES.items():
        if isinstance(exc, cls):
            where = f" at {path}" if path else ""
            return PermanentError(f"ZooKeeper {message}{where}")
    return exc  # type: ignore[return-value]


@contextmanager
def connect(url: str, *, chroot_must_exist: bool = True) -> Iterator[KazooClient]:
    """A started client for a zk:// URL (chroot applied, digest auth added), stopped after."""
    parsed = parse_zk_url(url)
    register_secret(parsed.password)
    auth = []
    if parsed.username is not None:
        auth.append(("digest", f"{parsed.username}:{parsed.password or ''}"))
    client = KazooClient(
        hosts=parsed.connect_string,
        auth_data=auth,
        timeout=10.0,
        connection_retry=KazooRetry(max_tries=3, delay=0.2, max_delay=2),
        command_retry=KazooRetry(max_tries=3, delay=0.2, max_delay=2),
        logger=logging.getLogger("backstop.zookeeper.kazoo"),
    )
    try:
        client.start(timeout=CONNECT_TIMEOUT_S)
    except KazooTimeoutError:
        client.close()
        raise TransientError(f"ZooKeeper at {redact_url(url)} is unreachable") from None
    except kz.AuthFailedError:
        client.close()
        raise PermanentError(f"ZooKeeper at {redact_url(url)}: authentication failed") from None
    try:
        if chroot_must_exist and parsed.chroot and client.exists("/") is None:
            raise PermanentError(f"chroot {parsed.chroot} does not exist on {parsed.hosts}")
        yield client
    finally:
        client.stop()
        client.close()


@contextmanager
def reader(url: str) -> Iterator[ReadSession]:
    """A lean read session for a zk:// URL (chroot applied, digest auth added)."""
    with readers(url, 1) as [session]:
        yield session


@contextmanager
def readers(url: str, count: int) -> Iterator[list[ReadSession]]:
    """`count` lean read sessions for a zk:// URL, closed afterwards."""
    parsed = parse_zk_url(url)
    register_secret(parsed.password)
    auth = []
    if parsed.username is not None:
        auth.append(("digest", f"{parsed.username}:{parsed.password or ''}"))
    sessions: list[ReadSession] = []
    try:
        for _ in range(count):
            session = ReadSession(parsed.hosts, parsed.chroot, auth, timeout_s=CONNECT_TIMEOUT_S)
            try:
                session.open()
            except OSError as exc:
                raise TransientError(
                    f"ZooKeeper at {redact_url(url)} is unreachable ({exc})"
                ) from None
            sessions.append(session)
        if parsed.chroot and next(iter(sessions[0].stats(["/"])))[1] is None:
            raise PermanentError(f"chroot {parsed.chroot} does not exist on {parsed.hosts}")
        yield sessions
    finally:
        for session in sessions:
            session.close()


def ensemble_identity(parsed: ZkUrl) -> str:
    """Which ensemble a URL's hosts reach, however they are spelled: the members of its
    dynamic configuration (`/zookeeper/config`, the same text from every member) when
    it has any, else the resolved addresses of the hosts (a standalone server)."""
    with connect(f"zk://{parsed.hosts}") as client:
        try:
            config, _ = client.get("/zookeeper/config")
        except (kz.NoNodeError, kz.NoAuthError):  # before 3.5, or the config is not ours to read
            config = b""
    members = sorted(
        line.strip()
        for line in config.decode("utf-8", "replace").splitlines()
        if line.startswith("server.")
    )
    if members:
        return "ensemble-" + hashlib.sha256("\n".join(members).encode()).hexdigest()[:20]
    hosts = []
    for host in parsed.hosts.split(","):
        name, _, port = host.rpartition(":")
        hosts.append(canonical_host(name.strip("[]"), int(port)))
    return ",".join(sorted(set(hosts)))


def same_ensemble(hosts_a: str, hosts_b: str) -> bool:
    """Whether two host lists reach one ensemble, asked of the servers themselves: a
    session opened through the first is resumed through the second. Sessions are
    ensemble-wide, so one ensemble resumes it and another answers that it expired,
    whatever addresses either is known by (a standalone server has no member list to
    compare). Nothing is written; the probe's session is closed."""
    first = KazooClient(hosts=hosts_a, timeout=10.0, logger=_PROBE_LOG)
    try:
        first.start(timeout=CONNECT_TIMEOUT_S)
    except KazooTimeoutError:
        first.close()
        raise TransientError(f"ZooKeeper at {hosts_a} is unreachable") from None
    session = first.client_id
    second = KazooClient(hosts=hosts_b, timeout=10.0, client_id=session, logger=_PROBE_LOG)
    expired = threading.Event()
    second.add_listener(lambda state: expired.set() if state == KazooState.LOST else None)
    try:
        connected = second.start_async()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not (connected.is_set() or expired.is_set()) and time.monotonic() < deadline:
            time.sleep(0.02)
        if expired.is_set():
            return False
        if not connected.is_set():  # no answer is no proof of being elsewhere
            raise TransientError(
                f"could not tell whether {hosts_a} and {hosts_b} are one ensemble: "
                f"{hosts_b} did not answer"
            )
        return second.client_id is not None and second.client_id[0] == session[0]
    finally:
        for client in (second, first):
            client.stop()
            client.close()


_PROBE_LOG = logging.getLogger("backstop.zookeeper.probe")
