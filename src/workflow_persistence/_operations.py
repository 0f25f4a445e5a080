"""Running the library's statements on a DBAPI cursor, for both SQL front ends.

DatabasePersistence runs them on its leased autocommit connections; the repository runs
them inside the caller's Session and transaction. Both use the same compiled plan per
table and dialect and the same code below, so a save means the same thing everywhere.
Going to the cursor directly, with statements compiled once, is what keeps a call close
to the raw driver's cost: SQLAlchemy's per-execution machinery costs more than a
loopback round trip.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Dialect, Table
from sqlalchemy import exc as sa_exc

from . import _mysql
from ._base import Record, version_conflict
from ._snapshot import StoredSnapshotInfo, utc_now
from ._statements import (
    PRUNE_BATCH,
    CompiledSQL,
    TableStatements,
    statements_for,
    timestamp_processors,
)
from .errors import (
    CorruptSnapshotError,
    PayloadTooLargeError,
    PersistenceError,
    StorageUnavailableError,
)

__all__ = ["PRUNE_BATCH", "Cursor", "DialectPlan", "plan_for"]

log = logging.getLogger("workflow_persistence")


#: Where the first prune batch starts: before any timestamp a record can carry.
OLDEST = datetime(1, 1, 1, tzinfo=UTC)
#: After reading a record this large, drop the cursor that holds the driver's result, so
#: an idle connection does not keep it in memory.
RELEASE_RESULT_BYTES = 256 * 1024
#: What a timestamp's result processor raises on a value the library never writes: SQLite
#: text that is no timestamp or a number, a MariaDB zero date (PyMySQL hands it over as
#: text), a time zone that moves it past the year 9999.
UNCONVERTIBLE = (TypeError, ValueError, AttributeError, OverflowError)
#: The largest value an integer column holds: a larger version came from damage (MySQL's
#: ``LAST_INSERT_ID()`` reports a negative one as unsigned).
MAX_VERSION = 2**63 - 1
#: Damaged records named in one warning of ``list``.
NAMED_IN_WARNING = 10


class Cursor(Protocol):
    """The part of a DBAPI cursor the operations use."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> Any: ...

    def execute(self, sql: str, params: Any = ..., /, **options: Any) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class DialectPlan:
    """A table's statements compiled for one dialect, and how its driver is used."""

    statements: TableStatements
    dialect: Dialect
    upsert: CompiledSQL
    insert_new: CompiledSQL
    update_if_version: CompiledSQL
    select_record: CompiledSQL
    select_version: CompiledSQL
    delete_one: CompiledSQL
    delete_if_version: CompiledSQL
    prune_batch: CompiledSQL
    list_variants: dict[tuple[bool, bool], CompiledSQL]
    to_db: Callable[[datetime], Any]
    from_db: Callable[[Any], Any]
    select_options: dict[str, Any]  # psycopg 3: binary=True, so bytea is not sent as hex
    unprepared: dict[str, Any]  # psycopg 3: prepare=False, for the prune batches
    binary: frozenset[str]
    family: str
    _limited_deletes: dict[int | None, CompiledSQL] = field(default_factory=dict)

    def compile(self, stmt: Any) -> CompiledSQL:
        return self.statements.compile(stmt, self.dialect, binary=self.binary)

    def delete_older_than(self, limit: int | None) -> CompiledSQL:
        """One DELETE of records older than ``:cutoff`` (at most ``limit``)."""
        compiled = self._limited_deletes.get(limit)
        if compiled is None:
            stmt = self.statements.delete_older_than(limit)
            compiled = self._limited_deletes[limit] = self.compile(stmt)
        return compiled


_plans: weakref.WeakKeyDictionary[Dialect, dict[Table, DialectPlan]] = (
    weakref.WeakKeyDictionary()
)


def plan_for(table: Table, dialect: Dialect) -> DialectPlan:
    """The plan of ``table`` for ``dialect``, built on first use.

    MySQL and MariaDB statements depend on the server version, so build it after the
    dialect has connected once.
    """
    per_dialect = _plans.setdefault(dialect, {})
    plan = per_dialect.get(table)
    if plan is None:
        plan = per_dialect[table] = _build(table, dialect)
    return plan


