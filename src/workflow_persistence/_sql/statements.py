"""Every SQL statement the library runs, built once per table and database family.

What differs between databases lives here and nowhere else (as SQLAlchemy keeps it in
``dialects/<db>/dml.py``): the repository (inside a caller's Session), DatabasePersistence
(autocommit, one round trip per call) and the benchmarks all use these statements.

Saving is always one statement, never read-then-write:

* no expected version: an upsert. PostgreSQL and SQLite: ``INSERT .. ON CONFLICT DO
  UPDATE .. RETURNING version``. MySQL/MariaDB: ``INSERT .. ON DUPLICATE KEY UPDATE ..,
  version = LAST_INSERT_ID(version + 1)``: MySQL has no RETURNING, and ``LAST_INSERT_ID(expr)``
  hands the new version back in the OK packet (``cursor.lastrowid``); 0 there means the row
  was inserted, so its version is 1.
* expected version 0: insert only if absent (``ON CONFLICT DO NOTHING``; on MySQL a no-op
  ``version = LAST_INSERT_ID(version)`` whose non-zero lastrowid reports the conflict).
* expected version N: ``UPDATE .. WHERE workflow_id = :id AND version = N``; one matched
  row means the new version is N + 1.

Every save writes the queryable columns (status, workflow name, node, question, metadata,
expiry) in that same statement. A record whose ``expires_at`` has passed counts as absent:
a save over it starts again at version 1 with a new ``created_at``, decided inside the
statement (``CASE``/``IF`` on the stored ``expires_at``), so it stays one round trip.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Dialect,
    Insert,
    LargeBinary,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import dml as postgresql_dml
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.elements import ClauseElement

from workflow_persistence._types import UTCDateTime
from workflow_persistence.errors import PersistenceError

__all__ = [
    "COLUMN_PARAMS",
    "PRUNE_BATCH",
    "CompiledSQL",
    "ListShape",
    "TableStatements",
    "family_of",
    "statements_for",
]

#: Rows deleted per prune statement: short statements, short locks.
PRUNE_BATCH = 1000

_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")
_ONE: ColumnElement[int] = literal_column("1")  # inline, so no statement carries a parameter for it
_ZERO: ColumnElement[int] = literal_column("0")
_FAMILIES = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql"}


def family_of(dialect: Dialect) -> str:
    """``postgresql``, ``sqlite`` or ``mysql`` (MySQL and MariaDB share their SQL here)."""
    family = _FAMILIES.get(dialect.name)
    if family is None:
        raise PersistenceError(
            f"the {dialect.name} database is not supported; use SQLite, PostgreSQL,"
            " MySQL or MariaDB"
        )
    return family


@dataclass(frozen=True)
class CompiledSQL:
    """One statement compiled for one dialect, run straight on a DBAPI cursor."""

    sql: str
    positional: tuple[str, ...] | None  # parameter order for qmark/format styles
    defaults: Mapping[str, Any]

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.defaults, **values} if self.defaults else values
        if self.positional is None:
            return merged
        return tuple(merged[name] for name in self.positional)


#: The bind parameter of each queryable column in a save (never named like a column:
#: SQLAlchemy reserves those in an UPDATE's SET clause).
COLUMN_PARAMS = (
    ("status", "wf_status"),
    ("workflow_name", "wf_name"),
    ("current_node", "wf_node"),
    ("interrupt", "wf_interrupt"),
    ("run_metadata", "wf_metadata"),
    ("expires_at", "wf_expires"),
    ("deadline", "wf_deadline"),
)


@dataclass(frozen=True)
class ListShape:
    """What varies between ``list`` statements; one compiled statement per shape."""

    statuses: int  # how many statuses are asked for (0: any)
    names: int  # how many workflow names (0: any)
    metadata: int  # metadata pairs
    metadata_ints: int  # of those, int values (PostgreSQL checks them apart)
    before: bool
    after: bool
    cursor: bool
    limited: bool
    deadline_before: bool = False


class TableStatements:
    """The Core statements for one snapshot table on one database family."""

    def __init__(self, table: Table, family: str) -> None:
        self.table = table
        self.family = family
        c = table.c
        if family == "mysql":
            self.upsert, self.insert_new = self._mysql_inserts()
        else:
            self.upsert, self.insert_new = self._on_conflict_inserts()
        # SQLAlchemy keeps an INSERT's rowcount only when asked to.
        self.insert_new = self.insert_new.execution_options(preserve_rowcount=True)
        by_id: ColumnElement[bool] = c.workflow_id == bindparam("wf_id")
        live = self.live()
        self.update_if_version: Update = (
            update(table)
            .where(by_id, c.version == bindparam("expected_version"), live)
            .values(
                data=bindparam("wf_data"),
                version=c.version + _ONE,
                updated_at=bindparam("now"),
                **self._column_values(),
            )
        )
        self.select_record: Select[Any] = select(
            c.data, c.version, c.created_at, c.updated_at, c.expires_at
        ).where(by_id)
        # The whole row but for the id, for the repository's get().
        self.select_row: Select[Any] = select(
            c.data,
            c.version,
            c.created_at,
            c.updated_at,
            c.expires_at,
            c.status,
            c.workflow_name,
            c.current_node,
            c.interrupt,
            c.run_metadata,
            c.deadline,
        ).where(by_id)
        self.select_version: Select[Any] = select(c.version).where(by_id, live)
        self.delete_one: Delete = delete(table).where(by_id, live)
        self.delete_if_version: Delete = delete(table).where(
            by_id, c.version == bindparam("expected_version"), live
        )
        self.prune_batch: Delete | ReturningDelete[Any] = self._prune_batch()

    def live(self, now: str = "now") -> ColumnElement[bool]:
        """Not expired at ``:now``: expiry counts as absence everywhere."""
        expires_at = self.table.c.expires_at
        return or_(expires_at.is_(None), expires_at > bindparam(now))

    def _column_values(self) -> dict[str, Any]:
        return {column: bindparam(param) for column, param in COLUMN_PARAMS}

    def _new_row(self) -> dict[str, Any]:
        return {
            "workflow_id": bindparam("wf_id"),
            "data": bindparam("wf_data"),
            "version": _ONE,
            "created_at": bindparam("now"),
            "updated_at": bindparam("now"),
            **self._column_values(),
        }

    def _mysql_inserts(self) -> tuple[Insert, Insert]:
        """MySQL runs ON DUPLICATE KEY assignments left to right, each seeing the ones
        before: whatever reads the stored ``expires_at`` comes before it is overwritten."""
        c = self.table.c
        ins = mysql_insert(self.table).values(**self._new_row())
        new = ins.inserted
        expired = c.expires_at <= new.updated_at
        written = [(column, new[column]) for column, _ in COLUMN_PARAMS if column != "expires_at"]
        upsert = ins.on_duplicate_key_update(
            [
                ("version", func.last_insert_id(case((expired, _ONE), else_=c.version + _ONE))),
                ("created_at", case((expired, new.created_at), else_=c.created_at)),
                ("data", new.data),
                ("updated_at", new.updated_at),
                *written,
                ("expires_at", new.expires_at),
            ]
        )

        # Over a live record: LAST_INSERT_ID(version), non-zero, reports the conflict and
        # nothing changes. Over an expired one: LAST_INSERT_ID(0) as for an insert, and
        # every column is written as new.
        def if_expired(column: str) -> Any:
            return (column, case((expired, new[column]), else_=c[column]))

        insert_new = ins.on_duplicate_key_update(
            [
                (
                    "version",
                    func.last_insert_id(case((expired, _ZERO), else_=c.version))
                    + case((expired, _ONE), else_=_ZERO),
                ),
                if_expired("created_at"),
                if_expired("data"),
                if_expired("updated_at"),
                *(if_expired(column) for column, _ in COLUMN_PARAMS if column != "expires_at"),
                if_expired("expires_at"),
            ]
        )
        return upsert, insert_new

    def _on_conflict_inserts(self) -> tuple[Insert, Insert]:
        c = self.table.c
        ins: postgresql_dml.Insert | sqlite_dml.Insert
        if self.family == "postgresql":
            ins = postgresql_insert(self.table).values(**self._new_row())
        else:
            ins = sqlite_insert(self.table).values(**self._new_row())
        new = ins.excluded
        # SET expressions read the stored row as it was before the statement.
        expired = c.expires_at <= new.updated_at
        written = {column: new[column] for column, _ in COLUMN_PARAMS}
        upsert = ins.on_conflict_do_update(
            index_elements=[c.workflow_id],
            set_={
                "data": new.data,
                "version": case((expired, _ONE), else_=c.version + _ONE),
                "created_at": case((expired, new.created_at), else_=c.created_at),
                "updated_at": new.updated_at,
                **written,
            },
        ).returning(c.version)
        # Insert if absent, or over an expired record as if it were absent; a live
        # record matches no row of the WHERE: nothing changes, rowcount 0.
        insert_new = ins.on_conflict_do_update(
            index_elements=[c.workflow_id],
            set_={
                "data": new.data,
                "version": _ONE,
                "created_at": new.created_at,
                "updated_at": new.updated_at,
                **written,
            },
            where=expired,
        )
        return upsert, insert_new

    def delete_older_than(self, batch: int | None) -> Delete:
        """``DELETE`` of records older than ``:cutoff``, at most ``batch`` of them."""
        c = self.table.c
        old: ColumnElement[bool] = c.updated_at < bindparam("cutoff")
        if batch is None:
            return delete(self.table).where(old)
        if self.family == "mysql":
            # MySQL refuses LIMIT inside an IN subquery but has DELETE .. LIMIT.
            return delete(self.table).where(old).with_dialect_options(mysql_limit=batch)
        # The outer condition is checked again on each row, so a record saved since the
        # subquery ran is kept.
        oldest = select(c.workflow_id).where(old).order_by(c.updated_at).limit(batch)
        return delete(self.table).where(c.workflow_id.in_(oldest.scalar_subquery()), old)

    def _prune_batch(self) -> Delete | ReturningDelete[Any]:
        """One batch of ``prune`` by age: at most PRUNE_BATCH records older than ``:cutoff``."""
        return self.prune_batch_by(
            self.table.c.updated_at, self.table.c.updated_at < bindparam("cutoff")
        )

    def prune_expired(self) -> Delete | ReturningDelete[Any]:
        """One batch of expired records (``expires_at <= :now``), by their index."""
        c = self.table.c
        return self.prune_batch_by(c.expires_at, c.expires_at <= bindparam("now"))

    def prune_old(self, statuses: int) -> Delete | ReturningDelete[Any]:
        """One batch of records older than ``:cutoff`` whose status is one of
        ``:st_0``..: ``statuses`` of them (0: any status)."""
        c = self.table.c
        condition: ColumnElement[bool] = c.updated_at < bindparam("cutoff")
        if statuses:
            condition = and_(condition, self._status_in(statuses))
        return self.prune_batch_by(c.updated_at, condition)

    def prune_batch_by(
        self, order: ColumnElement[Any], condition: ColumnElement[bool]
    ) -> Delete | ReturningDelete[Any]:
        """At most PRUNE_BATCH records matching ``condition``, oldest ``order`` first.

        On PostgreSQL and SQLite each batch starts where the last one ended (``:floor``, the
        newest ``order`` value it deleted, which RETURNING hands back): restarting from the
        oldest end of the index would revisit every entry deleted so far, which PostgreSQL
        cannot skip while any transaction is open, making a long prune quadratic.
        """
        if self.family == "mysql":
            # MySQL refuses LIMIT inside an IN subquery but has DELETE .. LIMIT; no
            # RETURNING to move a floor with.
            return delete(self.table).where(condition).with_dialect_options(mysql_limit=PRUNE_BATCH)
        c = self.table.c
        batch = (
            select(c.workflow_id)
            .where(order >= bindparam("floor"), condition)
            .order_by(order)
            .limit(PRUNE_BATCH)
        )
        # The outer condition is checked again on each row, so a record saved since the
        # subquery ran is kept.
        return (
            delete(self.table)
            .where(c.workflow_id.in_(batch.scalar_subquery()), condition)
            .returning(order)
        )

    def _status_in(self, count: int) -> ColumnElement[bool]:
        return self.table.c.status.in_([bindparam(f"st_{i}") for i in range(count)])

    def select_infos(self, shape: ListShape) -> Select[Any]:
        """Listing without ``data``, newest first, ties by ``workflow_id`` (code points).

        Served by the ``(status, updated_at)`` index when statuses are asked for, by the
        ``updated_at`` index otherwise. Parameters: ``:now``; ``:st_<i>``, ``:wn_<i>``;
        per metadata pair ``:mk_<i>``/``:mv_<i>``/``:mt_<i>`` (or ``:meta`` on PostgreSQL);
        ``:before``, ``:after``, ``:due`` (deadline before), ``:cu``/``:cid``, ``:limit``.
        """
        c = self.table.c
        stmt = select(
            c.workflow_id,
            c.created_at,
            c.updated_at,
            c.version,
            c.status,
            c.workflow_name,
            c.current_node,
            c.interrupt,
            c.run_metadata,
            c.expires_at,
            c.deadline,
        ).where(self.live())
        if shape.statuses:
            stmt = stmt.where(self._status_in(shape.statuses))
        if shape.names:
            stmt = stmt.where(
                c.workflow_name.in_([bindparam(f"wn_{i}") for i in range(shape.names)])
            )
        if shape.metadata:
            stmt = stmt.where(*self._metadata_filter(shape))
        if shape.before:
            stmt = stmt.where(c.updated_at < bindparam("before"))
        if shape.after:
            stmt = stmt.where(c.updated_at > bindparam("after"))
        if shape.deadline_before:  # served by the deadline index
            stmt = stmt.where(c.deadline < bindparam("due"))
        workflow_id = self._by_code_points(c.workflow_id)
        if shape.cursor:
            at = bindparam("cu", type_=c.updated_at.type)
            stmt = stmt.where(
                or_(
                    c.updated_at < at,
                    and_(c.updated_at == at, workflow_id < bindparam("cid", type_=String())),
                )
            )
        stmt = stmt.order_by(c.updated_at.desc(), workflow_id.desc())
        return stmt.limit(bindparam("limit")) if shape.limited else stmt

    def _by_code_points(self, column: ColumnElement[str]) -> ColumnElement[str]:
        """``column`` compared by code points: PostgreSQL's database collation may sort by
        language rules; its "C" collation compares UTF-8 bytes, which is code-point order.
        (MySQL's binary collation and SQLite's BINARY already do.)"""
        if self.family == "postgresql":
            return column.collate("C")
        return column

    def _metadata_filter(self, shape: ListShape) -> list[ColumnElement[bool]]:
        """Every metadata pair matched exactly: same JSON type, same value, text by code
        points. Keys and values are bound parameters, never SQL text."""
        meta = self.table.c.run_metadata
        if self.family == "postgresql":
            # One containment test of all pairs (jsonb compares strings exactly, and true
            # is not 1); numbers compare by value there (1 equals 1.0), so an int pair also
            # compares the stored number's text.
            conditions: list[ColumnElement[bool]] = [
                meta.op("@>")(cast(bindparam("meta", type_=String()), JSONB))
            ]
            for i in range(shape.metadata_ints):
                text = meta.op("->>")(bindparam(f"mik_{i}", type_=String()))
                conditions.append(text == bindparam(f"miv_{i}", type_=String()))
            return conditions
        conditions = []
        for i in range(shape.metadata):
            path = bindparam(f"mk_{i}", type_=String())
            if self.family == "sqlite":
                conditions.append(func.json_type(meta, path) == bindparam(f"mt_{i}"))
                conditions.append(func.json_extract(meta, path) == bindparam(f"mv_{i}"))
            else:
                # JSON_TYPE tells INTEGER from BOOLEAN and STRING; the unquoted text
                # compared as bytes is exact (a binary string has no pad space).
                found = func.json_extract(meta, path)
                conditions.append(
                    func.json_type(found).in_([bindparam(f"mt_{i}"), bindparam(f"mu_{i}")])
                )
                conditions.append(
                    cast(func.json_unquote(found), LargeBinary())
                    == cast(bindparam(f"mv_{i}", type_=String()), LargeBinary())
                )
        return conditions

    # -- interpreting results -----------------------------------------------------------

    @staticmethod
    def mysql_upserted_version(lastrowid: int | None, rowcount: int) -> int | None:
        """The version a MySQL upsert wrote: 0 in the OK packet means it inserted (one
        row affected). After an update (two), 0 means the stored version was NULL or -1,
        damaged: None."""
        if lastrowid:
            return lastrowid
        return 1 if rowcount == 1 else None

    def inserted_new(self, rowcount: int, lastrowid: int | None) -> bool:
        """Whether an insert-if-absent inserted (False: a record was already there)."""
        if self.family == "mysql":
            return not lastrowid
        return rowcount == 1

    # -- compiled forms for a DBAPI cursor ------------------------------------------------

    def compile(
        self, stmt: ClauseElement, dialect: Dialect, *, binary: frozenset[str] = frozenset()
    ) -> CompiledSQL:
        """Compile for a DBAPI cursor, with positional parameters.

        ``%(name)s`` placeholders become ``%s`` (``%b`` for the names in ``binary``: psycopg's
        binary format), because a tuple binds faster than a dict.
        """
        compiled = stmt.compile(dialect=dialect)
        sql = compiled.string
        positional = getattr(compiled, "positiontup", None)
        if positional is None and dialect.paramstyle == "pyformat":
            positional = []

            def to_positional(match: re.Match[str]) -> str:
                if match.group(0) == "%%":
                    return "%%"
                positional.append(match.group(1))
                return "%b" if match.group(1) in binary else "%s"

            sql = _PYFORMAT.sub(to_positional, sql)
        defaults = {k: v for k, v in compiled.params.items() if v is not None}
        return CompiledSQL(sql, None if positional is None else tuple(positional), defaults)


_cache: weakref.WeakKeyDictionary[Table, dict[str, TableStatements]] = weakref.WeakKeyDictionary()


def statements_for(table: Table, dialect: Dialect) -> TableStatements:
    """The statements of ``table`` for ``dialect``'s family, built on first use."""
    family = family_of(dialect)
    per_table = _cache.setdefault(table, {})
    statements = per_table.get(family)
    if statements is None:
        statements = per_table[family] = TableStatements(table, family)
    return statements


def timestamp_processors(
    dialect: Dialect,
) -> tuple[Callable[[datetime], Any], Callable[[Any], datetime]]:
    """How a timestamp goes to and comes back from this dialect's driver.

    Taken from the column type itself, so raw DBAPI calls and ORM reads agree exactly.
    """
    impl = UTCDateTime().dialect_impl(dialect)
    to_db: Callable[[datetime], Any] = impl.bind_processor(dialect) or _unchanged
    from_db: Callable[[Any], Any] = impl.result_processor(dialect, None) or _unchanged
    return to_db, from_db


def _unchanged(value: Any) -> Any:
    return value
