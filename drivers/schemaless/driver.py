"""The Schemaless driver: cell tables in one or more SQL shards.

Consistency comes from immutability: a shard's snapshot is every cell with
`added_id <= watermark`, the watermark read in the same transaction as the cells.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from sqlalchemy import BigInteger, Select, bindparam, func, inspect, literal_column, select
from sqlalchemy import column as sql_column
from sqlalchemy import exc as sa_exc
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql.expression import TableClause

from backstop.drivers.contract import (
    Capabilities,
    Consistency,
    ConsistencyKind,
    Driver,
    FileSink,
    FileSource,
    QualityChunk,
    QualityPart,
    RestoreMode,
    RestorePlan,
    RestoreResult,
    StoredFile,
    StoredUnit,
    TargetCheck,
    Unit,
    UnitResult,
)
from backstop.drivers.errors import (
    BackstopError,
    BadInputError,
    ErrorKind,
    PermanentError,
    TransientError,
)
from backstop.drivers.redact import redact_url
from backstop.drivers.schemaless import digest_sql, engines, parallel
from backstop.drivers.schemaless.cells import (
    CELL_COLUMNS,
    FORMAT,
    Cell,
    pack_cells,
    read_cells,
    to_micros,
)
from backstop.drivers.schemaless.errors import classify
from backstop.drivers.schemaless.inputs import (
    IGNORE_EXTRA_COLUMNS,
    check_restore_options,
    check_stored_table_name,
    fits_engine,
    flag,
    table_list,
)
from backstop.drivers.schemaless.quality import SUITE
from backstop.drivers.schemaless.until import Limit, parse_until

log = logging.getLogger("backstop.schemaless")

BATCH_CELLS = 10_000
QUALITY_CHUNK = 100_000  # cells per quality chunk: a few MB of keys
MERGE_HELD = "merge_held"  # plan.before: {shard: {table: newest added_id before a merge}}
# MySQL/MariaDB hand DATETIME to Python as text that mysqlclient parses in Python (half
# of a backup's read time); the server computes the microseconds far cheaper. DATETIME
# has no time zone, so this is exact whatever the session's time zone.
_MYSQL_CREATED_MICROS = literal_column(
    "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', created_at)"
)


def shard_name(index: int) -> str:
    return f"shard-{index:03d}"


def _file_name(shard: str, table: str) -> str:
    """A table's file in the store: the name percent-encoded, so that a table named
    `a/b` or `..` stays one file in its shard's folder (restore reads the table's
    name from the file's meta, not from this)."""
    return f"{shard}/{quote(table, safe='')}.cells"


def _cells(table: str) -> TableClause:
    """A cell table for building statements: SQLAlchemy quotes its name for the dialect
    (and escapes it for the DB-API's paramstyle) and binds every value, so no name from
    a source, a manifest or a user reaches SQL text. Only added_id is typed (bound as
    BIGINT); other columns come back as the DB-API returns them, as pack_cells expects."""
    return table_clause(
        table, sql_column("added_id", BigInteger), *map(sql_column, CELL_COLUMNS[1:])
    )


def _shard_tables(conn: Connection) -> dict[str, list[str]]:
    """Every table in the shard, by name, with its columns (from the engine's catalog,
    which SQLAlchemy queries with the names bound or quoted)."""
    inspector = inspect(conn)
    return {
        table: [c["name"] for c in inspector.get_columns(table)]
        for table in sorted(inspector.get_table_names())
    }


def _is_cell_table(columns: Sequence[str]) -> bool:
    return {c.lower() for c in columns}.issuperset(CELL_COLUMNS)


def _extra_columns(columns: Sequence[str]) -> list[str]:
    """The columns a cell file cannot hold: a backup would leave them out, and an
    overwrite (or its rollback) would reset them."""
    return sorted(c for c in columns if c.lower() not in CELL_COLUMNS)


def _cell_tables(conn: Connection) -> tuple[list[str], list[str]]:
    """(tables with every cell column, other tables) in the shard."""
    cells, others = [], []
    for table, columns in _shard_tables(conn).items():
        (cells if _is_cell_table(columns) else others).append(table)
    return cells, others