def _build(table: Table, dialect: Dialect) -> DialectPlan:
    statements = statements_for(table, dialect)
    to_db, from_db = timestamp_processors(dialect)
    psycopg = dialect.driver == "psycopg"
    # psycopg 3: send and receive the blob in binary format instead of hex text.
    binary = frozenset({"wf_data"}) if psycopg else frozenset()

    def compile_(stmt: Any) -> CompiledSQL:
        return statements.compile(stmt, dialect, binary=binary)

    return DialectPlan(
        statements=statements,
        dialect=dialect,
        upsert=compile_(statements.upsert),
        insert_new=compile_(statements.insert_new),
        update_if_version=compile_(statements.update_if_version),
        select_record=compile_(statements.select_record),
        select_version=compile_(statements.select_version),
        delete_one=compile_(statements.delete_one),
        delete_if_version=compile_(statements.delete_if_version),
        prune_batch=compile_(statements.prune_batch),
        list_variants={
            (before, limited): compile_(statements.select_infos(before=before, limited=limited))
            for before in (False, True)
            for limited in (False, True)
        },
        to_db=to_db,
        from_db=from_db,
        select_options={"binary": True} if psycopg else {},
        unprepared={"prepare": False} if psycopg else {},
        binary=binary,
        family=statements.family,
    )


# -- the operations ---------------------------------------------------------------------------


def save(
    cursor: Cursor,
    connection: Any,
    plan: DialectPlan,
    workflow_id: str,
    data: bytes | bytearray | memoryview,
    expected_version: int | None,
) -> tuple[int, datetime]:
    """Write a record with one statement; return ``(version, updated_at)``.

    ``connection`` is SQLAlchemy's pooled connection the cursor belongs to (for limits
    that are learned once per connection). Raise ConflictError on a failed compare.
    """
    if type(data) is not bytes:  # PyMySQL would store a memoryview as its repr
        data = bytes(data)
    if plan.family == "mysql":
        _mysql.check_packet_size(connection, data)
    elif plan.family == "sqlite":
        _check_sqlite_length(connection.dbapi_connection, data)
    now = utc_now()
    values = {"wf_id": workflow_id, "wf_data": data, "now": plan.to_db(now)}
    try:
        return _write(cursor, plan, workflow_id, values, expected_version), now
    except Exception as exc:
        if not _is_out_of_range(exc):
            raise
        raise damaged_record(
            workflow_id,
            f"its version cannot be incremented ({first_line(exc)}); nothing was written",
        ) from exc


def _write(
    cursor: Cursor,
    plan: DialectPlan,
    workflow_id: str,
    values: dict[str, Any],
    expected_version: int | None,
) -> int:
    if expected_version is None:
        cursor.execute(plan.upsert.sql, plan.upsert.params(values))
        if plan.family == "mysql":
            version = plan.statements.mysql_upserted_version(cursor.lastrowid, cursor.rowcount)
        else:
            version = cursor.fetchone()[0]
        if type(version) is not int or not 1 <= version <= MAX_VERSION:
            raise damaged_record(
                workflow_id,
                f"the snapshot was written, but its version column came back as"
                f" {_shown(version)}, not an integer >= 1",
            )
        return version
    if expected_version == 0:
        cursor.execute(plan.insert_new.sql, plan.insert_new.params(values))
        lastrowid = cursor.lastrowid if plan.family == "mysql" else None
        if not plan.statements.inserted_new(cursor.rowcount, lastrowid):
            raise version_conflict(workflow_id, 0, None)
        return 1
    values["expected_version"] = expected_version
    cursor.execute(plan.update_if_version.sql, plan.update_if_version.params(values))
    if cursor.rowcount != 1:
        raise version_conflict(workflow_id, expected_version, None)
    return expected_version + 1


def read(cursor: Cursor, plan: DialectPlan, workflow_id: str) -> Record | None:
    """The record, or None; CorruptSnapshotError if its columns hold what the library
    never writes."""
    stmt = plan.select_record
    cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}), **plan.select_options)
    try:
        row = cursor.fetchone()
    except Exception as exc:
        if not _is_unreadable(exc, plan):
            raise
        raise damaged_record(workflow_id, _unreadable_row(exc)) from exc
    if row is None:
        return None
    data, version, created_at, updated_at = row
    if type(data) is not bytes:
        data = _bytes_of(workflow_id, data)
    from_db = plan.from_db
    try:
        created, updated = from_db(created_at), from_db(updated_at)
    except UNCONVERTIBLE as exc:
        raise damaged_record(workflow_id, _fault(plan, version, created_at, updated_at)) from exc
    if (
        type(version) is not int
        or version < 1
        or type(created) is not datetime
        or type(updated) is not datetime
    ):
        raise damaged_record(workflow_id, _fault(plan, version, created_at, updated_at))
    return data, version, created, updated


