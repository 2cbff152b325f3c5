"""What differs between the SQL engines a Schemaless shard can live in.

Everything else in the driver is dialect-neutral SQLAlchemy; the differences are
how to open a consistent read transaction, how to skip existing rows, and how to
keep an auto-increment counter ahead of explicitly inserted ids.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from sqlalchemy import (
    CHAR,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import LONGBLOB
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from backstop.drivers.errors import BadInputError, PermanentError
from backstop.drivers.files import create_private_file
from backstop.drivers.redact import redact_url
from backstop.drivers.schemaless.cells import COLUMN_LIST, Cell, datetime_text, from_micros
from backstop.drivers.schemaless.mysql_load import (
    LiteralInserter,
    LoadDataStreamer,
    local_infile_enabled,
)


def cell_table(name: str, metadata: MetaData | None = None) -> Table:
    """The cell table of DESIGN.md, portable across SQLite, PostgreSQL and MariaDB."""
    return Table(
        name,
        metadata or MetaData(),
        # SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
        Column(
            "added_id",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("row_key", CHAR(36), nullable=False),
        Column("column_name", String(64), nullable=False),
        Column("ref_key", BigInteger, nullable=False),
        Column("body", LargeBinary().with_variant(LONGBLOB, "mysql", "mariadb"), nullable=False),
        # MySQL/MariaDB DATETIME keeps whole seconds unless told otherwise.
        Column(
            "created_at",
            DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
        UniqueConstraint("row_key", "column_name", "ref_key"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BadInputError(f"{redact_url(url)!r}: a shard must be a SQLite file, not in-memory")
    return Path(database)


def _sqlite_engine(path: Path, *, read_only: bool) -> Engine:
    mode = "ro" if read_only else "rwc"

    def connect() -> sqlite3.Connection:
        if not read_only:
            _create_private_database(path)
        # isolation_level=None: we issue BEGIN ourselves so that the watermark and the
        # cells are read in one transaction (pysqlite would otherwise not BEGIN for
        # SELECTs at all).
        return sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode={mode}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
        )

    # "sqlite://" alone would pick SingletonThreadPool; shards are read from worker threads.
    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _create_private_database(path: Path) -> None:
    """A restored database is as private as a backup: create the file 0600 before
    SQLite does (an empty file is an empty database; SQLite gives its journal and WAL
    files the database file's mode)."""
    with contextlib.suppress(FileExistsError):  # an existing target keeps its mode
        os.close(create_private_file(path, exclusive=True))


# Seconds to open a connection to PostgreSQL or MySQL/MariaDB. Without it psycopg waits
# for ever on a server that accepts the connection and never answers (a hung server, a
# forwarder whose other side is gone): a restore's pre-flight, before Prefect starts,
# and every task after it hung with it. A URL's own ?connect_timeout= wins.
CONNECT_TIMEOUT_ENV = "BACKSTOP_SQL_CONNECT_TIMEOUT"


def _connect_args(url: str | URL, **args: object) -> dict[str, object]:
    if "connect_timeout" not in make_url(url).query:
        seconds = float(os.environ.get(CONNECT_TIMEOUT_ENV, "30"))
        args["connect_timeout"] = max(2, round(seconds))  # libpq's least is 2 s
    return args


def _fastest_mysql_driver(url: str) -> str | URL:
    """MySQL/MariaDB through mysqlclient (C) when it is installed, whichever driver the
    URL names: PyMySQL parses and escapes in Python, several times slower per cell.
    The URL's credentials and options are kept."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        return url
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        return url
    return parsed.set(drivername=f"{parsed.get_backend_name()}+mysqldb")


def source_engine(url: str) -> Engine:
    """An engine for reading a shard; never creates anything."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        if not path.is_file():
            raise PermanentError(f"SQLite database file {str(path)!r} does not exist")
        return _sqlite_engine(path, read_only=True)
    if backend == "postgresql":
        return create_engine(
            url,
            isolation_level="REPEATABLE READ",
            execution_options={"postgresql_readonly": True},
            pool_pre_ping=True,
            connect_args=_connect_args(url),
        )
    if backend in ("mysql", "mariadb"):
        engine = create_engine(
            _fastest_mysql_driver(url),
            isolation_level="REPEATABLE READ",
            pool_pre_ping=True,
            connect_args=_connect_args(url),
        )

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")

        return engine
    raise BadInputError(f"{redact_url(url)!r}: unsupported SQL backend {backend!r}")


def target_engine(url: str) -> Engine:
    """An engine for writing a shard; a SQLite file is created if its folder exists."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        if not path.parent.is_dir():
            raise BadInputError(f"target folder {str(path.parent)!r} does not exist")
        return _sqlite_engine(path, read_only=False)
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
    if backend in ("mysql", "mariadb"):
        # mysql_load streams through LOAD DATA LOCAL INFILE, which the client must allow;
        # the target server is trusted with it as it is with the data restored into it.
        return create_engine(
            _fastest_mysql_driver(url),
            pool_pre_ping=True,
            connect_args=_connect_args(url, local_infile=1),
        )
    raise BadInputError(f"{redact_url(url)!r}: unsupported SQL backend {backend!r}")


@contextmanager
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction, rolled back unless committed; the engine disposed."""
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    finally:
        engine.dispose()


def placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def insert_statement(conn: Connection, table: str, *, skip_existing: bool) -> str:
    """A parameterized single-cell INSERT for SQLite and PostgreSQL (MySQL/MariaDB load
    through mysql_load)."""
    quoted = conn.dialect.identifier_preparer.quote(table)
    values = ", ".join([placeholder(conn)] * 6)
    if not skip_existing:
        return f"INSERT INTO {quoted} ({COLUMN_LIST}) VALUES ({values})"
    if conn.dialect.name == "sqlite":
        return f"INSERT OR IGNORE INTO {quoted} ({COLUMN_LIST}) VALUES ({values})"
    return f"INSERT INTO {quoted} ({COLUMN_LIST}) VALUES ({values}) ON CONFLICT DO NOTHING"


class CellWriter(Protocol):
    """Writes batches of cells into one table; `inserted` is final once closed."""

    inserted: int

    def write(self, batch: list[Cell]) -> None: ...

    def close(self, *, failed: bool) -> None: ...


@contextmanager
def cell_writer(conn: Connection, table: str, *, skip_existing: bool) -> Iterator[CellWriter]:
    """A writer of cells into `table`; how many it inserted is known once the block
    ends (in merge mode the rest existed already).

    PostgreSQL loads through one binary COPY for the whole table and MySQL/MariaDB
    through one LOAD DATA stream (both several times faster than INSERTs); merge mode
    on PostgreSQL, and SQLite, insert in batches.
    """
    if conn.dialect.name == "postgresql" and not skip_existing:
        from psycopg import sql

        raw = conn.connection.driver_connection  # psycopg, inside the same transaction
        # psycopg quotes the name itself: COPY runs without parameters, so the
        # %-escaping SQLAlchemy's quoting adds for psycopg would stay in the name.
        command = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(COLUMN_LIST)
        )
        with raw.cursor() as cursor, cursor.copy(command) as copy:
            copy.set_types(["int8", "text", "text", "int8", "bytea", "timestamp"])
            yield _CopyWriter(copy)
        return
    writer: CellWriter
    # Statements below run through SQLAlchemy's exec_driver_sql, which always passes
    # parameters to the DB-API: the quoted name's %-escaping is what they expect.
    quoted = conn.dialect.identifier_preparer.quote(table)
    if conn.dialect.name in ("mysql", "mariadb"):
        # A merge looks up the target between batches (driver._FreshIds), which the
        # connection cannot answer while one LOAD DATA statement streams on it.
        streams = not skip_existing and local_infile_enabled(conn)
        kind = LoadDataStreamer if streams else LiteralInserter
        writer = kind(conn, quoted, skip_existing=skip_existing)
    else:
        writer = _InsertWriter(conn, insert_statement(conn, table, skip_existing=skip_existing))
    try:
        yield writer
    except BaseException:
        writer.close(failed=True)
        raise
    writer.close(failed=False)


