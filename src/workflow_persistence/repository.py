"""WorkflowInterruptRepository: snapshot rows inside the caller's Session and transaction."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar, cast, overload

from sqlalchemy import Connection, inspect
from sqlalchemy.orm import Mapper, Session, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from . import _operations as operations
from ._base import check_aware, check_expected_version, check_limit
from ._ids import check_workflow_id
from ._operations import Cursor, DialectPlan, plan_for
from ._snapshot import StoredSnapshotInfo
from .errors import InvalidArgumentError
from .models import WorkflowInterrupt, WorkflowInterruptMixin

__all__ = ["WorkflowInterruptRepository"]

ModelT = TypeVar("ModelT", bound=WorkflowInterruptMixin)

_CURSOR_KEY = "workflow_persistence.cursor"
_RELEASE_RESULT_BYTES = 256 * 1024
_ENGINE_LOGGER = logging.getLogger("sqlalchemy.engine")


class WorkflowInterruptRepository(Generic[ModelT]):
    """Row-level access to stored snapshots: bytes in, bytes out.

    Every method runs inside ``session``'s current transaction (beginning one if
    needed) and never commits, so a save can share a transaction with the caller's own
    writes and be rolled back with them. Each save is one dialect-native statement with
    a compare-and-set on ``version``. ``model`` is the mapped class: ``WorkflowInterrupt``,
    or a host app's class built on ``WorkflowInterruptMixin``.

    Statements are compiled once and run on the session's own DBAPI connection, which
    keeps a call close to the raw driver's cost. When the engine has cursor event
    listeners or SQL logging (echo, OpenTelemetry and the like), they go through
    ``Connection.exec_driver_sql`` instead, so those listeners see every statement. This
    is decided once per transaction: a listener added in the middle of one sees the
    repository's statements from the next transaction on.
    """

    @overload
    def __init__(
        self: WorkflowInterruptRepository[WorkflowInterrupt], session: Session
    ) -> None: ...

    @overload
    def __init__(self, session: Session, model: type[ModelT]) -> None: ...

    def __init__(self, session: Session, model: type[Any] = WorkflowInterrupt) -> None:
        self.session = session
        self.model = model
        self._mapper: Mapper[Any] = inspect(model)
        if not self._mapper.configured:  # get() builds instances of the mapped class
            configure_mappers()
        self._table: Any = model.__table__
        # What the current transaction uses: (transaction, connection, plan, cursor).
        self._in_transaction: tuple[Any, Connection, DialectPlan, Cursor] | None = None

    # -- where statements run ---------------------------------------------------------------

    def _connection(self) -> tuple[Connection, DialectPlan, Cursor]:
        """The session's connection, plan and cursor, worked out once per transaction."""
        current = self._in_transaction
        transaction = self.session.get_transaction()
        if current is not None and current[0] is transaction and transaction.is_active:
            return current[1], current[2], current[3]
        connection = self.session.connection(bind_arguments={"mapper": self._mapper})
        plan = plan_for(self._table, connection.dialect)
        cursor = self._cursor(connection)
        self._in_transaction = (self.session.get_transaction(), connection, plan, cursor)
        return connection, plan, cursor

    @staticmethod
    def _cursor(connection: Connection) -> Cursor:
        if _instrumented(connection):
            return _ObservedCursor(connection)
        pooled = connection.connection
        cursor = pooled.info.get(_CURSOR_KEY)
        if cursor is None:  # one per DBAPI connection: a new cursor costs ~15 µs
            cursor = pooled.info[_CURSOR_KEY] = pooled.cursor()
        return cast(Cursor, cursor)

    # -- the operations -------------------------------------------------------------------

    def upsert(
        self,
        workflow_id: str,
        data: bytes | bytearray | memoryview,
        *,
        expected_version: int | None = None,
    ) -> int:
        """Create or replace the row; return its new version.

        With ``expected_version=N`` the row is written only if its version is N (0: only
        if there is no row), else ConflictError is raised and nothing changes.
        """
        workflow_id = check_workflow_id(workflow_id)
        expected = check_expected_version(expected_version)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"data must be bytes, not {type(data).__name__}")
        connection, plan, cursor = self._connection()
        version, _ = operations.save(
            cursor, connection.connection, plan, workflow_id, data, expected
        )
        self._forget(workflow_id)
        return version

    def get(self, workflow_id: str) -> ModelT | None:
        """The row as a persistent instance in the session, freshly read, or None.

        Like ``Session.get(..., populate_existing=True)``: an instance the session
        already holds is refreshed and returned, so there is one per row.
        """
        workflow_id = check_workflow_id(workflow_id)
        connection, plan, cursor = self._connection()
        record = operations.read(cursor, plan, workflow_id)
        if record is None:
            return None
        if len(record[0]) >= _RELEASE_RESULT_BYTES and not isinstance(cursor, _ObservedCursor):
            connection.connection.info.pop(_CURSOR_KEY).close()  # don't pin a large result
            self._in_transaction = None
        data, version, created_at, updated_at = record
        key = self._mapper.identity_key_from_primary_key((workflow_id,))
        instance: Any = self.session.identity_map.get(key)
        fresh = instance is None
        if fresh:
            instance = self._mapper.class_manager.new_instance()
            set_committed_value(instance, "workflow_id", workflow_id)
        for name, value in (
            ("data", data), ("version", version), ("created_at", created_at),
            ("updated_at", updated_at),
        ):
            set_committed_value(instance, name, value)
        if fresh:
            make_transient_to_detached(instance)  # it has an identity now
            self.session.add(instance)  # persistent, with no SQL
        return instance  # type: ignore[no-any-return]

    def exists(self, workflow_id: str) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        _, plan, cursor = self._connection()
        return operations.contains(cursor, plan, workflow_id)

    def delete(self, workflow_id: str) -> bool:
        """Delete the row; True if there was one."""
        workflow_id = check_workflow_id(workflow_id)
        _, plan, cursor = self._connection()
        deleted = operations.remove(cursor, plan, workflow_id)
        self._forget(workflow_id, expunge=True)
        return deleted

    def list(
        self, *, updated_before: datetime | None = None, limit: int | None = None
    ) -> builtins.list[StoredSnapshotInfo]:
        """Rows newest first, without loading ``data``."""
        before = None if updated_before is None else check_aware(updated_before, "updated_before")
        limit = check_limit(limit)
        _, plan, cursor = self._connection()
        return operations.infos(cursor, plan, before, limit)

    def delete_older_than(self, cutoff: datetime, *, limit: int | None = None) -> int:
        """Delete rows last updated before ``cutoff`` (at most ``limit``); return how many."""
        cutoff = check_aware(cutoff, "cutoff")
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise InvalidArgumentError(f"limit must be None or an int > 0, not {limit!r}")
        _, plan, cursor = self._connection()
        deleted = operations.delete_older_than(cursor, plan, cutoff, limit)
        # Rows deleted by SQL leave stale instances behind; drop what the session holds.
        for obj in builtins.list(self.session.identity_map.values()):
            if isinstance(obj, self.model) and obj.updated_at < cutoff:
                self.session.expunge(obj)
        return deleted

    def _forget(self, workflow_id: str, *, expunge: bool = False) -> None:
        """Keep the identity map honest after a write to ``workflow_id``'s row."""
        if not self.session.identity_map:
            return
        key = self._mapper.identity_key_from_primary_key((workflow_id,))
        obj = self.session.identity_map.get(key)
        if obj is not None:
            if expunge:
                self.session.expunge(obj)
            else:
                self.session.expire(obj)


def _instrumented(connection: Connection) -> bool:
    """Whether someone watches this engine's statements (listeners or SQL logging)."""
    dispatch = connection.dispatch
    return bool(
        dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or dispatch.before_execute
        or dispatch.after_execute
        or connection.engine.echo
        or _ENGINE_LOGGER.isEnabledFor(logging.INFO)
    )


class _ObservedCursor:
    """A cursor over ``Connection.exec_driver_sql``, so event listeners see statements."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._result: Any = None

    def execute(self, sql: str, params: Any = (), /, **_driver_options: Any) -> Any:
        self._result = self._connection.exec_driver_sql(
            sql, params, execution_options={"preserve_rowcount": True}
        )
        return self._result

    def fetchone(self) -> Any:
        return self._result.fetchone()

    def fetchall(self) -> Sequence[Any]:
        return self._result.fetchall()  # type: ignore[no-any-return]

    @property
    def rowcount(self) -> int:
        return int(self._result.rowcount)

    @property
    def lastrowid(self) -> Any:
        return self._result.lastrowid
