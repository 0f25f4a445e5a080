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
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import dml as postgresql_dml
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.elements import ClauseElement

from ._types import UTCDateTime
from .errors import PersistenceError

__all__ = ["PRUNE_BATCH", "CompiledSQL", "TableStatements", "family_of", "statements_for"]

#: Rows deleted per prune statement: short statements, short locks.
PRUNE_BATCH = 1000

_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")
_ONE: ColumnElement[int] = literal_column("1")  # inline, so no statement carries a parameter for it
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
        self.update_if_version: Update = (
            update(table)
            .where(by_id, c.version == bindparam("expected_version"))
            .values(
                data=bindparam("wf_data"), version=c.version + _ONE, updated_at=bindparam("now")
            )
        )
        self.select_record: Select[Any] = select(
            c.data, c.version, c.created_at, c.updated_at
        ).where(by_id)
        self.select_version: Select[Any] = select(c.version).where(by_id)
        self.delete_one: Delete = delete(table).where(by_id)
        self.delete_if_version: Delete = delete(table).where(
            by_id, c.version == bindparam("expected_version")
        )
        self.prune_batch: Delete | ReturningDelete[Any] = self._prune_batch()

    def _new_row(self) -> dict[str, Any]:
        return {
            "workflow_id": bindparam("wf_id"),
            "data": bindparam("wf_data"),
            "version": _ONE,
            "created_at": bindparam("now"),
            "updated_at": bindparam("now"),
        }

    def _mysql_inserts(self) -> tuple[Insert, Insert]:
        c = self.table.c
        ins = mysql_insert(self.table).values(**self._new_row())
        upsert = ins.on_duplicate_key_update(
            [
                ("data", ins.inserted.data),
                ("updated_at", ins.inserted.updated_at),
                ("version", func.last_insert_id(c.version + _ONE)),
            ]
        )
        insert_new = ins.on_duplicate_key_update([("version", func.last_insert_id(c.version))])
        return upsert, insert_new

    def _on_conflict_inserts(self) -> tuple[Insert, Insert]:
        c = self.table.c
        ins: postgresql_dml.Insert | sqlite_dml.Insert
        if self.family == "postgresql":
            ins = postgresql_insert(self.table).values(**self._new_row())
        else:
            ins = sqlite_insert(self.table).values(**self._new_row())
        upsert = ins.on_conflict_do_update(
            index_elements=[c.workflow_id],
            set_={
                "data": ins.excluded.data,
                "version": c.version + _ONE,
                "updated_at": ins.excluded.updated_at,
            },
        ).returning(c.version)
        return upsert, ins.on_conflict_do_nothing(index_elements=[c.workflow_id])

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
        """One batch of ``prune``: at most PRUNE_BATCH records older than ``:cutoff``.

        On PostgreSQL and SQLite each batch starts where the last one ended (``:floor``, the
        newest ``updated_at`` it deleted, which RETURNING hands back): restarting from the
        oldest end of the index would revisit every entry deleted so far, which PostgreSQL
        cannot skip while any transaction is open, making a long prune quadratic.
        """
        if self.family == "mysql":
            # DELETE .. LIMIT: no RETURNING to move a floor with.
            return self.delete_older_than(PRUNE_BATCH)
        c = self.table.c
        old: ColumnElement[bool] = c.updated_at < bindparam("cutoff")
        batch = (
            select(c.workflow_id)
            .where(c.updated_at >= bindparam("floor"), old)
            .order_by(c.updated_at)
            .limit(PRUNE_BATCH)
        )
        return (
            delete(self.table)
            .where(c.workflow_id.in_(batch.scalar_subquery()), old)
            .returning(c.updated_at)
        )

    def select_infos(self, *, before: bool, limited: bool) -> Select[Any]:
        """Listing without ``data``, newest first, served by the ``updated_at`` index.

        Parameters: ``:before`` when ``before``, ``:limit`` when ``limited``. No parameter
        is named like a column (SQLAlchemy reserves those in an UPDATE's SET clause).
        """
        c = self.table.c
        stmt = select(c.workflow_id, c.created_at, c.updated_at, c.version)
        if before:
            stmt = stmt.where(c.updated_at < bindparam("before"))
        stmt = stmt.order_by(c.updated_at.desc(), c.workflow_id.desc())
        return stmt.limit(bindparam("limit")) if limited else stmt

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


_cache: weakref.WeakKeyDictionary[Table, dict[str, TableStatements]] = (
    weakref.WeakKeyDictionary()
)


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