class _CopyWriter:
    def __init__(self, copy) -> None:
        self._write_row = copy.write_row
        self.inserted = 0

    def write(self, batch: list[Cell]) -> None:
        write_row = self._write_row
        for added_id, rk, col, ref, body, micros in batch:
            write_row((added_id, rk, col, ref, body, from_micros(micros)))
        self.inserted += len(batch)

    def close(self, *, failed: bool) -> None:
        """COPY ends with its block."""


class _InsertWriter:
    def __init__(self, conn: Connection, statement: str) -> None:
        self._conn = conn
        self._statement = statement
        self._stamp = timestamp_converter(conn)
        self.inserted = 0

    def write(self, batch: list[Cell]) -> None:
        stamp = self._stamp
        params = [
            (added_id, rk, col, ref, body, stamp(micros))
            for added_id, rk, col, ref, body, micros in batch
        ]
        result = self._conn.exec_driver_sql(self._statement, params)
        self.inserted += result.rowcount if result.rowcount >= 0 else len(batch)

    def close(self, *, failed: bool) -> None:
        """Every batch is written when `write` returns."""


def advance_counter(conn: Connection, table: str) -> None:
    """Keep the auto-increment ahead of the ids we inserted explicitly."""
    if conn.dialect.name == "postgresql":
        # pg_get_serial_sequence takes the table as SQL text to parse: the name is
        # bound as a value and quoted by the server (quote_ident), never pasted in.
        cells = sql_table(table, sql_column("added_id", BigInteger))
        sequence = func.pg_get_serial_sequence(
            func.quote_ident(bindparam("table", table, String)), "added_id"
        )
        next_id = select(func.coalesce(func.max(cells.c.added_id), 0) + 1).scalar_subquery()
        conn.execute(select(func.setval(sequence, next_id, False)))
    # SQLite and MariaDB move their counters past explicit ids by themselves.


