"""WorkflowInterruptRepository: snapshot rows inside the caller's Session and transaction."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, cast, overload

from sqlalchemy import Connection, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Mapper, Session, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from typing_extensions import TypeVar as TypeVar_

from workflow_persistence._serialization.columns import SnapshotColumns, columns_of
from workflow_persistence._sql import aiomysql_bytes, operations
from workflow_persistence._sql.cursors import cursor_factory
from workflow_persistence._sql.operations import Cursor, DialectPlan, plan_for
from workflow_persistence._sql.poolers import SERVER_PID_SQL, through_pooler
from workflow_persistence._storage.base import (
    ListQuery,
    PruneQuery,
    Record,
    check_aware,
    check_expected_version,
)

from ._ids import check_workflow_id
from ._snapshot import UNKNOWN_STATUS, StoredSnapshotInfo, utc_now
from .abc import ListFilters
from .errors import InvalidArgumentError, PersistenceError
from .models import WorkflowInterrupt, WorkflowInterruptMixin

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

#: What ``upsert`` stores: a snapshot encoded by the serializer.
Blob = bytes | bytearray | memoryview

__all__ = ["AsyncWorkflowInterruptRepository", "WorkflowInterruptRepository"]

ModelT = TypeVar("ModelT", bound=WorkflowInterruptMixin)
#: The same, WorkflowInterrupt when no model is given.
ModelOrDefault = TypeVar_("ModelOrDefault", bound=WorkflowInterruptMixin, default=WorkflowInterrupt)
R = TypeVar("R")

_CURSOR_KEY = "workflow_persistence.cursor"
_ENGINE_LOGGER = logging.getLogger("sqlalchemy.engine")


class WorkflowInterruptRepository(Generic[ModelT]):
    """Row-level access to stored snapshots: bytes in, bytes out.

    Every method runs inside ``session``'s current transaction (beginning one if
    needed) and never commits, so a save can share a transaction with the caller's own
    writes and be rolled back with them. Each save is one dialect-native statement with
    a compare-and-set on ``version``. ``model`` is the mapped class: ``WorkflowInterrupt``,
    or a host app's class built on ``WorkflowInterruptMixin``. Driver errors come out as
    the library's own (StorageUnavailableError, PayloadTooLargeError, PersistenceError),
    the driver's as ``__cause__``; after one, the caller rolls the transaction back.

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
        # Worked out once per transaction: (transaction, connection, plan, observed).
        self._in_transaction: tuple[Any, Connection, DialectPlan, bool] | None = None

    # -- where statements run ---------------------------------------------------------------

    def _connection(self) -> tuple[Connection, DialectPlan, bool]:
        current = self._in_transaction
        transaction = self.session.get_transaction()
        if current is not None and current[0] is transaction and transaction.is_active:
            return current[1], current[2], current[3]
        connection = self.session.connection(bind_arguments={"mapper": self._mapper})
        if connection.dialect.driver == "aiomysql":  # aio-libs/aiomysql#1080
            aiomysql_bytes.repair()
        plan = plan_for(self._table, connection.dialect)
        if plan.family == "postgresql":  # psycopg must not prepare behind a pooler
            try:
                through_pooler(connection.connection, partial(_server_pid, connection))
            except sa_exc.DBAPIError as exc:
                raise self._translate(exc.orig or exc, connection, exc) from exc
        observed = _instrumented(connection)
        self._in_transaction = (self.session.get_transaction(), connection, plan, observed)
        return connection, plan, observed

    def _run(self, operation: Callable[[Cursor, Connection, DialectPlan], R]) -> R:
        """Run one operation on the session's connection; translate driver errors."""
        connection, plan, observed = self._connection()
        if observed:
            cursor: Cursor = _ObservedCursor(connection)
        else:
            # Looked up each call: a repository that drops a large result replaces the
            # connection's cursor, and every repository on the session sees the new one.
            info = connection.connection.info
            cursor = info.get(_CURSOR_KEY) or info.setdefault(_CURSOR_KEY, _new_cursor(connection))
        try:
            return operation(cursor, connection, plan)
        except PersistenceError:
            raise
        except sa_exc.DBAPIError as exc:  # the observed path: SQLAlchemy wrapped it
            raise self._translate(exc.orig or exc, connection, exc) from exc
        except Exception as exc:
            if not isinstance(exc, plan.dialect.loaded_dbapi.Error):
                raise
            raise self._translate(exc, connection, exc) from exc

    def _translate(
        self, driver_error: BaseException, connection: Connection, raised: BaseException
    ) -> PersistenceError:
        pooled = connection.connection
        translated, broken = operations.translate_error(
            driver_error, connection.dialect, pooled.dbapi_connection, None, self._table.name
        )
        if broken:  # tell SQLAlchemy, as it would have noticed itself
            connection.invalidate(raised if isinstance(raised, Exception) else None)
            self._in_transaction = None
        return translated

    # -- the operations -------------------------------------------------------------------

    def upsert(
        self, workflow_id: str, data: Blob, *, expected_version: int | None = None,
        columns: SnapshotColumns | None = None,
    ) -> int:
        """Create or replace the row; return its new version.

        With ``expected_version=N`` the row is written only if its version is N (0: only
        if there is no row), else ConflictError is raised and nothing changes. A row whose
        ``expires_at`` has passed counts as absent: it is written over as new (version 1).
        ``columns`` are the queryable columns (status, workflow name, node, question,
        metadata, expiry); without them they are read from ``data`` by decoding it with
        stand-ins for its classes (no class is imported), and status ``"unknown"`` when it
        cannot be decoded. On MySQL and MariaDB the statement sets the session's
        ``LAST_INSERT_ID()``.
        """
        workflow_id = check_workflow_id(workflow_id)
        expected = check_expected_version(expected_version)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"data must be bytes, not {type(data).__name__}")
        if columns is None:
            columns = columns_from_data(data)
        elif not isinstance(columns, SnapshotColumns):
            raise InvalidArgumentError(
                f"columns must be SnapshotColumns or None, not {type(columns).__name__}"
            )
        return self._save(workflow_id, data, expected, columns)[0]

    def _save(
        self,
        workflow_id: str,
        data: bytes | bytearray | memoryview,
        expected_version: int | None,
        columns: SnapshotColumns,
    ) -> tuple[int, datetime]:
        """Write checked arguments; return ``(version, updated_at)``."""
        saved = self._run(
            lambda cursor, connection, plan: operations.save(
                cursor, connection.connection, plan, workflow_id, data, expected_version, columns
            )
        )
        self._forget(workflow_id)
        return saved

    def get(self, workflow_id: str) -> ModelT | None:
        """The row as a persistent instance in the session, freshly read, or None.

        Like ``Session.get(..., populate_existing=True)``: an instance the session
        already holds is refreshed and returned, so there is one per row. A row whose
        columns hold what the library never writes raises CorruptSnapshotError.
        """
        workflow_id = check_workflow_id(workflow_id)
        def read(
            cursor: Cursor, connection: Connection, plan: DialectPlan
        ) -> tuple[Record, dict[str, Any]] | None:
            found = operations.read_row(cursor, plan, workflow_id)
            if found is not None:
                _release_if_large(cursor, connection, len(found[0][0]))
            return found

        found = self._run(read)
        if found is None:
            return None
        (data, version, created_at, updated_at, expires_at), columns = found
        key = self._mapper.identity_key_from_primary_key((workflow_id,))
        instance: Any = self.session.identity_map.get(key)
        fresh = instance is None
        if fresh:
            instance = self._mapper.class_manager.new_instance()
            set_committed_value(instance, "workflow_id", workflow_id)
        for name, value in (
            ("data", data),
            ("version", version),
            ("created_at", created_at),
            ("updated_at", updated_at),
            ("expires_at", expires_at),
            *columns.items(),
        ):
            set_committed_value(instance, name, value)
        if fresh:
            make_transient_to_detached(instance)  # it has an identity now
            self.session.add(instance)  # persistent, with no SQL
        return instance  # type: ignore[no-any-return]

    def exists(self, workflow_id: str) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        """Whether a row that has not expired is stored."""
        now = utc_now()
        return self._run(
            lambda cursor, connection, plan: operations.contains(cursor, plan, workflow_id, now)
        )

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        """Delete the row; True if there was one. With ``expected_version=N``, only if the
        row is at version N, else ConflictError and nothing changes. An expired row counts
        as absent (False; ``delete_older_than`` or a prune removes it)."""
        workflow_id = check_workflow_id(workflow_id)
        expected = check_expected_version(expected_version)
        now = utc_now()
        deleted = self._run(
            lambda cursor, connection, plan: operations.remove(
                cursor, plan, workflow_id, expected, now
            )
        )
        self._forget(workflow_id, expunge=True)
        return deleted

    def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        """Rows that have not expired, newest first (ties by ``workflow_id``), in one
        SELECT that never reads ``data``; filtered as ``Persistence.list`` is. Damaged rows
        are left out (and named in a warning on the ``workflow_persistence`` logger)."""
        return self._infos(ListQuery.checked(**filters))

    def delete_older_than(self, cutoff: datetime, *, limit: int | None = None) -> int:
        """Delete rows last updated before ``cutoff`` (at most ``limit``); return how many."""
        cutoff = check_aware(cutoff, "cutoff")
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise InvalidArgumentError(f"limit must be None or an int > 0, not {limit!r}")
        deleted = self._run(
            lambda cursor, connection, plan: operations.delete_older_than(
                cursor, plan, cutoff, limit
            )
        )
        self._expunge_where(lambda loaded: loaded["updated_at"] < cutoff)
        return deleted

    def _expunge_where(self, deleted: Callable[[dict[str, Any]], bool]) -> None:
        """Rows deleted by SQL leave stale instances behind: drop those the session holds
        whose loaded attributes ``deleted`` matches, and those it cannot tell (an expired
        instance would be loaded, and be gone)."""
        for obj in builtins.list(self.session.identity_map.values()):
            if isinstance(obj, self.model):
                loaded = inspect(obj).dict
                if "updated_at" not in loaded or "status" not in loaded or deleted(loaded):
                    self.session.expunge(obj)

    # -- for SessionPersistence: checked arguments, records rather than instances --------

    def _record(self, workflow_id: str) -> Record | None:
        def read(cursor: Cursor, connection: Connection, plan: DialectPlan) -> Record | None:
            record = operations.read(cursor, plan, workflow_id)
            if record is not None:
                _release_if_large(cursor, connection, len(record[0]))
            return record

        return self._run(read)

    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        if query.limit == 0:
            return []
        return self._run(lambda cursor, connection, plan: operations.infos(cursor, plan, query))

    def _prune(self, query: PruneQuery) -> int:
        """Expired records, then old ones (when ``query`` asks), in batches, all in the
        caller's transaction; the session's instances of deleted rows are dropped."""
        total = self._prune_all(query, expired=True)
        if query.cutoff is not None and query.statuses != ():
            total += self._prune_all(query, expired=False)
        self._expunge_where(
            lambda loaded: query.matches(
                loaded["updated_at"], loaded["status"], loaded.get("expires_at")
            )
        )
        return total

    def _prune_all(self, query: PruneQuery, *, expired: bool) -> int:
        total, floor = 0, None
        while True:
            batch = partial(_prune_batch, query=query, expired=expired, floor=floor)
            removed, floor = self._run(batch)
            total += removed
            if removed < operations.PRUNE_BATCH:
                return total

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


