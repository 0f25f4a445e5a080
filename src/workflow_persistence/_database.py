"""DatabasePersistence: snapshots in the ``workflow_interrupts`` table via SQLAlchemy.

Each call is one statement in autocommit mode: a single statement is atomic on its own,
so one round trip does what BEGIN / statement / COMMIT would do in three. The statements
are the repository's (``_statements``), compiled once per engine and run on the DBAPI
connection of SQLAlchemy's pool. Between calls, connections stay leased (checked out, in
autocommit) so a call does not pay a pool checkout; one left idle for a while goes back
to the pool, whose pre-ping and recycling then apply as usual.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import PoolProxiedConnection, StaticPool

from . import _mysql
from ._base import Record, RecordPersistence, version_conflict
from ._serializers import Serializer
from ._snapshot import StoredSnapshotInfo, utc_now
from ._statements import (
    PRUNE_BATCH,
    CompiledSQL,
    TableStatements,
    statements_for,
    timestamp_processors,
)
from .errors import (
    InvalidArgumentError,
    PayloadTooLargeError,
    PersistenceError,
    StorageUnavailableError,
)
from .models import WorkflowInterrupt, WorkflowInterruptMixin

__all__ = ["DatabasePersistence", "make_engine"]

#: A leased connection idle longer than this goes back to the pool (seconds).
IDLE_RETURN_SECONDS = 30.0
#: Where the first prune batch starts: before any timestamp a record can carry.
_OLDEST = datetime(1, 1, 1, tzinfo=UTC)
#: After loading a record this large, the lease's cursor is replaced to free the result.
_RELEASE_RESULT_BYTES = 256 * 1024
CONNECT_TIMEOUT_SECONDS = 5
#: PyMySQL reads after the handshake; above InnoDB's default 50 s lock wait.
MYSQL_READ_TIMEOUT_SECONDS = 60.0
_DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}


def make_engine(url: str | URL, **options: Any) -> Engine:
    """An Engine for ``url`` with the settings the library relies on.

    A URL without a driver gets the one the extras install (``postgresql://`` means
    psycopg 3, ``mysql://`` PyMySQL); connecting gives up after a few seconds; pooled
    connections are pinged before reuse; a SQLite file is switched to write-ahead
    logging; in-memory SQLite is one connection shared by all threads.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise InvalidArgumentError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if "+" not in parsed.drivername and backend in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=f"{backend}+{_DEFAULT_DRIVERS[backend]}")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    connect_args: dict[str, Any] = {}
    sqlite_file = False
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
            connect_args["check_same_thread"] = False
        else:
            sqlite_file = True
    elif backend in ("postgresql", "mysql", "mariadb"):
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        if backend != "postgresql" and "charset" not in parsed.query:
            connect_args["charset"] = "utf8mb4"
    driver = parsed.drivername.partition("+")[2]  # without loading the dialect
    bound_handshake = driver == "pymysql" and "read_timeout" not in parsed.query
    if bound_handshake:
        # PyMySQL's connect_timeout covers only the TCP connect; a peer that accepts and
        # never greets would hang the handshake, which is read under read_timeout.
        connect_args["read_timeout"] = CONNECT_TIMEOUT_SECONDS
    if connect_args:
        kwargs["connect_args"] = connect_args
    kwargs.update(options)
    try:
        engine = create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise InvalidArgumentError(f"cannot use database URL {parsed!r}: {exc}") from exc
    if bound_handshake:
        event.listen(engine, "connect", _widen_pymysql_read_timeout)
    if sqlite_file:
        event.listen(engine, "connect", _use_write_ahead_log)
    return engine


def _use_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """SQLite files in WAL mode: one fsync per commit instead of four, and readers that
    work alongside a writer. ``synchronous`` stays FULL, so a save survives power loss.
    (WAL needs a local file system; pass your own Engine to keep another journal mode.)
    """
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _widen_pymysql_read_timeout(dbapi_connection: Any, _record: Any) -> None:
    """After the handshake, give statements (and lock waits) a longer read timeout."""
    if hasattr(dbapi_connection, "_read_timeout"):
        dbapi_connection._read_timeout = MYSQL_READ_TIMEOUT_SECONDS


