"""DatabasePersistence: snapshots in the ``workflow_interrupts`` table via SQLAlchemy.

Each call is one statement in autocommit mode (prune: one per batch): a single statement
is atomic on its own, so one round trip does what BEGIN / statement / COMMIT would do in
three. The statements and the code running them are the repository's (``_sql.operations``),
compiled once per engine and run on a connection the library keeps leased between calls
(``leases``: from a pool of its own, never the app's). Every call is bounded by the
persistence's ``timeout`` (``deadlines``).
"""

from __future__ import annotations

import builtins
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from workflow_persistence._serialization.columns import SnapshotColumns
from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo
from workflow_persistence._sql import mysql as _mysql
from workflow_persistence._sql import operations
from workflow_persistence._sql.operations import PRUNE_BATCH, DialectPlan, plan_for
from workflow_persistence._telemetry import database_attributes
from workflow_persistence.errors import (
    InvalidArgumentError,
    PersistenceError,
    StorageUnavailableError,
)
from workflow_persistence.models import WorkflowInterrupt, WorkflowInterruptMixin

from .base import ListQuery, PruneQuery, Record, RecordPersistence
from .deadlines import CONNECT_SECONDS, WATCHDOG, server_bound
from .leases import Lease, Leases, leases_beside

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "DatabasePersistence", "make_engine"]

DEFAULT_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = CONNECT_SECONDS
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
_TABLE_SETUP = threading.Lock()


def make_engine(url: str | URL, *, timeout: float | None = None, **options: Any) -> Engine:
    """An Engine for ``url`` with the settings the library relies on.

    A URL without a driver gets the one the extras install (``postgresql://`` means
    psycopg 3, ``mysql://`` PyMySQL); connecting gives up after a few seconds (sooner
    with a shorter ``timeout``, which also bounds waiting for the pool); pooled
    connections are pinged before reuse; a SQLite file is switched to write-ahead
    logging; in-memory SQLite is one connection shared by all threads.
    """
    parsed, kwargs, listeners = engine_settings(url, timeout, _DEFAULT_DRIVERS, options)
    try:
        engine = create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise InvalidArgumentError(f"cannot use database URL {parsed!r}: {exc}") from exc
    for listener in listeners:
        event.listen(engine, "connect", listener)
    return engine


def parse_url(url: str | URL) -> URL:
    try:
        return make_url(url)
    except sa_exc.ArgumentError as exc:
        raise InvalidArgumentError(f"not a database URL: {url!r}") from exc