def remove(
    cursor: Cursor, plan: DialectPlan, workflow_id: str, expected_version: int | None = None
) -> bool:
    """Delete a record; with ``expected_version``, only at that version (else ConflictError)."""
    if expected_version is None:
        cursor.execute(plan.delete_one.sql, plan.delete_one.params({"wf_id": workflow_id}))
        return cursor.rowcount > 0
    if expected_version == 0:  # "only if nothing is stored": there is nothing to delete
        if contains(cursor, plan, workflow_id):
            raise version_conflict(workflow_id, 0, None)
        return False
    stmt = plan.delete_if_version
    values = {"wf_id": workflow_id, "expected_version": expected_version}
    cursor.execute(stmt.sql, stmt.params(values))
    if cursor.rowcount != 1:
        raise version_conflict(workflow_id, expected_version, None)
    return True


def contains(cursor: Cursor, plan: DialectPlan, workflow_id: str) -> bool:
    cursor.execute(plan.select_version.sql, plan.select_version.params({"wf_id": workflow_id}))
    return cursor.fetchone() is not None


def infos(
    cursor: Cursor, plan: DialectPlan, updated_before: datetime | None, limit: int | None
) -> list[StoredSnapshotInfo]:
    """Records newest first, without their data.

    A damaged record is left out, with a warning naming it, so that one bad row never
    hides the others; with a ``limit``, records further down take its place.
    """
    stmt = plan.list_variants[(updated_before is not None, limit is not None)]
    values: dict[str, Any] = {}
    if updated_before is not None:
        values["before"] = plan.to_db(updated_before)
    if limit is not None:
        values["limit"] = limit
    rows, unreadable = _listing_rows(cursor, plan, stmt, values)
    if not unreadable:
        listed = _sound_infos(rows, plan.from_db)
        if listed is not None:  # the usual case: nothing damaged
            return listed
    listed, damaged = _infos_leaving_out_damage(rows, plan, unreadable)
    while limit is not None and len(listed) < limit:
        if len(rows) + len(unreadable) < values["limit"]:
            break  # there is nothing further down
        # Damaged records took places in the window: widen it past them.
        values["limit"] = limit + len(damaged)
        rows, unreadable = _listing_rows(cursor, plan, stmt, values)
        listed, damaged = _infos_leaving_out_damage(rows, plan, unreadable)
    _warn_left_out(damaged)
    return listed[:limit]


def _listing_rows(
    cursor: Cursor, plan: DialectPlan, stmt: CompiledSQL, values: dict[str, Any]
) -> tuple[Sequence[Any], list[str]]:
    """The listing's rows, and a description of each row the driver could not read."""
    params = stmt.params(values)
    cursor.execute(stmt.sql, params)
    try:
        return cursor.fetchall(), []
    except Exception as exc:
        if not _is_unreadable(exc, plan):
            raise
    return _rows_around_unreadable(cursor, plan, stmt.sql, params)


def _sound_infos(
    rows: Sequence[Any], from_db: Callable[[Any], Any]
) -> list[StoredSnapshotInfo] | None:
    """Every row as listed, or None as soon as one holds a damaged column."""
    listed = []
    try:
        for workflow_id, created_at, updated_at, version in rows:
            if (
                type(workflow_id) is not str
                or type(version) is not int
                or version < 1
                or created_at is None
                or updated_at is None
            ):
                return None
            listed.append(
                StoredSnapshotInfo(workflow_id, from_db(created_at), from_db(updated_at), version)
            )
    except UNCONVERTIBLE:
        return None
    return listed


def _infos_leaving_out_damage(
    rows: Sequence[Any], plan: DialectPlan, unreadable: list[str]
) -> tuple[list[StoredSnapshotInfo], list[str]]:
    """The sound rows as listed, and a description of each damaged one (the
    ``unreadable`` ones first)."""
    listed, damaged = [], list(unreadable)
    for workflow_id, created_at, updated_at, version in rows:
        if type(workflow_id) is not str:
            damaged.append(f"{_shown(workflow_id)} (its workflow_id is not text)")
            continue
        fault = _fault(plan, version, created_at, updated_at)
        if fault is not None:
            damaged.append(f"{workflow_id!r} ({fault})")
            continue
        created, updated = plan.from_db(created_at), plan.from_db(updated_at)
        listed.append(StoredSnapshotInfo(workflow_id, created, updated, version))
    return listed, damaged