class AsyncWorkflowInterruptRepository(Generic[ModelOrDefault]):
    """:class:`WorkflowInterruptRepository` for an ``AsyncSession``: the same methods as
    coroutines, inside the session's current transaction, never committing.

    Each call runs the sync repository's code through ``AsyncSession.run_sync``, on the
    session's async driver (psycopg's async mode, aiomysql, aiosqlite): the statements
    and their handling exist once. ``get`` returns an instance with every column loaded,
    usable after the call without lazy loading; after ``await session.commit()`` it is
    expired unless the session was made with ``expire_on_commit=False``.
    """

    def __init__(
        self,
        async_session: AsyncSession,
        model: type[ModelOrDefault] = WorkflowInterrupt,  # type: ignore[assignment]
    ) -> None:
        self.async_session = async_session
        self.model = model
        #: The sync repository on the session's ``sync_session``, which does the work.
        self.sync = WorkflowInterruptRepository(async_session.sync_session, model)

    async def upsert(
        self, workflow_id: str, data: Blob, *, expected_version: int | None = None,
        columns: SnapshotColumns | None = None,
    ) -> int:
        """See :meth:`WorkflowInterruptRepository.upsert`."""
        return await run_synced(
            self.async_session,
            lambda: self.sync.upsert(
                workflow_id, data, expected_version=expected_version, columns=columns
            ),
        )

    async def get(self, workflow_id: str) -> ModelOrDefault | None:
        """See :meth:`WorkflowInterruptRepository.get`."""

        def get() -> ModelOrDefault | None:
            instance = self.sync.get(workflow_id)
            if instance is not None:
                for name in inspect(instance).unloaded:  # a host model's own columns
                    getattr(instance, name)
            return instance

        return await run_synced(self.async_session, get)

    async def exists(self, workflow_id: str) -> bool:
        """See :meth:`WorkflowInterruptRepository.exists`."""
        return await run_synced(self.async_session, lambda: self.sync.exists(workflow_id))

    async def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        """See :meth:`WorkflowInterruptRepository.delete`."""
        return await run_synced(
            self.async_session,
            lambda: self.sync.delete(workflow_id, expected_version=expected_version),
        )

    async def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        """See :meth:`WorkflowInterruptRepository.list`."""
        return await run_synced(self.async_session, lambda: self.sync.list(**filters))

    async def delete_older_than(self, cutoff: datetime, *, limit: int | None = None) -> int:
        """See :meth:`WorkflowInterruptRepository.delete_older_than`."""
        return await run_synced(
            self.async_session, lambda: self.sync.delete_older_than(cutoff, limit=limit)
        )