def _tables_to_back_up(
    conn: Connection, shard: str, options: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The cell tables a backup of this shard reads (the `tables` option's, or every
    one), each with the extra columns it leaves out: refused unless
    ignore_extra_columns is given, since a restore could not put them back."""
    shard_tables = _shard_tables(conn)
    cells = [t for t, columns in shard_tables.items() if _is_cell_table(columns)]
    wanted = table_list(options) or cells
    missing = [t for t in wanted if t not in cells]
    if missing:
        raise BadInputError(
            f"{shard}: no cell table named {', '.join(map(repr, missing))} "
            f"(cell tables here: {', '.join(map(repr, cells)) or 'none'})"
        )
    if not wanted:
        others = ", ".join(map(repr, shard_tables)) or "none"
        raise PermanentError(
            f"{shard}: no cell table (a table with columns {', '.join(CELL_COLUMNS)});"
            f" tables present: {others}"
        )
    extra = {t: _extra_columns(shard_tables[t]) for t in wanted}
    refused = {t: columns for t, columns in extra.items() if columns}
    if refused and not flag(options, IGNORE_EXTRA_COLUMNS):
        listed = "; ".join(f"table {t!r}: {', '.join(cols)}" for t, cols in refused.items())
        raise BadInputError(
            f"{shard}: columns the cell model does not hold would be left out of the backup "
            f"({listed}); back up other tables with --option tables=..., or leave these "
            f"columns out knowingly with --option {IGNORE_EXTRA_COLUMNS}=true"
        )
    return extra


def _table_columns(conn: Connection, table: str) -> list[str] | None:
    inspector = inspect(conn)
    if not inspector.has_table(table):
        return None
    return [c["name"] for c in inspector.get_columns(table)]


def _parts_by_shard(parts: Sequence[str]) -> dict[int, list[str]]:
    """Restore parts ("<shard index>:<table>") grouped by shard."""
    by_shard: dict[int, list[str]] = {}
    for part in parts:
        index, _, table = part.partition(":")
        by_shard.setdefault(int(index), []).append(table)
    return by_shard


def _stored_tables(unit: StoredUnit) -> dict[str, list[StoredFile]]:
    """The tables a backed-up shard holds, each with its files in chain order (full
    backup first); every name from the manifest is checked before it goes near SQL."""
    by_table: dict[str, list[StoredFile]] = {}
    for file in unit.files:
        table = check_stored_table_name(file.meta.get("table"), unit.name)
        by_table.setdefault(table, []).append(file)
    return by_table


def _count(conn: Connection, table: str, watermark: int | None = None) -> int:
    cells = _cells(table)
    query = select(func.count()).select_from(cells)
    if watermark is not None:
        query = query.where(cells.c.added_id <= watermark)
    return conn.execute(query).scalar_one()


def _holds_cells(conn: Connection, table: str) -> bool:
    cells = _cells(table)
    return conn.execute(select(cells.c.added_id).limit(1)).first() is not None


def _count_since(conn: Connection, table: str, since: int) -> int:
    cells = _cells(table)
    query = select(func.count()).select_from(cells)
    if since:
        query = query.where(cells.c.added_id > since)
    return conn.execute(query).scalar_one()


def _check_shard(url: str, shard: str, options: Mapping[str, Any]) -> None:
    """Before anything is written: the shard's tables exist and the backup can hold
    them. A failure names the shard (its URL redacted), as a failing snapshot does."""
    try:
        with engines.connection(engines.source_engine(url)) as conn:
            _tables_to_back_up(conn, shard, options)
    except BackstopError as exc:
        if not str(exc).startswith(shard):
            exc.args = (f"{shard}: {exc}",)
        raise
    except Exception as exc:
        error = TransientError if classify(exc) is ErrorKind.TRANSIENT else PermanentError
        detail = str(exc).splitlines()[0] if str(exc) else ""
        # Not chained: the client library's text may hold connection details.
        raise error(f"{shard} ({redact_url(url)}): {type(exc).__name__}: {detail}") from None


def _newest_added_id(conn: Connection, table: str) -> int:
    cells = _cells(table)
    return conn.execute(select(func.coalesce(func.max(cells.c.added_id), 0))).scalar_one()


def _select_cells(
    conn: Connection, table: str, watermark: int, since: int, columns: Sequence[str]
) -> Select:
    cells = _cells(table)
    chosen = [
        _MYSQL_CREATED_MICROS
        if name == "created_at" and conn.dialect.name in ("mysql", "mariadb")
        else cells.c[name]
        for name in columns
    ]
    return (
        select(*chosen)
        .where(cells.c.added_id > since, cells.c.added_id <= watermark)
        .order_by(cells.c.added_id)
    )


def _stream_cells(
    conn: Connection,
    table: str,
    watermark: int,
    since: int = 0,
    columns: Sequence[str] = CELL_COLUMNS,
):
    """Batches of cells (or of their first `columns`) with since < added_id <= watermark,
    in added_id order, streamed from a server-side cursor."""
    query = _select_cells(conn, table, watermark, since, columns)
    if conn.dialect.name == "postgresql":
        # psycopg's own server-side cursor, in binary: SQLAlchemy's streaming fetched a
        # few rows per round trip here (200k cells: 32,000 FETCHes, 2.3 s against 0.6 s).
        # The statement is SQLAlchemy's, compiled for psycopg with its bound values.
        compiled = query.compile(dialect=conn.dialect)
        raw = conn.connection.driver_connection
        with raw.cursor(name="backstop_cells", binary=True) as cursor:
            cursor.itersize = BATCH_CELLS
            cursor.execute(str(compiled), compiled.params)
            while rows := cursor.fetchmany(BATCH_CELLS):
                yield rows
        return
    sscursor = getattr(conn.dialect, "_sscursor", None)
    if conn.dialect.name in ("mysql", "mariadb") and sscursor is not None:
        # The DB-API's own unbuffered cursor: its tuples go to pack_cells as they are
        # (SQLAlchemy's Row building took a third of the client's time per cell).
        compiled = query.compile(dialect=conn.dialect)
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        cursor = conn.connection.driver_connection.cursor(sscursor)
        try:
            cursor.execute(str(compiled), params)
            while rows := cursor.fetchmany(BATCH_CELLS):
                yield rows
        finally:
            cursor.close()
        return
    result = conn.execution_options(stream_results=True, yield_per=BATCH_CELLS).execute(query)
    yield from result.partitions(BATCH_CELLS)


def _backup_batches(
    conn: Connection, readers: list[Connection], table: str, watermark: int, since: int
):
    """The batches of cells a backup packages, in added_id order: through the parallel
    readers where the shard has them (parallel.py), else through the main connection."""
    if not readers:
        return _stream_cells(conn, table, watermark, since)

    def read(reader: Connection, low: int, high: int):
        return _stream_cells(reader, table, high, low)

    def same_point(reader: Connection) -> None:
        # Started under one lock, every reader sees the main connection's commits.
        seen = _newest_added_id(reader, table)
        if seen != watermark:
            raise PermanentError(
                f"{table}: a parallel reader sees newest added_id {seen}, the snapshot "
                f"{watermark}: the readers do not share one consistent point"
            )

    return parallel.ordered_batches(
        readers, parallel.pieces(since, watermark), read, check=same_point
    )


class SchemalessDriver(Driver):
    name = "schemaless"
    version = "1.0.0"
    capabilities = Capabilities(
        consistency=(ConsistencyKind.SNAPSHOT,),
        incremental=True,
        point_in_time=True,
        resumable=True,  # each shard is read at its own watermarks
    )
    url_schemes = ("sqlite", "postgresql", "mysql", "mariadb")
    quality_suite = SUITE
    backup_options = {
        "tables": "comma-separated cell tables to back up (default: every one)",
        IGNORE_EXTRA_COLUMNS: "true: back up cell tables that have extra columns",
    }
    restore_options = {IGNORE_EXTRA_COLUMNS: "true: restore into tables with extra columns"}

    def classify(self, exc: BaseException) -> ErrorKind:
        return classify(exc)

    def check_urls(self, urls: Sequence[str], role: str) -> None:
        super().check_urls(urls, role)
        for url in urls:
            try:
                make_url(url)
            except (sa_exc.ArgumentError, ValueError) as exc:
                raise BadInputError(
                    f"{role} {redact_url(url)!r} is not a valid URL: {exc}"
                ) from exc
        if len(set(urls)) != len(urls):
            raise BadInputError(f"the same {role} is given twice; each shard is one database")

    def identity(self, url: str) -> str:
        return engines.place_identity(url)

    def place_name(self, index: int, role: str) -> str:
        return f"{role} {shard_name(index)}"  # the i-th source or target is shard i

    # -- backup ---------------------------------------------------------------------
    def plan_backup(self, sources: Sequence[str], options: Mapping[str, Any]) -> list[Unit]:
        tables = table_list(options)
        ignore_extra = flag(options, IGNORE_EXTRA_COLUMNS)
        parent = options.get("parent")
        if parent and len(parent["units"]) != len(sources):
            raise BadInputError(
                f"--incremental: the parent backup {parent['backup_id']} has "
                f"{len(parent['units'])} shard(s), not {len(sources)}; take a full backup"
            )
        units = []
        for i, url in enumerate(sources):
            _check_shard(url, shard_name(i), options)
            unit_options: dict[str, Any] = {
                "tables": tables,
                IGNORE_EXTRA_COLUMNS: ignore_extra,
            }
            if parent:
                # Cells up to the parent's watermarks are in the chain already.
                unit_options["since"] = parent["units"][shard_name(i)].get("watermarks", {})
            units.append(Unit(name=shard_name(i), source=url, options=unit_options))
        return units

    def backup_unit(self, unit: Unit, sink: FileSink) -> UnitResult:
        engine = engines.source_engine(unit.source)
        watermarks: dict[str, int] = {}
        tables_meta: dict[str, dict[str, int]] = {}
        total = 0
        with parallel.snapshot(engine, unit.name) as (conn, readers):
            # Checked again in the snapshot itself: a column may have come since planning.
            extra_of = _tables_to_back_up(conn, unit.name, unit.options)
            since_of = unit.options.get("since") or {}
            for table, extra in extra_of.items():
                watermark = _newest_added_id(conn, table)
                since = since_of.get(table, 0)
                if watermark < since:
                    raise PermanentError(
                        f"{unit.name}/{table}: the newest added_id is {watermark}, below the "
                        f"parent backup's watermark {since}: the table was rewritten; take a "
                        "full backup"
                    )
                records = 0
                # What the quality suite compares the packaged file with: counted by
                # the server in the same snapshot as the cells are read. The snapshot
                # holds nothing above the watermark, so a full backup counts the whole
                # table (InnoDB then scans its smallest index, not the cells).
                source_count = _count_since(conn, table, since)
                meta = {"table": table, "watermark": watermark, "since": since}
                cells = _ObservedCells(sink, table)
                with sink.open(_file_name(unit.name, table), format=FORMAT, meta=meta) as out:
                    for rows in _backup_batches(conn, readers, table, watermark, since):
                        data, n = pack_cells(rows)
                        out.write(data, n)
                        records += n
                        cells.add(rows)
                    cells.flush()
                watermarks[table] = watermark
                tables_meta[table] = {
                    "watermark": watermark,
                    "since": since,
                    "records": records,
                    "source_count": source_count,
                }
                if extra:  # left out with ignore_extra_columns: a restore may reset them
                    tables_meta[table]["ignored_columns"] = extra
                total += records
        return UnitResult(
            records=total,
            point={"watermarks": watermarks},
            meta={"tables": tables_meta, "backend": make_url(unit.source).get_backend_name()},
        )

    def consistency(
        self, quiesce_handle: dict[str, Any] | None, units: Sequence[StoredUnit]
    ) -> Consistency:
        return Consistency(
            kind=ConsistencyKind.SNAPSHOT,
            point={u.name: u.point.get("watermarks", {}) for u in units},
        )

    # -- restore --------------------------------------------------------------------
    def prepare_restore(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        mode = plan.mode
        self.check_urls(targets, "target")
        check_restore_options(plan.options)
        ignore_extra = flag(plan.options, IGNORE_EXTRA_COLUMNS)
        for unit in units:
            parse_until(plan.until, unit.name)  # bad input is refused before any target check
        if len(targets) != len(units):
            shards = ", ".join(f"{u.name} from {u.source}" for u in units)
            raise BadInputError(
                f"the backup has {len(units)} shard(s) ({shards}) but {len(targets)} --target "
                "were given; give one --target per shard, in the same order"
            )
        problems: list[str] = []
        # Merge: each table's newest added_id before anything is written. A cell at or
        # below it that differs from the backup's under the same key is the target's
        # own, which merge keeps (verify_unit); the restore writes only backed-up cells.
        held_before: dict[str, dict[str, int]] = {}
        for unit, target in zip(units, targets, strict=True):
            tables = _stored_tables(unit)
            engine = engines.target_engine(target)
            problems += [
                f"{unit.name} -> {redact_url(target)}: table name {table!r} is longer than "
                f"{engine.dialect.name} allows ({engine.dialect.max_identifier_length})"
                for table in tables
                if not fits_engine(table, engine.dialect)
            ]
            if engine.dialect.name == "sqlite" and not engines.sqlite_file_exists(target):
                engine.dispose()
                continue  # a new file: empty by definition, and nothing is created yet
            with engines.connection(engine) as conn:
                for table in tables:
                    columns = _table_columns(conn, table)
                    if columns is None:
                        continue
                    lacking = sorted(set(CELL_COLUMNS) - {c.lower() for c in columns})
                    if lacking:
                        problems.append(
                            f"{unit.name} -> {redact_url(target)}: table {table!r} exists but is "
                            f"not a cell table (lacks {', '.join(lacking)})"
                        )
                        continue
                    extra = _extra_columns(columns)
                    # A backup taken with ignore_extra_columns (an overwrite's safety
                    # backup, when the overwrite was told so) may be restored over the
                    # very columns it recorded leaving out: that is its rollback.
                    left_out = unit.meta.get("tables", {}).get(table, {}).get("ignored_columns")
                    if (
                        extra
                        and mode is not RestoreMode.FAIL_IF_EXISTS
                        and not ignore_extra
                        and not set(extra) <= set(left_out or ())
                    ):
                        problems.append(
                            f"{unit.name} -> {redact_url(target)}: table {table!r} has columns "
                            f"the cell model does not hold ({', '.join(extra)}): the restore "
                            "would write cells without them and a safety backup could not "
                            "keep them; restore into another table or database, or accept "
                            f"that with --option {IGNORE_EXTRA_COLUMNS}=true"
                        )
                        continue
                    if mode is RestoreMode.MERGE:
                        newest = _newest_added_id(conn, table)
                        held_before.setdefault(unit.name, {})[table] = newest
                    held = _count(conn, table)
                    if held and mode is RestoreMode.FAIL_IF_EXISTS:
                        problems.append(
                            f"{unit.name} -> {redact_url(target)}: table {table!r} already holds "
                            f"{held} cells"
                        )
        if problems:
            hint = ""
            if mode is RestoreMode.FAIL_IF_EXISTS:
                hint = (
                    "\nrestore refuses to write into a non-empty target and left it untouched; "
                    "choose --mode overwrite or --mode merge to proceed"
                )
            raise BadInputError("target check failed:\n  " + "\n  ".join(problems) + hint)
        return {MERGE_HELD: held_before} if mode is RestoreMode.MERGE else None

    def restore_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> RestoreResult:
        mode = plan.mode
        limit = parse_until(plan.until, unit.name)
        written = skipped = 0
        engine = engines.target_engine(target)
        prepared: set[str] = set()
        stored = _stored_tables(unit)
        table_of = {file.name: t for t, files in stored.items() for file in files}
        fresh_ids: dict[str, _FreshIds] = {}
        # One transaction per shard: a failure leaves the shard as it was. The files of
        # a chain come full backup first; a table's later files only add cells.
        # prepare_restore found every table empty in fail-if-exists mode: cells there now
        # are an earlier attempt's (a retry after its commit) and count as done; anything
        # else fails the exact verification that follows.
        refilled: set[str] = set()
        with engines.connection(engine) as conn:
            for file in unit.files:
                table = table_of[file.name]
                if table not in prepared:
                    prepared.add(table)
                    engines.cell_table(table).create(conn, checkfirst=True)
                    if mode is RestoreMode.FAIL_IF_EXISTS and _holds_cells(conn, table):
                        refilled.add(table)
                    if mode is RestoreMode.OVERWRITE:
                        conn.execute(_cells(table).delete())
                merge = mode is RestoreMode.MERGE or table in refilled
                fresh = None
                if mode is RestoreMode.MERGE:
                    fresh = fresh_ids.get(table)
                    if fresh is None:
                        fresh = fresh_ids[table] = _FreshIds(conn, table, stored[table])
                sent = 0
                with (
                    source.open(file) as stream,
                    engines.cell_writer(conn, table, skip_existing=merge) as writer,
                ):
                    for batch in read_cells(stream, BATCH_CELLS):
                        if not limit.unlimited:
                            batch = [cell for cell in batch if limit.keeps(cell)]
                            if not batch:
                                continue
                        if fresh is not None:
                            batch = fresh.renumber(batch)
                        writer.write(batch)
                        sent += len(batch)
                written += writer.inserted
                skipped += sent - writer.inserted
                engines.advance_counter(conn, table)
        renumbered = {t: f.renumbered for t, f in fresh_ids.items() if f.renumbered}
        for table, count in renumbered.items():
            log.warning(
                "%s/%s: %d backed-up cell(s) were added under a new added_id: the target "
                "gives their added_id to cells of its own (kept as they were)",
                unit.name,
                table,
                count,
            )
        return RestoreResult(records_written=written, records_skipped=skipped)

    def verify_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        mode = plan.mode
        limit = parse_until(plan.until, unit.name)
        problems: list[str] = []
        records = 0
        by_table = _stored_tables(unit)
        engine = engines.source_engine(target)
        with engines.connection(engine) as conn:
            for table, files in by_table.items():
                if _table_columns(conn, table) is None:
                    problems.append(f"{unit.name}: table {table!r} is missing from the target")
                    continue
                if mode is RestoreMode.MERGE:
                    kept_up_to = plan.before.get(MERGE_HELD, {}).get(unit.name, {}).get(table, 0)
                    for file in files:
                        found, bad = _compare_by_key(conn, table, file, source, limit, kept_up_to)
                        records += found
                        problems.extend(bad)
                elif digest_sql.computes_in_sql(conn) and not _recorded(files, limit):
                    records += _compare_in_sql(
                        conn, table, files, source, limit, problems, unit.name
                    )
                else:
                    expected = _expected(files, source, limit)
                    found: list[str] = []
                    records += _compare_digest(
                        conn, table, files[-1].meta["watermark"], expected, found, unit.name
                    )
                    if found:  # name the ranges that differ
                        found += _differing_ranges(conn, table, files, source, limit, unit.name)
                    problems += found
        return TargetCheck(unit=unit.name, ok=not problems, records=records, problems=problems)

    def safety_backup_options(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        tables = sorted({t for unit in units for t in _stored_tables(unit)})
        held = set()
        for target in targets:
            engine = engines.target_engine(target)
            if engine.dialect.name == "sqlite" and not engines.sqlite_file_exists(target):
                engine.dispose()
                continue
            with engines.connection(engine) as conn:
                present, _ = _cell_tables(conn)
                held |= {t for t in tables if t in present and _holds_cells(conn, t)}
        if not held:
            return None
        # prepare_restore refused extra columns unless the restore was told to ignore
        # them; the safety backup then leaves them out too (and records so).
        ignore_extra = flag(plan.options, IGNORE_EXTRA_COLUMNS)
        return {"tables": sorted(held), IGNORE_EXTRA_COLUMNS: ignore_extra}

    # Parts are "<shard index>:<table>": a table of one target shard.
    def restore_parts(
        self, units: Sequence[StoredUnit], source: FileSource, plan: RestorePlan
    ) -> list[str] | None:
        return [f"{i}:{table}" for i, unit in enumerate(units) for table in _stored_tables(unit)]

    def absent_parts(self, targets: Sequence[str], parts: Sequence[str]) -> list[str]:
        absent = []
        for index, tables in _parts_by_shard(parts).items():
            engine = engines.target_engine(targets[index])
            if engine.dialect.name == "sqlite" and not engines.sqlite_file_exists(targets[index]):
                engine.dispose()
                absent += [f"{index}:{t}" for t in tables]
                continue
            with engines.connection(engine) as conn:
                absent += [f"{index}:{t}" for t in tables if _table_columns(conn, t) is None]
        return absent

    def drop_parts(self, targets: Sequence[str], parts: Sequence[str]) -> None:
        for index, tables in _parts_by_shard(parts).items():
            with engines.connection(engines.target_engine(targets[index])) as conn:
                for table in tables:  # SQLAlchemy quotes the name
                    engines.cell_table(table).drop(conn, checkfirst=True)

    # -- data quality ---------------------------------------------------------------
    def quality_parts(self, unit: StoredUnit) -> dict[str, QualityPart]:
        return {
            table: QualityPart(
                records=info.get("source_count"), max_values={"added_id": info["watermark"]}
            )
            for table, info in unit.meta.get("tables", {}).items()
        }

    def quality_chunks(self, unit: StoredUnit, source: FileSource) -> Iterator[QualityChunk]:
        for file in unit.files:
            with source.open(file) as stream:
                yield from _quality_chunks(file.meta["table"], read_cells(stream, BATCH_CELLS))

    def target_quality_chunks(
        self, unit: StoredUnit, target: str, plan: RestorePlan
    ) -> Iterator[QualityChunk]:
        tables = _stored_tables(unit)
        engine = engines.source_engine(target)
        with engines.connection(engine) as conn:
            for table in tables:
                batches = _stream_cells(conn, table, _NO_LIMIT, columns=CELL_COLUMNS[:4])
                yield from _quality_chunks(table, batches)

    def unit_connections(self, step: str, url: str) -> int:
        backend = make_url(url).get_backend_name()
        if backend == "sqlite":
            return 1
        if step == "verify+quality":  # the server's digest and the quality read at once
            return 2
        if step == "backup" and backend in ("mysql", "mariadb"):
            return parallel.READERS + 1  # when the lock is had (parallel.py)
        return 1

    def verify_with_quality(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> Generator[QualityChunk, None, TargetCheck]:
        """verify_unit and the target's quality chunks at once. On PostgreSQL and MariaDB
        the server digests the target (verify_unit, on a thread) while this thread reads
        the four small columns the quality suite checks: the server's work overlaps this
        process's. SQLite and merge mode compare in Python: one after the other."""
        if plan.mode is RestoreMode.MERGE or make_url(target).get_backend_name() == "sqlite":
            check = self.verify_unit(unit, target, source, plan)
            yield from self.target_quality_chunks(unit, target, plan)
            return check
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backstop-verify") as pool:
            checking = pool.submit(self.verify_unit, unit, target, source, plan)
            yield from self.target_quality_chunks(unit, target, plan)
            return checking.result()


class _ObservedCells:
    """The quality suite's columns of the cells a backup packages, handed to the sink
    QUALITY_CHUNK cells at a time (FileSink.observe): the suite runs in the packaging
    pass, and the backup's validation does not parse the stored file again. The
    columns are those quality_chunks reads back: the row's values as pack_cells
    serializes them."""

    def __init__(self, sink: FileSink, table: str) -> None:
        self._sink, self._table = sink, table
        self._columns: list[list[Any]] = [[] for _ in CELL_COLUMNS[:4]]

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        for column, values in zip(self._columns, zip(*rows, strict=False), strict=False):
            column.extend(values)
        if len(self._columns[0]) >= QUALITY_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._columns[0]:
            columns = dict(zip(CELL_COLUMNS[:4], self._columns, strict=True))
            self._sink.observe(QualityChunk(part=self._table, columns=columns))
            self._columns = [[] for _ in CELL_COLUMNS[:4]]


_NO_LIMIT = 2**63 - 1  # every cell the target holds


def _quality_chunks(table: str, batches) -> Iterator[QualityChunk]:
    """Batches of cells (or of their first four columns) regathered into the quality
    suite's column chunks; bodies are dropped batch by batch."""
    names = CELL_COLUMNS[:4]
    columns: list[list[Any]] = [[] for _ in names]
    for rows in batches:
        for column, values in zip(columns, zip(*rows, strict=False), strict=False):
            column.extend(values)
        if len(columns[0]) >= QUALITY_CHUNK:
            yield QualityChunk(part=table, columns=dict(zip(names, columns, strict=True)))
            columns = [[] for _ in names]
    if columns[0]:
        yield QualityChunk(part=table, columns=dict(zip(names, columns, strict=True)))


class _FreshIds:
    """Merge: a backed-up cell whose added_id the target gives to another cell (another
    key) gets a new added_id, above both the target's newest and the backup's
    watermark, so that it collides with nothing the restore writes. Without it the
    insert's conflict clause (which covers the primary key as well as the cell key)
    would drop the cell silently; the target's cell stays as it was either way."""

    LOOKUP = 500  # added_ids per query: within every engine's bound-parameter limit

    def __init__(self, conn: Connection, table: str, files: Sequence[StoredFile]) -> None:
        self._conn = conn
        cells = _cells(table)
        self._lookup = select(
            cells.c.added_id, cells.c.row_key, cells.c.column_name, cells.c.ref_key
        ).where(cells.c.added_id.in_(bindparam("ids", expanding=True)))
        watermark = max((file.meta.get("watermark", 0) for file in files), default=0)
        self._next = max(_newest_added_id(conn, table), watermark) + 1
        self.renumbered = 0

    def renumber(self, batch: list[Cell]) -> list[Cell]:
        held: dict[int, tuple[str, str, int]] = {}
        for start in range(0, len(batch), self.LOOKUP):
            ids = [cell[0] for cell in batch[start : start + self.LOOKUP]]
            for added_id, rk, col, ref in self._conn.execute(self._lookup, {"ids": ids}):
                held[added_id] = (rk, col, ref)
        if not held:
            return batch
        out = []
        for cell in batch:
            key = held.get(cell[0])
            if key is not None and key != tuple(cell[1:4]):
                cell = (self._next, *cell[1:])
                self._next += 1
                self.renumbered += 1
            out.append(cell)
        return out


def _expected(files: list[StoredFile], source: FileSource, limit: Limit) -> tuple[int, str]:
    """(count, SHA-256) of what the target must hold: the serialized cells of a table's
    files in added_id order, up to the limit. One whole file is its manifest entry; a
    chain or a point in time is recomputed from the backup."""
    if len(files) == 1 and limit.unlimited:
        return files[0].records, files[0].raw_sha256
    digest = hashlib.sha256()
    count = 0
    for file in files:
        with source.open(file) as stream:
            for batch in read_cells(stream, BATCH_CELLS):
                data, n = pack_cells(cell for cell in batch if limit.keeps(cell))
                digest.update(data)
                count += n
    return count, digest.hexdigest()


def _stored_cells(
    files: list[StoredFile], source: FileSource, limit: Limit
) -> Iterator[list[Cell]]:
    """Batches of a table's backed-up cells up to the limit, in chain (added_id) order."""
    for file in files:
        with source.open(file) as stream:
            for batch in read_cells(stream, BATCH_CELLS):
                yield batch if limit.unlimited else [c for c in batch if limit.keeps(c)]


def _compare_in_sql(
    conn: Connection,
    table: str,
    files: list[StoredFile],
    source: FileSource,
    limit: Limit,
    problems: list[str],
    unit: str,
) -> int:
    """PostgreSQL, MariaDB: the server digests every cell of the target table, range by
    range, while this process digests the backup's cells (the same function, see
    digest_sql); nothing but one row per range travels. Every cell of the table takes
    part, so a cell above the backup's watermark is an extra cell of its range."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backstop-digest") as pool:
        in_target = pool.submit(digest_sql.sql_digests, conn, table)
        expected = digest_sql.python_digests(_stored_cells(files, source, limit))
        found = in_target.result()
    problems.extend(digest_sql.compare(unit, table, expected, found))
    return sum(count for count, _ in found.values())


def _recorded(files: list[StoredFile], limit: Limit) -> bool:
    """Whether the manifest holds the expected whole-table digest (one whole file, see
    _expected). Then streaming the target through the same SHA-256 costs this process
    less than digesting the backed-up cells cell by cell for the server's digests
    (measured: 7.2 s against ~10 s of CPU per million ~1 KB cells): the server's
    per-range digests are kept for naming the ranges once the digests differ."""
    return len(files) == 1 and limit.unlimited


def _differing_ranges(
    conn: Connection,
    table: str,
    files: list[StoredFile],
    source: FileSource,
    limit: Limit,
    unit: str,
) -> list[str]:
    """Once the whole-table digest differs: which added_id ranges differ (digested by
    the server where it can)."""
    expected = digest_sql.python_digests(_stored_cells(files, source, limit))
    if digest_sql.computes_in_sql(conn):
        found = digest_sql.sql_digests(conn, table)
    else:
        found = digest_sql.python_digests(_stream_cells(conn, table, _NO_LIMIT))
    return digest_sql.compare(unit, table, expected, found, totals=False)


def _compare_digest(
    conn: Connection,
    table: str,
    watermark: int,
    expected: tuple[int, str],
    problems: list[str],
    unit: str,
) -> int:
    """Re-serialize the target's cells as the backup did and compare the SHA-256."""
    expected_count, expected_sha = expected
    digest = hashlib.sha256()
    count = 0
    for rows in _stream_cells(conn, table, watermark):
        data, n = pack_cells(rows)
        digest.update(data)
        count += n
    total = _count(conn, table)
    if count != expected_count:
        problems.append(
            f"{unit}/{table}: {count} cells in the target, {expected_count} in the backup"
        )
    elif digest.hexdigest() != expected_sha:
        problems.append(f"{unit}/{table}: cell digest differs from the backup's")
    if total != count:
        problems.append(f"{unit}/{table}: {total - count} cells above the backup's watermark")
    return count


def _compare_by_key(
    conn: Connection,
    table: str,
    file: StoredFile,
    source: FileSource,
    limit: Limit,
    kept_up_to: int = 0,
) -> tuple[int, list[str]]:
    """Merge mode: every backed-up cell must be present by key, either with equal
    content (its added_id may differ: see _FreshIds) or as the target's own cell under
    that key, held before the restore (added_id <= `kept_up_to`) and kept as it was.
    The backup is streamed in batches; the target answers each batch by key."""
    cells = _cells(table)
    lookup = select(
        cells.c.row_key,
        cells.c.column_name,
        cells.c.ref_key,
        cells.c.body,
        cells.c.created_at,
        cells.c.added_id,
    ).where(cells.c.row_key.in_(bindparam("keys", expanding=True)))
    found = missing = differing = 0
    with source.open(file) as stream:
        for batch in read_cells(stream, 500):
            batch = [cell for cell in batch if limit.keeps(cell)]
            if not batch:
                continue
            keys = sorted({cell[1] for cell in batch})
            present = {
                (rk, col, ref): (bytes(body), created, added_id)
                for rk, col, ref, body, created, added_id in conn.execute(lookup, {"keys": keys})
            }
            for _added_id, rk, col, ref, body, micros in batch:
                got = present.get((rk, col, ref))
                if got is None:
                    missing += 1
                elif (got[0] == body and to_micros(got[1]) == micros) or got[2] <= kept_up_to:
                    found += 1
                else:
                    differing += 1
    problems = []
    if missing:
        problems.append(f"{table}: {missing} backed-up cells are missing from the target")
    if differing:
        problems.append(
            f"{table}: {differing} cells differ from the backup (same key, other content)"
        )
    return found, problems