def timestamp_converter(conn: Connection) -> Callable[[int], object]:
    """Microseconds -> the created_at parameter the engine's driver stores exactly."""
    if conn.dialect.name == "sqlite":
        # SQLAlchemy's own SQLite DateTime storage format, so typed reads agree.
        return datetime_text
    return from_micros


def sqlite_file_exists(url: str) -> bool:
    return _sqlite_path(url).is_file()


# -- identity ------------------------------------------------------------------------------
def place_identity(url: str) -> str:
    """Where a shard URL points (Driver.identity): a SQLite file as it is on disk, a
    server database by what the server says it is, whatever host name reached it."""
    from backstop.drivers.identity import file_identity

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return file_identity("sqlite", _sqlite_path(url))
    if backend not in ("postgresql", "mysql", "mariadb"):
        raise BadInputError(f"{redact_url(url)!r}: unsupported SQL backend {backend!r}")
    engine = create_engine(
        _fastest_mysql_driver(url), poolclass=NullPool, connect_args=_connect_args(url)
    )
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                server, database = _postgres_identity(conn)
            else:
                server, database = _mysql_identity(conn)
    finally:
        engine.dispose()
    kind = "postgresql" if backend == "postgresql" else "mysql"
    return f"{kind}://{server}/{database}"


def _postgres_identity(conn: Connection) -> tuple[str, str]:
    """The cluster's system identifier (initdb's, the same on every address and port
    that reaches it) and the database. Where pg_control_system() is not granted, what
    the server says of itself to any role: when its postmaster started (microseconds)
    and the port it listens on, the same through a socket, an address or a forwarder."""
    from sqlalchemy import exc as sa_exc

    database = conn.exec_driver_sql("SELECT current_database()").scalar_one()
    try:
        with conn.begin_nested():
            system = conn.exec_driver_sql(
                "SELECT system_identifier FROM pg_control_system()"
            ).scalar_one()
        return f"system-{system}", database
    except sa_exc.DBAPIError:
        started, port = conn.exec_driver_sql(
            "SELECT extract(epoch FROM pg_postmaster_start_time())::numeric::text, "
            "current_setting('port')"
        ).one()
        return f"postmaster-{started}:{port}", database


def _mysql_identity(conn: Connection) -> tuple[str, str]:
    """MySQL's server_uuid; MariaDB has none, so its host name, port and data folder
    (what the server reports, not how the client reached it)."""
    from sqlalchemy import exc as sa_exc

    database = conn.exec_driver_sql("SELECT DATABASE()").scalar() or ""
    try:
        uuid = conn.exec_driver_sql("SELECT @@server_uuid").scalar()
        return f"uuid-{uuid}", database
    except sa_exc.DBAPIError:
        conn.rollback()
    host, port, datadir = conn.exec_driver_sql("SELECT @@hostname, @@port, @@datadir").one()
    return f"{host}:{port}{datadir.rstrip('/')}".replace("/", "|"), database