def _rows_around_unreadable(
    cursor: Cursor, plan: DialectPlan, sql: str, params: Any
) -> tuple[list[Any], list[str]]:
    """Run the listing again and fetch it row by row, stepping over the rows the driver
    cannot convert; return the rows and a description of each one stepped over.

    Only psycopg fails on a row (a timestamp outside Python's years 1 to 9999), and its
    cursors can scroll past one. The statement runs again because SQLAlchemy closes the
    cursor of a failed fetch on the path that event listeners observe.
    """
    cursor.execute(sql, params)
    driver_cursor: Any = getattr(cursor, "driver_cursor", cursor)
    rows: list[Any] = []
    unreadable: list[str] = []
    while True:
        try:
            row = driver_cursor.fetchone()
        except Exception as exc:
            if not _is_unreadable(exc, plan) or not hasattr(driver_cursor, "scroll"):
                raise
            unreadable.append(f"{_unreadable_id(driver_cursor)} ({_unreadable_row(exc)})")
            try:
                driver_cursor.scroll(1)
            except IndexError:  # it was the last row
                return rows, unreadable
            continue
        if row is None:
            return rows, unreadable
        rows.append(row)


def _unreadable_id(driver_cursor: Any) -> str:
    """The workflow id of the row a psycopg cursor failed to convert, from the raw result."""
    pgresult = getattr(driver_cursor, "pgresult", None)
    raw = None if pgresult is None else pgresult.get_value(driver_cursor.rownumber, 0)
    return "an unknown id" if raw is None else repr(bytes(raw).decode(errors="replace"))


def _warn_left_out(damaged: list[str]) -> None:
    if not damaged:
        return
    named = "; ".join(damaged[:NAMED_IN_WARNING])
    more = len(damaged) - NAMED_IN_WARNING
    log.warning(
        "list() left out %d damaged record(s): %s%s. Loading one raises"
        " CorruptSnapshotError: delete it, or repair its row",
        len(damaged),
        named,
        f"; and {more} more" if more > 0 else "",
    )


def prune_batch(cursor: Cursor, plan: DialectPlan, cutoff: datetime, floor: Any) -> tuple[int, Any]:
    """Delete one batch older than ``cutoff``; return ``(deleted, next floor)``.

    ``floor`` is what the previous batch returned (None for the first).
    """
    stmt = plan.prune_batch
    values = {
        "cutoff": plan.to_db(cutoff),
        "floor": plan.to_db(OLDEST) if floor is None else floor,
    }
    # Not prepared: a generic plan for the two bounds scans far more of the index.
    cursor.execute(stmt.sql, stmt.params(values), **plan.unprepared)
    if plan.family == "mysql":
        return cursor.rowcount, None
    try:
        deleted = [row[0] for row in cursor.fetchall()]
    except Exception as exc:
        if not _is_unreadable(exc, plan):
            raise
        # The batch is deleted; the next one starts from the oldest end again.
        return cursor.rowcount, None
    return len(deleted), max(deleted, default=None)


def delete_older_than(
    cursor: Cursor, plan: DialectPlan, cutoff: datetime, limit: int | None
) -> int:
    """One DELETE of records older than ``cutoff`` (at most ``limit``)."""
    stmt = plan.delete_older_than(limit)
    cursor.execute(stmt.sql, stmt.params({"cutoff": plan.to_db(cutoff)}))
    return cursor.rowcount


# -- damaged records --------------------------------------------------------------------------


def damaged_record(workflow_id: str, fault: str | None) -> CorruptSnapshotError:
    """The error for a record whose columns hold what the library never writes."""
    return CorruptSnapshotError(
        f"the record of workflow {workflow_id!r} is damaged: {fault or 'its row cannot be read'}."
        " Delete it (or repair its row by hand) and save the run again"
    )


def _bytes_of(workflow_id: str, data: object) -> bytes:
    """A driver's bytes-like ``data`` as bytes. SQLite keeps TEXT, REAL or INTEGER in a
    BLOB column too, and ``bytes(9 * 10**18)`` would try to allocate that much."""
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise damaged_record(workflow_id, f"its data column holds {_shown(data)}, not bytes")


