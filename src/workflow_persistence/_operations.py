"""Running the library's statements on a DBAPI cursor, for both SQL front ends.

DatabasePersistence runs them on its leased autocommit connections; the repository runs
them inside the caller's Session and transaction. Both use the same compiled plan per
table and dialect and the same code below, so a save means the same thing everywhere.
Going to the cursor directly, with statements compiled once, is what keeps a call close
to the raw driver's cost: SQLAlchemy's per-execution machinery costs more than a
loopback round trip.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Dialect, Table

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
from .errors import PayloadTooLargeError, PersistenceError, StorageUnavailableError

__all__ = ["PRUNE_BATCH", "Cursor", "DialectPlan", "plan_for"]


#: Where the first prune batch starts: before any timestamp a record can carry.
OLDEST = datetime(1, 1, 1, tzinfo=UTC)
#: After reading a record this large, drop the cursor that holds the driver's result, so
#: an idle connection does not keep it in memory.
RELEASE_RESULT_BYTES = 256 * 1024


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
    if expected_version is None:
        cursor.execute(plan.upsert.sql, plan.upsert.params(values))
        if plan.family == "mysql":
            return plan.statements.mysql_upserted_version(cursor.lastrowid), now
        return int(cursor.fetchone()[0]), now
    if expected_version == 0:
        cursor.execute(plan.insert_new.sql, plan.insert_new.params(values))
        lastrowid = cursor.lastrowid if plan.family == "mysql" else None
        if not plan.statements.inserted_new(cursor.rowcount, lastrowid):
            raise version_conflict(workflow_id, 0, None)
        return 1, now
    values["expected_version"] = expected_version
    cursor.execute(plan.update_if_version.sql, plan.update_if_version.params(values))
    if cursor.rowcount != 1:
        raise version_conflict(workflow_id, expected_version, None)
    return expected_version + 1, now


def read(cursor: Cursor, plan: DialectPlan, workflow_id: str) -> Record | None:
    stmt = plan.select_record
    cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}), **plan.select_options)
    row = cursor.fetchone()
    if row is None:
        return None
    data, version, created_at, updated_at = row
    if type(data) is not bytes:
        data = bytes(data)
    return data, version, plan.from_db(created_at), plan.from_db(updated_at)


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
    """Records newest first, without their data."""
    stmt = plan.list_variants[(updated_before is not None, limit is not None)]
    values: dict[str, Any] = {}
    if updated_before is not None:
        values["before"] = plan.to_db(updated_before)
    if limit is not None:
        values["limit"] = limit
    cursor.execute(stmt.sql, stmt.params(values))
    from_db = plan.from_db
    return [
        StoredSnapshotInfo(wid, from_db(created), from_db(updated), version)
        for wid, created, updated, version in cursor.fetchall()
    ]


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
    deleted = [row[0] for row in cursor.fetchall()]
    return len(deleted), max(deleted, default=None)


def delete_older_than(
    cursor: Cursor, plan: DialectPlan, cutoff: datetime, limit: int | None
) -> int:
    """One DELETE of records older than ``cutoff`` (at most ``limit``)."""
    stmt = plan.delete_older_than(limit)
    cursor.execute(stmt.sql, stmt.params({"cutoff": plan.to_db(cutoff)}))
    return cursor.rowcount


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