async def run_synced(async_session: AsyncSession, call: Callable[[], R]) -> R:
    """``call()``, sync code on ``async_session.sync_session``, run where it may wait on
    the async driver (SQLAlchemy's greenlet bridge)."""
    return await async_session.run_sync(lambda _session: call())


def columns_from_data(data: bytes | bytearray | memoryview) -> SnapshotColumns:
    """The queryable columns of an encoded snapshot, read with stand-ins for its classes
    (so no class named in it is imported); status "unknown" if it cannot be decoded."""
    try:
        snapshot = _stand_in_serializer().loads(bytes(data))
        return columns_of(snapshot)
    except Exception:  # signed pickle, another format, damage: nothing to read
        return SnapshotColumns(UNKNOWN_STATUS, None, None, None, "{}", None)


_STAND_IN: builtins.list[Any] = []


def _stand_in_serializer() -> Any:
    if not _STAND_IN:
        from workflow_persistence._serialization.serializers import JsonSerializer

        _STAND_IN.append(JsonSerializer(unknown_classes="stand-in"))
    return _STAND_IN[0]


def _prune_batch(
    cursor: Cursor, _connection: Connection, plan: DialectPlan, *, query: PruneQuery,
    expired: bool, floor: Any,
) -> tuple[int, Any]:
    return operations.prune_batch(cursor, plan, query, expired, floor)


def _release_if_large(cursor: Cursor, connection: Connection, size: int) -> None:
    """After reading a large record on ``cursor``, give the connection a fresh cursor so
    the old one's result (the whole record, held by the driver) is freed."""
    if size >= operations.RELEASE_RESULT_BYTES:
        info = connection.connection.info
        if info.get(_CURSOR_KEY) is cursor:
            info[_CURSOR_KEY] = _new_cursor(connection)
            cast(Any, cursor).close()


def _server_pid(connection: Connection) -> Any:
    return connection.exec_driver_sql(SERVER_PID_SQL).scalar()


def _new_cursor(connection: Connection) -> Cursor:
    """A cursor of the connection's driver that takes the operations' execute options
    (psycopg's ``binary=`` on SQLAlchemy's adapter of its async mode too)."""
    return cast(Cursor, cursor_factory(connection.dialect)(connection.connection))


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
    def driver_cursor(self) -> Any:
        """The DBAPI cursor of the last result, to step over a row the driver cannot
        convert (SQLAlchemy closes it when a fetch through the result fails)."""
        return self._result.cursor

    @property
    def rowcount(self) -> int:
        return int(self._result.rowcount)

    @property
    def lastrowid(self) -> Any:
        return self._result.lastrowid
