"""Connecting with pymongo, and what its errors mean."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo import errors as pm

from backstop.drivers.errors import BackstopError, ErrorKind, PermanentError
from backstop.drivers.redact import register_secret

TIMEOUT_MS = int(float(os.environ.get("BACKSTOP_MONGO_TIMEOUT", "15")) * 1000)
_PERMANENT_CODES = {
    18: "authentication failed (check the user and password)",
    13: "not authorized for this operation",
    11000: "duplicate key: a document with the same _id already exists in the target",
    10334: "document too large",
}


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, BackstopError):
        return exc.kind
    if isinstance(exc, pm.DocumentTooLarge):
        return ErrorKind.PERMANENT
    if isinstance(exc, pm.AutoReconnect | pm.ExecutionTimeout | pm.WTimeoutError):
        return ErrorKind.TRANSIENT  # includes NotPrimaryError, NetworkTimeout, selection timeouts
    if isinstance(exc, pm.OperationFailure) and exc.code in (91, 189, 11600, 11602, 10107, 13435):
        return ErrorKind.TRANSIENT  # shutdown in progress, stepdown, not primary
    if isinstance(exc, ConnectionError | TimeoutError):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def explain(exc: pm.OperationFailure, where: str) -> PermanentError:
    code = exc.code or (exc.details or {}).get("code")
    message = _PERMANENT_CODES.get(code)
    if message is None:
        errors = (exc.details or {}).get("writeErrors") or []
        if errors and errors[0].get("code") in _PERMANENT_CODES:
            message = _PERMANENT_CODES[errors[0]["code"]]
    return PermanentError(f"{where}: {message or str(exc).splitlines()[0]}")


@contextmanager
def connect(url: str) -> Iterator[MongoClient]:
    """A client that hands documents over as raw BSON, closed afterwards."""
    from pymongo.uri_parser import parse_uri

    register_secret(parse_uri(url).get("password"))
    client: MongoClient = MongoClient(
        url,
        document_class=RawBSONDocument,
        serverSelectionTimeoutMS=TIMEOUT_MS,
        connectTimeoutMS=TIMEOUT_MS,
        uuidRepresentation="unspecified",
    )
    try:
        yield client
    finally:
        client.close()


def deployment_identity(url: str) -> str:
    """Which deployment a URL reaches (Driver.identity), as the servers name it: `hello`
    names a replica set and its members; a standalone server (FerretDB included) is the
    process its serverStatus names (host name, process, pid), since one server answers
    at many addresses (127.0.0.2, an alias, another interface). Only where serverStatus
    is not allowed, its resolved address."""
    import hashlib

    from pymongo.uri_parser import parse_uri

    from backstop.drivers.identity import canonical_host

    with connect(url) as client:
        hello = client.admin.command("hello")
        status = None if hello.get("setName") else _server_status(client)
    set_name = hello.get("setName")
    if set_name:
        members = sorted(str(h).lower() for h in hello.get("hosts", []))
        digest = hashlib.sha256("\n".join([set_name, *members]).encode()).hexdigest()[:20]
        return f"replset-{digest}"
    if status:
        return "server-" + hashlib.sha256(repr(status).encode()).hexdigest()[:20]
    seeds = sorted({canonical_host(host, port) for host, port in parse_uri(url)["nodelist"]})
    return ",".join(seeds)


def _server_status(client: Any) -> tuple[str, str, int] | None:
    """(host name, process, pid) from serverStatus, or None where it is not allowed."""
    try:
        status = client.admin.command("serverStatus")
    except pm.OperationFailure:
        return None
    if not status.get("host") or not status.get("pid"):
        return None
    return (str(status["host"]).lower(), str(status.get("process", "")), int(status["pid"]))