def _fault(plan: DialectPlan, version: Any, created_at: Any, updated_at: Any) -> str | None:
    """Which column of a record is damaged and what it holds; None if none is."""
    if type(version) is not int or version < 1:
        return f"its version column holds {_shown(version)}, not an integer >= 1"
    for name, value in (("created_at", created_at), ("updated_at", updated_at)):
        try:
            converted = plan.from_db(value)
        except UNCONVERTIBLE:
            converted = None
        if type(converted) is not datetime:
            return f"its {name} column holds {_shown(value)}, not a timestamp"
    return None


def _shown(value: object) -> str:
    """A stored value for a message: NULL, or the start of its repr and its type."""
    if value is None:
        return "NULL"
    if isinstance(value, str | bytes | bytearray | memoryview):
        shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
    else:
        shown = repr(value)[:60]
    return f"{shown} ({type(value).__name__})"


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception (SQLAlchemy wraps it on the path event listeners observe)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def _is_unreadable(exc: BaseException, plan: DialectPlan) -> bool:
    """Whether a fetch failed because the driver cannot convert a stored value: psycopg
    refuses timestamps outside Python's years 1 to 9999 ('infinity', 10000 AD, BC)."""
    return isinstance(_driver_error(exc), plan.dialect.loaded_dbapi.DataError)


def _unreadable_row(exc: BaseException) -> str:
    return (
        "the driver cannot read its row (a created_at or updated_at outside the years 1 to"
        f" 9999?): {first_line(_driver_error(exc))}"
    )


def _is_out_of_range(exc: BaseException) -> bool:
    """Whether a write failed on a number out of range: the only number a save computes
    in SQL is the new version, so the stored one was damaged."""
    sqlstate, code = _codes(_driver_error(exc))
    return sqlstate == "22003" or code in (1264, 1690)


# -- driver errors --------------------------------------------------------------------------

_BUSY_SQLSTATES = frozenset({"40P01", "55P03", "57014"})  # deadlock, lock not available, cancel
_BUSY_MYSQL_CODES = frozenset({1205, 1213})  # lock wait timeout, deadlock


def translate_error(
    exc: BaseException, dialect: Dialect, dbapi_connection: Any, cursor: Any, table: str
) -> tuple[PersistenceError, bool]:
    """The library's error for a driver error, and whether the connection is broken."""
    if _is_missing_table(exc):  # before OperationalError: SQLite reports it as one
        return PersistenceError(
            f"the table {table!r} does not exist: run `workflow-persistence migrate` (or"
            " your Alembic upgrade), or pass create_table=True"
        ), False
    if _is_too_large(exc):
        return PayloadTooLargeError(f"the database refused the snapshot: {first_line(exc)}"), False
    if _is_busy(exc):
        return StorageUnavailableError(
            f"the database is busy (a lock wait, deadlock or timeout), nothing was changed;"
            f" retry: {first_line(exc)}"
        ), False
    dbapi = dialect.loaded_dbapi
    if dialect.is_disconnect(exc, dbapi_connection, cursor) or isinstance(  # type: ignore[arg-type]
        exc, dbapi.OperationalError | dbapi.InterfaceError
    ):
        return StorageUnavailableError(f"the database is unavailable: {first_line(exc)}"), True
    return PersistenceError(f"database error: {first_line(exc)}"), False


def _codes(exc: BaseException) -> tuple[str | None, int | None]:
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(
        exc, "sqlstate", None
    )
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return sqlstate, code


def _is_too_large(exc: BaseException) -> bool:
    sqlstate, code = _codes(exc)
    # PostgreSQL program_limit_exceeded; MySQL packet too large, result too large; SQLite.
    return sqlstate == "54000" or code in (1153, 1301) or "too big" in str(exc).lower()


def _is_missing_table(exc: BaseException) -> bool:
    sqlstate, code = _codes(exc)
    return sqlstate == "42P01" or code == 1146 or "no such table" in str(exc)


def _is_busy(exc: BaseException) -> bool:
    sqlstate, code = _codes(exc)
    text = str(exc).lower()
    return (
        sqlstate in _BUSY_SQLSTATES
        or code in _BUSY_MYSQL_CODES
        or "database is locked" in text
        or "database table is locked" in text
    )


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (the driver's, for a SQLAlchemy error)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_sqlite_length(dbapi_connection: Any, data: bytes | bytearray | memoryview) -> None:
    import sqlite3

    limit = dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the snapshot is {len(data)} bytes, more than SQLite's limit of {limit}",
            size=len(data),
            limit=limit,
        )
