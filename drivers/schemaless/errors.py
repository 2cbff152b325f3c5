"""Which SQL errors are worth retrying."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from backstop.drivers.errors import BackstopError, ErrorKind

# SQLSTATE classes/codes (PostgreSQL and the SQL standard).
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"}
_TRANSIENT_SQLSTATE_CLASSES = {"08"}  # connection exceptions
# MySQL/MariaDB error numbers.
_TRANSIENT_MYSQL = {1205, 1213, 2002, 2003, 2006, 2013, 1040, 1053}
_SQLITE_TRANSIENT_TEXT = ("database is locked", "database table is locked", "disk i/o error")


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, BackstopError):
        return exc.kind
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return ErrorKind.TRANSIENT
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate:
            if sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
                return ErrorKind.TRANSIENT
            return ErrorKind.PERMANENT
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int):
            return ErrorKind.TRANSIENT if args[0] in _TRANSIENT_MYSQL else ErrorKind.PERMANENT
        text = str(orig).lower()
        if any(marker in text for marker in _SQLITE_TRANSIENT_TEXT):
            return ErrorKind.TRANSIENT
        if "authentication failed" in text or "no pg_hba.conf entry" in text:
            return ErrorKind.PERMANENT  # libpq says so while connecting, without a SQLSTATE
        # psycopg reports a refused or dropped connection without a SQLSTATE.
        if isinstance(exc, sa_exc.OperationalError) and "connect" in text:
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT
    if isinstance(exc, ConnectionError | TimeoutError):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT
