"""Running the library's statements on a DBAPI cursor, for both SQL front ends.

DatabasePersistence runs them on its leased autocommit connections; the repository runs
them inside the caller's Session and transaction. Both use the same compiled plan per
table and dialect and the same code below, so a save means the same thing everywhere.
Going to the cursor directly, with statements compiled once, is what keeps a call close
to the raw driver's cost: SQLAlchemy's per-execution machinery costs more than a
loopback round trip.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Dialect, Table
from sqlalchemy import exc as sa_exc

from workflow_persistence._serialization.columns import SnapshotColumns
from workflow_persistence._snapshot import StoredSnapshotInfo, utc_now
from workflow_persistence._storage.base import ListQuery, PruneQuery, Record, version_conflict
from workflow_persistence.errors import (
    ConflictError,
    CorruptSnapshotError,
    PayloadTooLargeError,
    PersistenceError,
    StorageUnavailableError,
)

from . import mysql as _mysql
from .statements import (
    PRUNE_BATCH,
    CompiledSQL,
    ListShape,
    TableStatements,
    statements_for,
    timestamp_processors,
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
#: How often a write without a condition is run when concurrent writes of its record
#: keep winning (see settle_lost_race).
LOST_RACE_TRIES = 10

T = TypeVar("T")


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
    select_row: CompiledSQL
    select_version: CompiledSQL
    delete_one: CompiledSQL
    delete_if_version: CompiledSQL
    prune_batch: CompiledSQL
    prune_expired: CompiledSQL
    to_db: Callable[[datetime], Any]
    from_db: Callable[[Any], Any]
    json_from_db: Callable[[Any], Any]  # a JSON column's value as Python
    select_options: dict[str, Any]  # psycopg 3: binary=True, so bytea is not sent as hex
    unprepared: dict[str, Any]  # psycopg 3: prepare=False, for the prune batches
    binary: frozenset[str]
    family: str
    _limited_deletes: dict[int | None, CompiledSQL] = field(default_factory=dict)
    _lists: dict[ListShape, CompiledSQL] = field(default_factory=dict)
    _prunes: dict[int, CompiledSQL] = field(default_factory=dict)

    def compile(self, stmt: Any) -> CompiledSQL:
        return self.statements.compile(stmt, self.dialect, binary=self.binary)

    def delete_older_than(self, limit: int | None) -> CompiledSQL:
        """One DELETE of records older than ``:cutoff`` (at most ``limit``)."""
        compiled = self._limited_deletes.get(limit)
        if compiled is None:
            stmt = self.statements.delete_older_than(limit)
            compiled = self._limited_deletes[limit] = self.compile(stmt)
        return compiled

    def list_statement(self, shape: ListShape) -> CompiledSQL:
        """The listing for ``shape``, compiled on first use."""
        compiled = self._lists.get(shape)
        if compiled is None:
            compiled = self._lists[shape] = self.compile(self.statements.select_infos(shape))
        return compiled

    def prune_old(self, statuses: int) -> CompiledSQL:
        """One prune batch by age, for ``statuses`` statuses (0: any)."""
        compiled = self._prunes.get(statuses)
        if compiled is None:
            compiled = self._prunes[statuses] = self.compile(self.statements.prune_old(statuses))
        return compiled


_plans: weakref.WeakKeyDictionary[Dialect, dict[Table, DialectPlan]] = weakref.WeakKeyDictionary()


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
        select_row=compile_(statements.select_row),
        select_version=compile_(statements.select_version),
        delete_one=compile_(statements.delete_one),
        delete_if_version=compile_(statements.delete_if_version),
        prune_batch=compile_(statements.prune_batch),
        prune_expired=compile_(statements.prune_expired()),
        to_db=to_db,
        from_db=from_db,
        # psycopg hands jsonb over parsed (a JSON string as a str); PyMySQL and sqlite3
        # hand over the JSON text.
        json_from_db=_unchanged if statements.family == "postgresql" else _json_text_from_db,
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
    columns: SnapshotColumns,
) -> tuple[int, datetime]:
    """Write a record and its queryable ``columns`` with one statement; return
    ``(version, updated_at)``.

    ``connection`` is SQLAlchemy's pooled connection the cursor belongs to (for limits
    that are learned once per connection). Raise ConflictError on a failed compare.
    """
    if type(data) is not bytes:  # PyMySQL would store a memoryview as its repr
        data = bytes(data)
    if plan.family == "mysql":
        _mysql.check_packet_size(connection, data, columns.interrupt, columns.run_metadata)
    elif plan.family == "sqlite":
        _check_sqlite_length(connection.dbapi_connection, data)
    now = utc_now()
    expires_at, deadline = columns.expires_at, columns.deadline
    values = {
        "wf_id": workflow_id,
        "wf_data": data,
        "now": plan.to_db(now),
        "wf_status": columns.status,
        "wf_name": columns.workflow_name,
        "wf_node": columns.current_node,
        "wf_interrupt": columns.interrupt,
        "wf_metadata": columns.run_metadata,
        "wf_expires": None if expires_at is None else plan.to_db(expires_at),
        "wf_deadline": None if deadline is None else plan.to_db(deadline),
    }
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


def settle_lost_race(
    write: Callable[[], T], workflow_id: str, expected_version: int | None
) -> T:
    """Run one autocommit ``write`` of a record; when the server rolls it back because a
    concurrent write of the record committed first, settle it as that race demands.

    MySQL and MariaDB report that as a deadlock (1213), and so does a Galera cluster when
    a write loses certification to one committed on another node. A conditional write
    (``expected_version``) then raises ConflictError: the record it expected has been
    written since. A write without a condition is run again: it is last-writer-wins, and
    the server says it was not applied, so running it again just makes it the last one.
    """
    for attempt in range(1, LOST_RACE_TRIES + 1):
        try:
            return write()
        except Exception as exc:
            if not is_lost_race(exc):
                raise
            if expected_version is not None:
                raise ConflictError(
                    f"workflow {workflow_id!r}: another write of it committed first (a"
                    " concurrent call, on this server or another node of the cluster);"
                    " nothing was written",
                    workflow_id=workflow_id,
                    expected_version=expected_version,
                ) from exc
            if attempt == LOST_RACE_TRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def is_lost_race(exc: BaseException) -> bool:
    """Whether a MySQL/MariaDB write was rolled back as a deadlock (1213): on a Galera
    cluster, also a certification conflict with a write committed on another node."""
    return _codes(_driver_error(exc))[1] == 1213


def read(cursor: Cursor, plan: DialectPlan, workflow_id: str) -> Record | None:
    """The record, or None; CorruptSnapshotError if its columns hold what the library
    never writes."""
    row = _fetch_one(cursor, plan, plan.select_record, workflow_id)
    return None if row is None else _record_of(plan, workflow_id, row)


def read_row(
    cursor: Cursor, plan: DialectPlan, workflow_id: str
) -> tuple[Record, dict[str, Any]] | None:
    """The record and its queryable columns (JSON parsed), or None."""
    row = _fetch_one(cursor, plan, plan.select_row, workflow_id)
    if row is None:
        return None
    record = _record_of(plan, workflow_id, row[:5])
    status, workflow_name, current_node, interrupt, metadata, deadline = row[5:]
    try:
        columns = {
            "status": status,
            "workflow_name": workflow_name,
            "current_node": current_node,
            "interrupt": plan.json_from_db(interrupt),
            "run_metadata": plan.json_from_db(metadata),
            "deadline": None if deadline is None else plan.from_db(deadline),
        }
    except UNCONVERTIBLE as exc:
        raise damaged_record(
            workflow_id, "its interrupt, run_metadata or deadline column is damaged"
        ) from exc
    return record, columns


def _fetch_one(cursor: Cursor, plan: DialectPlan, stmt: CompiledSQL, workflow_id: str) -> Any:
    cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}), **plan.select_options)
    try:
        return cursor.fetchone()
    except Exception as exc:
        if not _is_unreadable(exc, plan):
            raise
        raise damaged_record(workflow_id, _unreadable_row(exc)) from exc


def _record_of(plan: DialectPlan, workflow_id: str, row: Any) -> Record:
    data, version, created_at, updated_at, expires_at = row
    if type(data) is not bytes:
        data = _bytes_of(workflow_id, data)
    from_db = plan.from_db
    try:
        created, updated = from_db(created_at), from_db(updated_at)
        expires = None if expires_at is None else from_db(expires_at)
    except UNCONVERTIBLE as exc:
        fault = _fault(plan, version, created_at, updated_at, expires_at)
        raise damaged_record(workflow_id, fault) from exc
    if (
        type(version) is not int
        or version < 1
        or type(created) is not datetime
        or type(updated) is not datetime
        or (expires is not None and type(expires) is not datetime)
    ):
        raise damaged_record(workflow_id, _fault(plan, version, created_at, updated_at, expires_at))
    return data, version, created, updated, expires


def remove(
    cursor: Cursor,
    plan: DialectPlan,
    workflow_id: str,
    expected_version: int | None,
    now: datetime,
) -> bool:
    """Delete a record; with ``expected_version``, only at that version (else ConflictError).

    A record expired by ``now`` counts as absent: it is left for prune.
    """
    if expected_version is None:
        values = {"wf_id": workflow_id, "now": plan.to_db(now)}
        cursor.execute(plan.delete_one.sql, plan.delete_one.params(values))
        return cursor.rowcount > 0
    if expected_version == 0:  # "only if nothing is stored": there is nothing to delete
        if contains(cursor, plan, workflow_id, now):
            raise version_conflict(workflow_id, 0, None)
        return False
    stmt = plan.delete_if_version
    values = {"wf_id": workflow_id, "expected_version": expected_version, "now": plan.to_db(now)}
    cursor.execute(stmt.sql, stmt.params(values))
    if cursor.rowcount != 1:
        raise version_conflict(workflow_id, expected_version, None)
    return True


def contains(cursor: Cursor, plan: DialectPlan, workflow_id: str, now: datetime) -> bool:
    """Whether a record that has not expired by ``now`` is stored."""
    stmt = plan.select_version
    cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id, "now": plan.to_db(now)}))
    return cursor.fetchone() is not None


def infos(cursor: Cursor, plan: DialectPlan, query: ListQuery) -> list[StoredSnapshotInfo]:
    """The records ``query`` selects, newest first, read from their columns, never from
    their data: one SELECT.

    A damaged record is left out, with a warning naming it, so that one bad row never
    hides the others; with a ``limit``, records further down take its place.
    """
    limit = query.limit
    filters = list_parameters(plan, query)
    if filters is None:
        return []  # a filter value no stored record can hold
    shape, values = filters
    stmt = plan.list_statement(shape)
    rows, unreadable = _listing_rows(cursor, plan, stmt, values)
    if not unreadable:
        listed = _sound_infos(rows, plan)
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


def list_parameters(plan: DialectPlan, query: ListQuery) -> tuple[ListShape, dict[str, Any]] | None:
    """The statement shape and parameters of ``query``; None if nothing can match."""
    to_db = plan.to_db
    values: dict[str, Any] = {"now": to_db(query.now)}
    statuses = query.statuses or ()
    if query.statuses is not None and not statuses:
        return None  # an empty collection asks for no status at all
    for i, status in enumerate(statuses):
        values[f"st_{i}"] = status
    names: tuple[str, ...] = ()
    if query.workflow_names is not None:
        names = tuple(name for name in query.workflow_names if _storable(name, plan.family))
        if not names:
            return None
        for i, name in enumerate(names):
            values[f"wn_{i}"] = name
    ints = _metadata_parameters(plan.family, query.metadata, values)
    if ints is None:
        return None
    if query.updated_before is not None:
        values["before"] = to_db(query.updated_before)
    if query.updated_after is not None:
        values["after"] = to_db(query.updated_after)
    if query.deadline_before is not None:
        values["due"] = to_db(query.deadline_before)
    if query.cursor is not None:
        values["cu"], values["cid"] = to_db(query.cursor[0]), query.cursor[1]
    if query.limit is not None:
        values["limit"] = query.limit
    shape = ListShape(
        statuses=len(statuses),
        names=len(names),
        metadata=len(query.metadata),
        metadata_ints=ints,
        before=query.updated_before is not None,
        after=query.updated_after is not None,
        cursor=query.cursor is not None,
        limited=query.limit is not None,
        deadline_before=query.deadline_before is not None,
    )
    return shape, values


def _storable(text: str, family: str) -> bool:
    """Whether ``text`` can be stored in a column: UTF-8 without lone surrogates, and no
    NUL on PostgreSQL. A filter value that cannot be stored matches nothing."""
    if family == "postgresql" and "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _metadata_parameters(
    family: str, pairs: tuple[tuple[str, Any], ...], values: dict[str, Any]
) -> int | None:
    """Bind the metadata pairs into ``values``; return how many int pairs PostgreSQL
    checks apart, or None if a value can match nothing (stored metadata never holds NUL
    or lone surrogates: the rendering replaces them)."""
    for _, value in pairs:
        if type(value) is str and ("\x00" in value or not _storable(value, family)):
            return None
    if not pairs:
        return 0
    if family == "postgresql":
        values["meta"] = json.dumps(dict(pairs), ensure_ascii=False, separators=(",", ":"))
        ints = [(key, value) for key, value in pairs if type(value) is int]
        for i, (key, value) in enumerate(ints):
            values[f"mik_{i}"], values[f"miv_{i}"] = key, str(value)
        return len(ints)
    for i, (key, value) in enumerate(pairs):
        if family == "sqlite":
            values[f"mk_{i}"] = f'$."{key}"'
            values[f"mt_{i}"], values[f"mv_{i}"] = _sqlite_json_value(value)
        else:
            values[f"mk_{i}"] = f'$."{key}"'
            values[f"mt_{i}"], values[f"mu_{i}"], values[f"mv_{i}"] = _mysql_json_value(value)
    return 0


_SQLITE_INT = range(-(2**63), 2**63)


def _sqlite_json_value(value: str | int | bool) -> tuple[str, Any]:
    """``(json_type, json_extract)`` of a matching value in SQLite."""
    if type(value) is bool:
        return ("true", 1) if value else ("false", 0)
    if type(value) is int:
        # Beyond 64 bits SQLite reads a JSON integer as real: it can match nothing.
        return "integer", value if value in _SQLITE_INT else str(value)
    return "text", value


def _mysql_json_value(value: str | int | bool) -> tuple[str, str, str]:
    """The two ``JSON_TYPE`` names a matching value may have, and its unquoted text."""
    if type(value) is bool:
        return "BOOLEAN", "BOOLEAN", "true" if value else "false"
    if type(value) is int:
        return "INTEGER", "UNSIGNED INTEGER", str(value)
    return "STRING", "STRING", str(value)


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


class _DamagedRow(Exception):
    """A listed row holds what the library never writes."""


def _info_of(row: Any, plan: DialectPlan) -> StoredSnapshotInfo:
    """One listed row as a StoredSnapshotInfo; _DamagedRow (or a conversion error) if
    a column holds what the library never writes."""
    (
        workflow_id, created_at, updated_at, version, status, workflow_name, current_node,
        interrupt, metadata, expires_at, deadline,
    ) = row  # fmt: skip
    if (
        type(workflow_id) is not str
        or type(version) is not int
        or version < 1
        or type(status) is not str
        or (workflow_name is not None and type(workflow_name) is not str)
        or (current_node is not None and type(current_node) is not str)
    ):
        raise _DamagedRow
    from_db = plan.from_db
    created, updated = from_db(created_at), from_db(updated_at)
    expires = None if expires_at is None else from_db(expires_at)
    due = None if deadline is None else from_db(deadline)
    if (
        type(created) is not datetime
        or type(updated) is not datetime
        or (expires is not None and type(expires) is not datetime)
        or (due is not None and type(due) is not datetime)
    ):
        raise _DamagedRow
    interrupt = plan.json_from_db(interrupt)
    metadata = plan.json_from_db(metadata)
    if metadata is None:
        metadata = {}  # a record no save has written since revision 2 came
    elif type(metadata) is not dict:
        raise _DamagedRow
    return StoredSnapshotInfo(
        workflow_id,
        created,
        updated,
        version,
        status=status,
        workflow_name=workflow_name,
        current_node=current_node,
        interrupt=interrupt,
        metadata=metadata,
        expires_at=expires,
        deadline=due,
    )


#: What reading a damaged listed row raises.
_ROW_DAMAGE = (_DamagedRow, *UNCONVERTIBLE)


def _sound_infos(rows: Sequence[Any], plan: DialectPlan) -> list[StoredSnapshotInfo] | None:
    """Every row as listed, or None as soon as one holds a damaged column."""
    try:
        return [_info_of(row, plan) for row in rows]
    except _ROW_DAMAGE:
        return None


def _infos_leaving_out_damage(
    rows: Sequence[Any], plan: DialectPlan, unreadable: list[str]
) -> tuple[list[StoredSnapshotInfo], list[str]]:
    """The sound rows as listed, and a description of each damaged one (the
    ``unreadable`` ones first)."""
    listed, damaged = [], list(unreadable)
    for row in rows:
        workflow_id = row[0]
        if type(workflow_id) is not str:
            damaged.append(f"{_shown(workflow_id)} (its workflow_id is not text)")
            continue
        try:
            listed.append(_info_of(row, plan))
        except _ROW_DAMAGE:
            damaged.append(f"{workflow_id!r} ({_row_fault(plan, row)})")
    return listed, damaged


def _row_fault(plan: DialectPlan, row: Any) -> str:
    """Which column of a listed row is damaged and what it holds."""
    _, created_at, updated_at, version, status, name, node, interrupt, metadata, *stamps = row
    expires, deadline = stamps
    fault = _fault(plan, version, created_at, updated_at, expires, deadline)
    if fault is not None:
        return fault
    for column, value in (("status", status), ("workflow_name", name), ("current_node", node)):
        if type(value) is not str and not (value is None and column != "status"):
            return f"its {column} column holds {_shown(value)}, not text"
    for column, value in (("interrupt", interrupt), ("run_metadata", metadata)):
        try:
            parsed = plan.json_from_db(value)
        except ValueError:
            return f"its {column} column holds {_shown(value)}, not JSON"
        if column == "run_metadata" and parsed is not None and type(parsed) is not dict:
            return f"its run_metadata column holds {_shown(value)}, not a JSON object"
    return "its columns cannot be read"


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


def prune_batch(
    cursor: Cursor, plan: DialectPlan, query: PruneQuery, expired: bool, floor: Any
) -> tuple[int, Any]:
    """Delete one batch of what ``query`` matches; return ``(deleted, next floor)``.

    ``expired``: the batch of records expired by ``query.now``, else the batch of those
    older than ``query.cutoff`` (with a status of ``query.statuses``, when given).
    ``floor`` is what the previous batch of the same kind returned (None for the first).
    """
    values: dict[str, Any] = {"floor": plan.to_db(OLDEST) if floor is None else floor}
    if expired:
        stmt = plan.prune_expired
        values["now"] = plan.to_db(query.now)
    else:
        assert query.cutoff is not None
        statuses = query.statuses or ()
        stmt = plan.prune_old(len(statuses))
        values["cutoff"] = plan.to_db(query.cutoff)
        for i, status in enumerate(statuses):
            values[f"st_{i}"] = status
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


def _fault(
    plan: DialectPlan,
    version: Any,
    created_at: Any,
    updated_at: Any,
    expires_at: Any = None,
    deadline: Any = None,
) -> str | None:
    """Which column of a record is damaged and what it holds; None if none is."""
    if type(version) is not int or version < 1:
        return f"its version column holds {_shown(version)}, not an integer >= 1"
    stamps = [("created_at", created_at), ("updated_at", updated_at)]
    for name, optional in (("expires_at", expires_at), ("deadline", deadline)):
        if optional is not None:
            stamps.append((name, optional))
    for name, value in stamps:
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
        "the driver cannot read its row (a created_at, updated_at or expires_at outside the"
        f" years 1 to 9999?): {first_line(_driver_error(exc))}"
    )


def _json_text_from_db(value: Any) -> Any:
    """A JSON column's text as Python (None stays None: SQL NULL)."""
    return None if value is None else json.loads(value)


def _unchanged(value: Any) -> Any:
    return value


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
    if _is_missing_column(exc):  # a table from before revision wfp_0002
        return PersistenceError(
            f"the table {table!r} lacks columns this version writes: upgrade it once with"
            f" `workflow-persistence migrate` (or your Alembic upgrade): {first_line(exc)}"
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


def _is_missing_column(exc: BaseException) -> bool:
    sqlstate, code = _codes(exc)
    text = str(exc)
    return sqlstate == "42703" or code == 1054 or "no such column" in text or (
        "has no column named" in text
    )


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

    # aiosqlite's connection (under SQLAlchemy's adapter) wraps sqlite3's in ``_conn``.
    raw = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    getlimit = getattr(getattr(raw, "_conn", raw), "getlimit", None)
    if getlimit is None:  # an unknown wrapper: the driver's "too big" error tells instead
        return
    limit = getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the snapshot is {len(data)} bytes, more than SQLite's limit of {limit}",
            size=len(data),
            limit=limit,
        )