def _engine_of(bind: object) -> tuple[Engine, bool]:
    """``(engine, owned)`` for a URL, an Engine or a sessionmaker."""
    if isinstance(bind, str | URL):
        return make_engine(bind), True
    if isinstance(bind, Engine):
        return bind, False
    if isinstance(bind, sessionmaker):
        target = bind.kw.get("bind")
        if target is None:
            raise InvalidArgumentError("the sessionmaker has no bind; configure it with an Engine")
        engine = getattr(target, "engine", None)
        if isinstance(engine, Engine):
            return engine, False
    raise InvalidArgumentError(
        f"bind must be a database URL, an Engine or a sessionmaker, not {type(bind).__name__}"
    )


@dataclass(frozen=True)
class _Plan:
    """Everything the hot path needs, prepared once per persistence."""

    statements: TableStatements
    upsert: CompiledSQL
    insert_new: CompiledSQL
    update_if_version: CompiledSQL
    select_record: CompiledSQL
    select_version: CompiledSQL
    delete_one: CompiledSQL
    prune_batch: CompiledSQL
    list_variants: dict[tuple[bool, bool], CompiledSQL]
    to_db: Callable[[datetime], Any]
    from_db: Callable[[Any], datetime]
    select_options: dict[str, Any]  # psycopg 3: binary=True, so bytea is not sent as hex
    unprepared: dict[str, Any]  # psycopg 3: prepare=False, for the prune batches
    family: str
    driver: str


class _Lease:
    """A pooled connection in autocommit, with the cursor its calls reuse."""

    __slots__ = ("conn", "cursor")

    def __init__(self, conn: PoolProxiedConnection) -> None:
        self.conn = conn
        self.cursor: Any = conn.cursor()  # a new cursor per call would cost ~15 µs

    def fresh_cursor(self) -> None:
        """Drop the cursor, and the last result it holds, for a new one."""
        self.cursor.close()
        self.cursor = self.conn.cursor()


class _Leases:
    """Pooled connections kept checked out, in autocommit, between calls.

    ``list.append`` and ``list.pop`` are atomic, so threads share the list without a
    lock; a connection is only ever used by the thread that popped it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.idle: list[tuple[_Lease, float]] = []
        self.max_idle = max(int(getattr(engine.pool, "size", lambda: 5)()), 1)
        self.pid = os.getpid()

    def acquire(self) -> _Lease:
        idle = self.idle
        now = time.monotonic()
        while idle:
            try:
                lease, since = idle.pop()
            except IndexError:
                break
            if now - since < IDLE_RETURN_SECONDS:
                return lease
            self.give_back(lease)
        return self.checkout()

    def checkout(self) -> _Lease:
        try:
            conn = self.engine.raw_connection()
        except (sa_exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error, OSError) as exc:
            # raw_connection() hands over the driver's own exception, unwrapped.
            raise StorageUnavailableError(
                f"cannot connect to the database {self.engine.url!r}: {_first_line(exc)}"
            ) from exc
        try:
            dbapi_connection = conn.dbapi_connection
            if dbapi_connection is None:
                raise RuntimeError("the pool handed out a closed connection")
            self.engine.dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
            return _Lease(conn)
        except Exception as exc:
            conn.invalidate(exc)
            conn.close()
            raise StorageUnavailableError(f"cannot configure the connection: {exc}") from exc

    def release(self, lease: _Lease) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append((lease, time.monotonic()))
        else:
            self.give_back(lease)

    def give_back(self, lease: _Lease) -> None:
        """Return a connection to SQLAlchemy's pool, as the pool handed it out."""
        conn = lease.conn
        try:
            lease.cursor.close()
            if conn.dbapi_connection is not None:
                self.engine.dialect.reset_isolation_level(conn.dbapi_connection)
        except Exception as exc:
            conn.invalidate(exc)
        conn.close()

    def discard(self, lease: _Lease, exc: BaseException) -> None:
        lease.conn.invalidate(exc if isinstance(exc, Exception) else None)
        lease.conn.close()

    def close(self) -> None:
        while self.idle:
            try:
                lease, _ = self.idle.pop()
            except IndexError:
                break
            self.give_back(lease)