def engine_settings(
    url: str | URL,
    timeout: float | None,
    drivers: dict[str, str],
    options: dict[str, Any],
) -> tuple[URL, dict[str, Any], builtins.list[Callable[..., None]]]:
    """``(url, create_engine keyword arguments, connect listeners)`` for ``url``, the
    driver of a URL without one taken from ``drivers`` (by backend name)."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if "+" not in parsed.drivername and backend in drivers:
        parsed = parsed.set(drivername=f"{backend}+{drivers[backend]}")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    connect_args: dict[str, Any] = {}
    connect_timeout = CONNECT_TIMEOUT_SECONDS
    if timeout is not None:
        connect_timeout = max(1, min(connect_timeout, math.ceil(timeout)))
    sqlite_file = False
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
            connect_args["check_same_thread"] = False
        else:
            sqlite_file = True
    elif backend in ("postgresql", "mysql", "mariadb"):
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = connect_timeout
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
        connect_args["read_timeout"] = connect_timeout
    if connect_args:
        kwargs["connect_args"] = connect_args
    if timeout is not None and "poolclass" not in kwargs:  # StaticPool never waits
        kwargs["pool_timeout"] = timeout
    kwargs.update(options)
    listeners: builtins.list[Callable[..., None]] = []
    if bound_handshake:
        # A backstop only: the deadline of a call ends its wait first.
        widened = max(MYSQL_READ_TIMEOUT_SECONDS, (timeout or 0) + CONNECT_TIMEOUT_SECONDS)
        listeners.append(partial(_widen_pymysql_read_timeout, seconds=widened))
    if sqlite_file:
        listeners.append(_use_write_ahead_log)
    return parsed, kwargs, listeners


#: SQLite's page cache per connection, in KiB (a negative cache_size): the default 2 MiB
#: holds too little of a large table's indexes; listing what waits among 10^6 runs took
#: 3.3 times as long as among 10^3 with it, 1.5 times with 64 MiB. Pages are taken as
#: they are read, so a small database never uses it all.
SQLITE_CACHE_KIB = 64 * 1024


def _use_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """SQLite files in WAL mode: one fsync per commit instead of four, and readers that
    work alongside a writer. ``synchronous`` stays FULL, so a save survives power loss.
    (WAL needs a local file system; pass your own Engine to keep another journal mode.)
    And a page cache of ``SQLITE_CACHE_KIB`` (only on engines the library makes).
    """
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")


def _widen_pymysql_read_timeout(dbapi_connection: Any, _record: Any, *, seconds: float) -> None:
    """After the handshake, give statements (and lock waits) a longer read timeout."""
    if hasattr(dbapi_connection, "_read_timeout"):
        dbapi_connection._read_timeout = seconds


def _engine_of(bind: object, timeout: float) -> tuple[Engine, bool]:
    """``(engine, owned)`` for a URL, an Engine or a sessionmaker."""
    if isinstance(bind, str | URL):
        # Pinging is the leases' job: they do it within the call's deadline.
        return make_engine(bind, timeout=timeout, pool_pre_ping=False), True
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


class DatabasePersistence(RecordPersistence):
    """Stores snapshots in a SQL table: SQLite, PostgreSQL, MySQL or MariaDB.

    ``bind`` is a URL, an Engine or a sessionmaker. The table is created on first use
    through the packaged Alembic migrations (so the database is stamped), unless
    ``create_table=False``; an existing table is used as it is. ``model`` may name a
    host app's class built on ``WorkflowInterruptMixin``. Every call returns or raises
    within about ``timeout`` seconds. Thread-safe; call :meth:`close` (or use it as a
    context manager) to close the connections it holds.

    With an Engine, the library works on a pool of its own beside the Engine's (same
    connection settings, events and size), so the app's pool is never drawn on.
    """

    def __init__(
        self, bind: str | URL | Engine | sessionmaker[Any], *, serializer: Serializer | None = None,
        create_table: bool = True, model: type[WorkflowInterruptMixin] = WorkflowInterrupt,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(serializer)
        self.timeout = checked_timeout(timeout)
        self.engine, self._owns_engine = self._engine_for(bind, self.timeout)
        self.model = model
        self.table: Table = model.__table__  # type: ignore[attr-defined]
        self.create_table = create_table
        self._plan: DialectPlan | None = None
        self._init_lock = threading.Lock()
        if self._owns_engine:
            engine = self.engine
            self._leases = Leases(engine.pool, engine.dialect, engine.url, exclusive=True)
        else:
            self._leases = leases_beside(self.engine)
        self._leases.attach()
        #: What the server enforces on the library's sessions (None: not ours to set).
        self._bound = server_bound(self.timeout) if self._leases.exclusive else None
        self._finalizer = weakref.finalize(
            self, _release_all, self._leases, self.engine if self._owns_engine else None
        )

    def _engine_for(self, bind: object, timeout: float) -> tuple[Engine, bool]:
        """``(engine, owned)`` for ``bind``: the engine made for a URL is owned."""
        return _engine_of(bind, timeout)

    def _after_fork(self) -> None:
        # The child must neither use nor close the parent's connections (see
        # Leases.after_fork); an engine of our own gets a fresh pool without closing the
        # old one (SQLAlchemy's dispose(close=False) recipe for fork).
        self._init_lock = threading.Lock()
        if self._owns_engine and self._leases.pid != os.getpid():
            self.engine.dispose(close=False)
            self._leases.after_fork(self.engine.pool)
        else:
            self._leases.after_fork()

    def close(self) -> None:
        """Close the connections it holds (and dispose an engine made from a URL).

        The persistence stays usable: a later call opens connections again.
        """
        leases = self._leases
        if leases.pid != os.getpid():
            return
        if self._owns_engine:
            leases.close()
            self.engine.dispose()
            leases.pool = self.engine.pool
        else:
            leases.renew_pool()

    def __enter__(self) -> DatabasePersistence:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _telemetry_attributes(self) -> dict[str, str]:
        return database_attributes(self.engine.dialect, self.table)

    def __repr__(self) -> str:
        return f"<DatabasePersistence {self.engine.url!r} table={self.table.name!r}>"

    # -- preparing ----------------------------------------------------------------------

    def _prepare(self, deadline: float | None = None) -> DialectPlan:
        """First use: the table checked (or created) and the statements compiled."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        if not self._init_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StorageUnavailableError(
                f"the table {self.table.name!r} was still being prepared by another thread"
                f" after {self.timeout:g} s; retry"
            )
        try:
            if self._plan is None:
                if self.create_table:
                    self._ensure_table(deadline)
                if self.engine.dialect.server_version_info is None:
                    # MySQL's statements depend on the server: connect before compiling.
                    self._leases.release(self._leases.acquire(deadline, self._bound), deadline)
                self._plan = plan_for(self.table, self.engine.dialect)
            return self._plan
        finally:
            self._init_lock.release()

    def _ensure_table(self, deadline: float) -> None:
        # One at a time in a process: Alembic's context is global, so two threads
        # running the migrations at once break each other.
        if not _TABLE_SETUP.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StorageUnavailableError(
                f"another thread was still creating a table after {self.timeout:g} s; retry"
            )
        try:
            self._ensure_table_once(deadline)
        finally:
            _TABLE_SETUP.release()

    def _ensure_table_once(self, deadline: float) -> None:
        try:
            if self._table_exists(deadline):
                return
            if self.model is WorkflowInterrupt:
                from workflow_persistence.migrations import upgrade

                try:
                    with self._setup_connection(deadline) as conn, conn.begin():
                        upgrade(conn)
                except StorageUnavailableError:
                    raise
                except Exception:
                    # Another process may have created it at the same moment.
                    if not self._table_exists(deadline):
                        raise
            else:
                with self._setup_connection(deadline) as conn, conn.begin():
                    self.table.create(conn, checkfirst=True)
        except (sa_exc.OperationalError, sa_exc.TimeoutError) as exc:
            raise StorageUnavailableError(
                f"cannot reach the database {self.engine.url!r}: {operations.first_line(exc)}"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise PersistenceError(
                f"cannot create the table {self.table.name!r}: {operations.first_line(exc)}"
            ) from exc

    def _table_exists(self, deadline: float) -> bool:
        """Whether the table exists; one that predates revision wfp_0002 is an error, as
        it is never upgraded behind the app's back."""
        with self._setup_connection(deadline) as conn:
            if not inspect(conn).has_table(self.table.name, schema=self.table.schema):
                return False
            from workflow_persistence.migrations import require_run_columns

            require_run_columns(conn, self.table)
            return True

    @contextmanager
    def _setup_connection(self, deadline: float) -> Iterator[Connection]:
        """A connection for checking or creating the table, within the deadline."""
        if self._leases.exclusive:
            with self._leases.connection(deadline, self._bound) as conn:
                yield conn
        else:  # in-memory SQLite: its database lives in the app's connection
            with self.engine.connect() as conn:
                yield conn

    # -- running one statement ----------------------------------------------------------

    def _run(
        self,
        fn: Callable[[Lease, DialectPlan], Any],
        *,
        read_only: bool = False,
        deadline: float | None = None,
    ) -> Any:
        """Run ``fn(lease, plan)`` on a leased connection in autocommit, by the deadline.

        A read that finds its leased connection dead (the server restarted, or closed
        an idle session) is retried once on a fresh one; a write is not, because whether
        it reached the server before the connection broke cannot be known.
        """
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.timeout
        plan = self._plan or self._prepare(deadline)
        serial = self._leases.serial
        if serial is None:
            return self._run_leased(fn, plan, read_only, deadline, now)
        # One connection for all threads (in-memory SQLite): take turns.
        if not serial.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StorageUnavailableError(
                f"the database connection stayed busy for {self.timeout:g} s; retry"
            )
        try:
            return self._run_leased(fn, plan, read_only, deadline)
        finally:
            serial.release()

    def _run_leased(
        self,
        fn: Callable[[Lease, DialectPlan], Any],
        plan: DialectPlan,
        read_only: bool,
        deadline: float,
        now: float | None = None,
    ) -> Any:
        leases = self._leases
        lease = leases.acquire(deadline, self._bound, now)
        for attempt in (1, 2):
            guard = lease.guard
            if guard is not None:
                WATCHDOG.watch(guard, deadline)
            try:
                result = fn(lease, plan)
            except BaseException as exc:
                if guard is not None and WATCHDOG.unwatch(guard):
                    leases.discard(lease, exc)
                    raise self._no_answer(write=not read_only) from exc
                if isinstance(exc, PersistenceError):
                    leases.release(lease, deadline)
                    raise
                retry = (
                    read_only
                    and attempt == 1
                    and self._is_disconnect(lease, exc)
                    and time.monotonic() < deadline
                )
                translated = self._failed(lease, exc, deadline)
                if retry:
                    lease = leases.acquire(deadline, self._bound)
                    continue
                if translated is exc:
                    raise
                raise translated from exc
            if guard is not None and WATCHDOG.unwatch(guard):
                leases.discard(lease, None)  # the answer came, then the cut: drop it
            else:
                leases.release(lease, deadline)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_disconnect(self, lease: Lease, exc: BaseException) -> bool:
        dialect = self.engine.dialect
        return isinstance(exc, dialect.loaded_dbapi.Error) and bool(
            dialect.is_disconnect(exc, lease.conn.dbapi_connection, lease.cursor)
        )

    def _failed(self, lease: Lease, exc: BaseException, deadline: float) -> BaseException:
        """Translate a driver error; drop the connection if it is broken."""
        leases = self._leases
        dialect = self.engine.dialect
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            leases.discard(lease, exc)
            return exc
        if leases.family == "mysql" and _mysql.is_statement_timeout(exc):
            leases.release(lease, deadline)
            return StorageUnavailableError(
                "the database stopped the statement at its time limit (a lock held by"
                " another transaction, or a slow server), nothing was changed; retry:"
                f" {operations.first_line(exc)}"
            )
        translated, broken = operations.translate_error(
            exc, dialect, lease.conn.dbapi_connection, lease.cursor, self.table.name
        )
        if broken:
            leases.discard(lease, exc)
            # The others idle since before the outage are likely broken too: hand them
            # to the pool, which pings them before they are used again.
            leases.close()
        else:
            leases.release(lease, deadline)
        return translated

    def _no_answer(self, *, write: bool) -> StorageUnavailableError:
        outcome = (
            "Whether the write reached the database is unknown: load the record before"
            " writing it again."
            if write
            else "Retry when the database answers again."
        )
        return StorageUnavailableError(
            f"no answer from the database {self.engine.url!r} within {self.timeout:g} s"
            f" (the server or the network stopped responding); the connection was"
            f" closed. {outcome}"
        )

    # -- RecordPersistence --------------------------------------------------------------

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None, columns: SnapshotColumns
    ) -> tuple[int, datetime]:
        def write(lease: Lease, plan: DialectPlan) -> tuple[int, datetime]:
            return operations.settle_lost_race(
                lambda: operations.save(
                    lease.cursor, lease.conn, plan, workflow_id, data, expected_version, columns
                ),
                workflow_id,
                expected_version,
            )

        return self._run(write)  # type: ignore[no-any-return]

    def _read(self, workflow_id: str) -> Record | None:
        def read(lease: Lease, plan: DialectPlan) -> Record | None:
            record: Record | None = operations.read(lease.cursor, plan, workflow_id)
            if record is not None and len(record[0]) >= operations.RELEASE_RESULT_BYTES:
                lease.fresh_cursor()  # an idle lease must not pin a large result
            return record

        return self._run(read, read_only=True)  # type: ignore[no-any-return]

    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        return self._run(  # type: ignore[no-any-return]
            lambda lease, plan: operations.settle_lost_race(
                lambda: operations.remove(lease.cursor, plan, workflow_id, expected_version, now),
                workflow_id,
                expected_version,
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
        own transaction, all within one ``timeout``."""
        deadline = time.monotonic() + self.timeout  # for the whole prune, not each batch
        total = self._prune_all(query, expired=True, deadline=deadline, done=0)
        if query.cutoff is not None and query.statuses != ():
            total = self._prune_all(query, expired=False, deadline=deadline, done=total)
        return total

    def _prune_all(
        self, query: PruneQuery, *, expired: bool, deadline: float, done: int
    ) -> int:
        total, floor = done, None
        while True:
            if total and time.monotonic() >= deadline:
                raise StorageUnavailableError(
                    f"prune deleted {total} records in its {self.timeout:g} s and stopped;"
                    " call it again to go on where it stopped (or give a longer timeout)"
                )
            batch = partial(_prune_batch, query=query, expired=expired, floor=floor)
            removed: int
            removed, floor = self._run(batch, deadline=deadline)
            total += removed
            if removed < PRUNE_BATCH:
                return total


def _renew_table_setup_lock() -> None:
    global _TABLE_SETUP
    _TABLE_SETUP = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_table_setup_lock)


def checked_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds, not {timeout!r}"
        )
    return float(timeout)


def _prune_batch(
    lease: Lease, plan: DialectPlan, *, query: PruneQuery, expired: bool, floor: Any
) -> Any:
    return operations.prune_batch(lease.cursor, plan, query, expired, floor)


def _release_all(leases: Leases, owned_engine: Engine | None) -> None:
    """When a persistence is garbage collected: hand back what it holds, and dispose the
    engine it made. Leases beside a caller's Engine go back when their last user goes."""
    if leases.pid != os.getpid():
        return
    leases.detach()
    if owned_engine is not None:
        owned_engine.dispose()
