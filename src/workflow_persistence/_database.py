"""DatabasePersistence: snapshots in the ``workflow_interrupts`` table via SQLAlchemy.

Each call is one statement in autocommit mode (prune: one per batch): a single statement
is atomic on its own, so one round trip does what BEGIN / statement / COMMIT would do in
three. The statements
and the code running them are the repository's (``_operations``), compiled once per
engine and run on the DBAPI connection of SQLAlchemy's pool. Between calls, connections
stay leased (checked out, in autocommit) so a call does not pay a pool checkout; one left
idle for a while goes back to the pool, whose pre-ping and recycling then apply as usual.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import PoolProxiedConnection, SingletonThreadPool, StaticPool

from . import _operations as operations
from ._base import ListQuery, PruneQuery, Record, RecordPersistence
from ._columns import SnapshotColumns
from ._operations import PRUNE_BATCH, DialectPlan, plan_for
from ._serializers import Serializer
from ._snapshot import StoredSnapshotInfo
from .errors import (
    InvalidArgumentError,
    PersistenceError,
    StorageUnavailableError,
)
from .models import WorkflowInterrupt, WorkflowInterruptMixin

__all__ = ["DatabasePersistence", "make_engine"]

#: A leased connection idle longer than this goes back to the pool (seconds).
IDLE_RETURN_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5
#: PyMySQL reads after the handshake; above InnoDB's default 50 s lock wait.
MYSQL_READ_TIMEOUT_SECONDS = 60.0
_POSTGRESQL_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms: unacknowledged data this long means the peer is gone
}
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
        if backend == "postgresql":
            # psycopg has no read timeout: let TCP find a peer that vanished (no reset, as
            # when a server fails over) in about a minute instead of fifteen.
            for name, value in _POSTGRESQL_KEEPALIVE.items():
                if name not in parsed.query:
                    connect_args[name] = value
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
        pool = engine.pool
        size = getattr(pool, "size", None)
        size = size() if callable(size) else size
        # A SingletonThreadPool's connections belong to their threads: never share one.
        self.max_idle = 0 if isinstance(pool, SingletonThreadPool) else max(int(size or 5), 1)
        # A StaticPool has one connection for every thread: take turns on it.
        self.serial: threading.Lock | None = (
            threading.Lock() if isinstance(pool, StaticPool) else None
        )
        self._sweeping = threading.Lock()
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
                f"cannot connect to the database {self.engine.url!r}: {operations.first_line(exc)}"
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
        idle = self.idle
        now = time.monotonic()
        if len(idle) < self.max_idle:
            idle.append((lease, now))
        else:
            self.give_back(lease)
        # The stack is used from its top: leases at the bottom can sit idle for good, out
        # of the pool's reach (its recycling, pre-ping, other users). Return stale ones.
        try:
            oldest = idle[0][1]
        except IndexError:  # emptied by another thread meanwhile
            return
        if now - oldest >= IDLE_RETURN_SECONDS and self._sweeping.acquire(False):
            try:
                self._sweep(now)
            finally:
                self._sweeping.release()

    def _sweep(self, now: float) -> None:
        idle = self.idle
        while True:  # other threads pop and push meanwhile: every step may find it changed
            try:
                if now - idle[0][1] < IDLE_RETURN_SECONDS:
                    return
                lease, since = idle.pop(0)
            except IndexError:
                return
            if now - since >= IDLE_RETURN_SECONDS:
                self.give_back(lease)
            else:  # another thread changed the stack meanwhile: keep this one
                idle.append((lease, since))
                return

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


#: Connections a forked child inherited and must neither use nor close.
_abandoned: builtins.list[Any] = []


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
        self._plan: DialectPlan | None = None
        self._init_lock = threading.Lock()
        self._leases = _Leases(self.engine)
        self._finalizer = weakref.finalize(
            self, _shutdown, self._leases, self.engine if self._owns_engine else None
        )

    def _after_fork(self) -> None:
        # The child must neither use nor close the parent's connections: using one would
        # change the parent's server session (autocommit, for one), closing one would end
        # it. Leased ones stay referenced and forgotten; the engine gets a fresh pool
        # without closing the old one (SQLAlchemy's dispose(close=False) recipe for fork).
        self._init_lock = threading.Lock()
        leases = self._leases
        _abandoned.extend(leases.idle)
        leases.idle = []
        leases.pid = os.getpid()
        leases._sweeping = threading.Lock()
        if leases.serial is not None:
            leases.serial = threading.Lock()
        self.engine.dispose(close=False)

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

    def _prepare(self) -> DialectPlan:
        with self._init_lock:
            if self._plan is None:
                if self.create_table:
                    self._ensure_table()
                if self.engine.dialect.server_version_info is None:
                    # MySQL's statements depend on the server: connect before compiling.
                    self._leases.release(self._leases.checkout())
                self._plan = plan_for(self.table, self.engine.dialect)
            return self._plan

    def _ensure_table(self) -> None:
        try:
            if inspect(self.engine).has_table(self.table.name, schema=self.table.schema):
                from .migrations import require_run_columns

                require_run_columns(self.engine, self.table)  # never upgraded behind the app
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
        except (sa_exc.OperationalError, sa_exc.TimeoutError) as exc:
            raise StorageUnavailableError(
                f"cannot reach the database {self.engine.url!r}: {operations.first_line(exc)}"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise PersistenceError(
                f"cannot create the table {self.table.name!r}: {operations.first_line(exc)}"
            ) from exc

    # -- running one statement ----------------------------------------------------------

    def _run(self, fn: Callable[[_Lease, DialectPlan], Any], *, read_only: bool = False) -> Any:
        """Run ``fn(lease, plan)`` on a leased connection in autocommit.

        A read that finds its leased connection dead (the server restarted, or closed
        an idle session) is retried once on a fresh one; a write is not, because whether
        it reached the server before the connection broke cannot be known.
        """
        plan = self._plan or self._prepare()
        leases = self._leases
        if leases.serial is not None:  # one connection for all threads (in-memory SQLite)
            with leases.serial:
                return self._run_leased(fn, plan, read_only)
        return self._run_leased(fn, plan, read_only)

    def _run_leased(
        self, fn: Callable[[_Lease, DialectPlan], Any], plan: DialectPlan, read_only: bool
    ) -> Any:
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
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            self._leases.discard(lease, exc)
            return exc
        translated, broken = operations.translate_error(
            exc, dialect, lease.conn.dbapi_connection, lease.cursor, self.table.name
        )
        if broken:
            self._leases.discard(lease, exc)
            # The others idle since before the outage are likely broken too: hand them to
            # the pool, whose pre-ping (for engines made from a URL) sorts them out.
            self._leases.close()
        else:
            self._leases.release(lease)
        return translated

    # -- RecordPersistence --------------------------------------------------------------

    def _write(
        self,
        workflow_id: str,
        data: bytes,
        expected_version: int | None,
        columns: SnapshotColumns,
    ) -> tuple[int, datetime]:
        return self._run(  # type: ignore[no-any-return]
            lambda lease, plan: operations.save(
                lease.cursor, lease.conn, plan, workflow_id, data, expected_version, columns
            )
        )

    def _read(self, workflow_id: str) -> Record | None:
        def read(lease: _Lease, plan: DialectPlan) -> Record | None:
            record: Record | None = operations.read(lease.cursor, plan, workflow_id)
            if record is not None and len(record[0]) >= operations.RELEASE_RESULT_BYTES:
                lease.fresh_cursor()  # an idle lease must not pin a large result
            return record

        return self._run(read, read_only=True)  # type: ignore[no-any-return]

    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        return self._run(  # type: ignore[no-any-return]
            lambda lease, plan: operations.remove(
                lease.cursor, plan, workflow_id, expected_version, now
            )
        )

    def _contains(self, workflow_id: str, now: datetime) -> bool:
        return self._run(  # type: ignore[no-any-return]
            lambda lease, plan: operations.contains(lease.cursor, plan, workflow_id, now),
            read_only=True,
        )

    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        if query.limit == 0:
            return []
        return self._run(  # type: ignore[no-any-return]
            lambda lease, plan: operations.infos(lease.cursor, plan, query),
            read_only=True,
        )

    def _prune(self, query: PruneQuery) -> int:
        """Expired records first, then old ones: one short statement per batch, each its
        own transaction."""
        total = self._prune_all(query, expired=True)
        if query.cutoff is not None and query.statuses != ():
            total += self._prune_all(query, expired=False)
        return total

    def _prune_all(self, query: PruneQuery, *, expired: bool) -> int:
        total, floor = 0, None
        while True:
            batch = partial(_prune_batch, query=query, expired=expired, floor=floor)
            removed: int
            removed, floor = self._run(batch)
            total += removed
            if removed < PRUNE_BATCH:
                return total


def _prune_batch(
    lease: _Lease, plan: DialectPlan, *, query: PruneQuery, expired: bool, floor: Any
) -> Any:
    return operations.prune_batch(lease.cursor, plan, query, expired, floor)


def _shutdown(leases: _Leases, owned_engine: Engine | None) -> None:
    if leases.pid == os.getpid():
        leases.close()
        if owned_engine is not None:
            owned_engine.dispose()