_live_leases: weakref.WeakSet[_Leases] = weakref.WeakSet()
_abandoned: builtins.list[Any] = []


def _after_fork_in_child() -> None:
    # The child must neither use nor close the parent's connections: using one would
    # change the parent's server session (autocommit, for one), closing one would end
    # it. Leased connections stay referenced and forgotten; the engine gets a fresh pool
    # without closing the old one (SQLAlchemy's dispose(close=False) recipe for fork).
    engines = {}
    for leases in builtins.list(_live_leases):
        _abandoned.extend(leases.idle)
        leases.idle = []
        leases.pid = os.getpid()
        engines[id(leases.engine)] = leases.engine
    for engine in engines.values():
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DatabasePersistence(RecordPersistence):
    """Stores snapshots in a SQL table: SQLite, PostgreSQL, MySQL or MariaDB.

    ``bind`` is a URL, an Engine or a sessionmaker. The table is created on first use
    through the packaged Alembic migrations (so the database is stamped), unless
    ``create_table=False``; an existing table is used as it is. ``model`` may name a
    host app's class built on ``WorkflowInterruptMixin``. Thread-safe; call
    :meth:`close` (or use it as a context manager) to hand its connections back.
    """

    def __init__(
        self,
        bind: str | URL | Engine | sessionmaker[Any],
        *,
        serializer: Serializer | None = None,
        create_table: bool = True,
        model: type[WorkflowInterruptMixin] = WorkflowInterrupt,
    ) -> None:
        super().__init__(serializer)
        self.engine, self._owns_engine = _engine_of(bind)
        self.model = model
        self.table: Table = model.__table__  # type: ignore[attr-defined]
        self.create_table = create_table
        self._plan: _Plan | None = None
        self._init_lock = threading.Lock()
        self._leases = _Leases(self.engine)
        _live_leases.add(self._leases)
        self._finalizer = weakref.finalize(
            self, _shutdown, self._leases, self.engine if self._owns_engine else None
        )

    def close(self) -> None:
        """Return leased connections to the pool (and dispose an engine made from a URL).

        The persistence stays usable: a later call leases connections again.
        """
        _shutdown(self._leases, self.engine if self._owns_engine else None)

    def __enter__(self) -> DatabasePersistence:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DatabasePersistence {self.engine.url!r} table={self.table.name!r}>"

    # -- preparing ----------------------------------------------------------------------

    def _prepare(self) -> _Plan:
        with self._init_lock:
            if self._plan is None:
                if self.create_table:
                    self._ensure_table()
                self._plan = self._build_plan()
            return self._plan

    def _ensure_table(self) -> None:
        try:
            if inspect(self.engine).has_table(self.table.name, schema=self.table.schema):
                return
            if self.model is WorkflowInterrupt:
                from .migrations import upgrade

                try:
                    upgrade(self.engine)
                except Exception:
                    # Another process may have created it at the same moment.
                    if not inspect(self.engine).has_table(self.table.name):
                        raise
            else:
                self.table.create(self.engine, checkfirst=True)
        except sa_exc.OperationalError as exc:
            raise StorageUnavailableError(
                f"cannot reach the database {self.engine.url!r}: {_first_line(exc)}"
            ) from exc

    def _build_plan(self) -> _Plan:
        dialect = self.engine.dialect
        if dialect.server_version_info is None:  # learn the server before compiling
            self._leases.release(self._leases.checkout())
        statements = statements_for(self.table, dialect)
        to_db, from_db = timestamp_processors(dialect)
        select_options: dict[str, Any] = {}
        binary: frozenset[str] = frozenset()
        if dialect.driver == "psycopg":
            # Send and receive the blob in binary format instead of hex text.
            binary = frozenset({"wf_data"})
            select_options["binary"] = True

        def compile_(stmt: Any, dialect: Any) -> CompiledSQL:
            return statements.compile(stmt, dialect, binary=binary)

        return _Plan(
            statements=statements,
            upsert=compile_(statements.upsert, dialect),
            insert_new=compile_(statements.insert_new, dialect),
            update_if_version=compile_(statements.update_if_version, dialect),
            select_record=compile_(statements.select_record, dialect),
            select_version=compile_(statements.select_version, dialect),
            delete_one=compile_(statements.delete_one, dialect),
            prune_batch=compile_(statements.prune_batch, dialect),
            list_variants={
                (before, limited): compile_(
                    statements.select_infos(before=before, limited=limited), dialect
                )
                for before in (False, True)
                for limited in (False, True)
            },
            to_db=to_db,
            from_db=from_db,
            select_options=select_options,
            unprepared={"prepare": False} if dialect.driver == "psycopg" else {},
            family=statements.family,
            driver=dialect.driver,
        )

    # -- running one statement ----------------------------------------------------------

    def _run(self, fn: Callable[[_Lease, _Plan], Any], *, read_only: bool = False) -> Any:
        """Run ``fn(lease, plan)`` on a leased connection in autocommit.

        A read that finds its leased connection dead (the server restarted, or closed
        an idle session) is retried once on a fresh one; a write is not, because whether
        it reached the server before the connection broke cannot be known.
        """
        plan = self._plan or self._prepare()
        leases = self._leases
        lease = leases.acquire()
        for attempt in (1, 2):
            try:
                result = fn(lease, plan)
            except PersistenceError:
                leases.release(lease)
                raise
            except BaseException as exc:
                retry = read_only and attempt == 1 and self._is_disconnect(lease, exc)
                translated = self._failed(lease, exc)
                if retry:
                    lease = leases.checkout()
                    continue
                if translated is exc:
                    raise
                raise translated from exc
            leases.release(lease)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_disconnect(self, lease: _Lease, exc: BaseException) -> bool:
        dialect = self.engine.dialect
        return isinstance(exc, dialect.loaded_dbapi.Error) and bool(
            dialect.is_disconnect(exc, lease.conn.dbapi_connection, lease.cursor)
        )

    def _failed(self, lease: _Lease, exc: BaseException) -> BaseException:
        """Translate a driver error; drop the connection if it is broken."""
        dialect = self.engine.dialect
        dbapi = dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            self._leases.discard(lease, exc)
            return exc
        if _is_missing_table(exc):  # before OperationalError: SQLite reports it as one
            self._leases.release(lease)
            return PersistenceError(
                f"the table {self.table.name!r} does not exist: run `workflow-persistence"
                " migrate` (or your Alembic upgrade), or pass create_table=True"
            )
        if dialect.is_disconnect(exc, lease.conn.dbapi_connection, lease.cursor) or isinstance(
            exc, dbapi.OperationalError | dbapi.InterfaceError
        ):
            self._leases.discard(lease, exc)
            if _is_too_large(exc):
                return PayloadTooLargeError(f"the database refused the snapshot: {exc}")
            return StorageUnavailableError(f"the database is unavailable: {_first_line(exc)}")
        self._leases.release(lease)
        if _is_too_large(exc):
            return PayloadTooLargeError(f"the database refused the snapshot: {exc}")
        return PersistenceError(f"database error: {_first_line(exc)}")

    # -- RecordPersistence --------------------------------------------------------------

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None
    ) -> tuple[int, datetime]:
        def write(lease: _Lease, plan: _Plan) -> tuple[int, datetime]:
            if plan.family == "mysql":
                _mysql.check_packet_size(lease.conn, data)
            elif plan.family == "sqlite":
                _check_sqlite_length(lease.conn.dbapi_connection, data)
            cursor = lease.cursor
            now = utc_now()
            values = {"wf_id": workflow_id, "wf_data": data, "now": plan.to_db(now)}
            if expected_version is None:
                cursor.execute(plan.upsert.sql, plan.upsert.params(values))
                if plan.family == "mysql":
                    return plan.statements.upserted_version(None, cursor.lastrowid), now
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

        return self._run(write)  # type: ignore[no-any-return]

    def _read(self, workflow_id: str) -> Record | None:
        def read(lease: _Lease, plan: _Plan) -> Record | None:
            cursor = lease.cursor
            stmt = plan.select_record
            cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}), **plan.select_options)
            row = cursor.fetchone()
            if row is None:
                return None
            data, version, created_at, updated_at = row
            if type(data) is not bytes:
                data = bytes(data)
            if len(data) >= _RELEASE_RESULT_BYTES:
                lease.fresh_cursor()  # an idle lease must not pin a large result
            return data, version, plan.from_db(created_at), plan.from_db(updated_at)

        return self._run(read, read_only=True)  # type: ignore[no-any-return]

    def _remove(self, workflow_id: str) -> bool:
        def remove(lease: _Lease, plan: _Plan) -> bool:
            stmt = plan.delete_one
            lease.cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}))
            return bool(lease.cursor.rowcount > 0)

        return self._run(remove)  # type: ignore[no-any-return]

    def _contains(self, workflow_id: str) -> bool:
        def contains(lease: _Lease, plan: _Plan) -> bool:
            stmt = plan.select_version
            lease.cursor.execute(stmt.sql, stmt.params({"wf_id": workflow_id}))
            return lease.cursor.fetchone() is not None

        return self._run(contains, read_only=True)  # type: ignore[no-any-return]

    def _infos(
        self, updated_before: datetime | None, limit: int | None
    ) -> builtins.list[StoredSnapshotInfo]:
        if limit == 0:
            return []

        def infos(lease: _Lease, plan: _Plan) -> builtins.list[StoredSnapshotInfo]:
            stmt = plan.list_variants[(updated_before is not None, limit is not None)]
            values: dict[str, Any] = {}
            if updated_before is not None:
                values["before"] = plan.to_db(updated_before)
            if limit is not None:
                values["limit"] = limit
            lease.cursor.execute(stmt.sql, stmt.params(values))
            from_db = plan.from_db
            return [
                StoredSnapshotInfo(wid, from_db(created), from_db(updated), version)
                for wid, created, updated, version in lease.cursor.fetchall()
            ]

        return self._run(infos, read_only=True)  # type: ignore[no-any-return]

    def _remove_older_than(self, cutoff: datetime) -> int:
        floor: Any = None

        def remove_batch(lease: _Lease, plan: _Plan) -> tuple[int, Any]:
            stmt = plan.prune_batch
            values = {"cutoff": plan.to_db(cutoff), "floor": floor}
            if floor is None:
                values["floor"] = plan.to_db(_OLDEST)
            # Not prepared: a generic plan for the two bounds scans far more of the index.
            lease.cursor.execute(stmt.sql, stmt.params(values), **plan.unprepared)
            if plan.family == "mysql":
                return int(lease.cursor.rowcount), None
            deleted = [row[0] for row in lease.cursor.fetchall()]
            return len(deleted), max(deleted, default=None)

        total = 0
        while True:  # one short statement per batch, each its own transaction
            removed: int
            removed, newest = self._run(remove_batch)
            total += removed
            if removed < PRUNE_BATCH:
                return total
            floor = newest  # the next batch starts where this one ended


def _shutdown(leases: _Leases, owned_engine: Engine | None) -> None:
    if leases.pid == os.getpid():
        leases.close()
        if owned_engine is not None:
            owned_engine.dispose()


def _check_sqlite_length(dbapi_connection: Any, data: bytes) -> None:
    import sqlite3

    limit = dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the snapshot is {len(data)} bytes, more than SQLite's limit of {limit}",
            size=len(data),
            limit=limit,
        )


def _is_too_large(exc: BaseException) -> bool:
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(
        exc, "sqlstate", None
    )
    if sqlstate == "54000":  # PostgreSQL: program_limit_exceeded
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in (1153, 1301):  # MySQL: packet too large / result too large
        return True
    return "too big" in str(exc).lower()


def _is_missing_table(exc: BaseException) -> bool:
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None)
    if sqlstate == "42P01":
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code == 1146 or "no such table" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
