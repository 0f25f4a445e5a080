"""AsyncDatabasePersistence: DatabasePersistence's own code on an async driver.

SQLAlchemy's asyncio extension runs sync code on async drivers through greenlets: the
driver's coroutines are awaited wherever the sync code calls the DBAPI. So the async
twin is not a second implementation. Each call runs ``DatabasePersistence``'s code
(checks, serialization, the compiled statements of ``_sql.operations``, the leased
connections of ``leases``, the server-side time limits of ``deadlines``, the table made
through the packaged migrations) inside one greenlet, on connections of an
``AsyncEngine``, and only the waiting happens on the event loop.

What the event loop needs on top, and only that, lives here: waits that must not block
the loop (for a free connection, for the table's first check), the call's ``timeout`` as
an asyncio timeout (the watchdog thread of the sync backend cannot see inside an async
driver), and the event loop the connections belong to.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, Unpack

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import Pool
from sqlalchemy.util import greenlet_spawn

from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo, WorkflowSnapshot
from workflow_persistence._sql.aiomysql_bytes import repair
from workflow_persistence.abc import AsyncPersistence, ListFilters
from workflow_persistence.errors import (
    InvalidArgumentError,
    PersistenceError,
    StorageUnavailableError,
)
from workflow_persistence.models import WorkflowInterrupt, WorkflowInterruptMixin

from .database import (
    DEFAULT_TIMEOUT_SECONDS,
    DatabasePersistence,
    checked_timeout,
    engine_settings,
)
from .leases import Leases

__all__ = ["AsyncDatabasePersistence", "make_async_engine"]

T = TypeVar("T")

#: The async driver a URL without one gets, by backend.
ASYNC_DRIVERS = {
    "postgresql": "psycopg",
    "mysql": "aiomysql",
    "mariadb": "aiomysql",
    "sqlite": "aiosqlite",
}
#: Sync-only drivers, and the async one to name instead.
_SYNC_DRIVERS = {
    "psycopg2": "psycopg",
    "pg8000": "psycopg",
    "pymysql": "aiomysql",
    "mysqldb": "aiomysql",
    "mysqlconnector": "aiomysql",
    "pysqlite": "aiosqlite",
}


def make_async_engine(
    url: str | URL, *, timeout: float | None = None, **options: Any
) -> AsyncEngine:
    """An AsyncEngine for ``url`` with the settings of :func:`make_engine`.

    A URL without a driver gets the async one the extras install (``postgresql://``
    means psycopg 3 in its async mode, ``mysql://`` aiomysql, ``sqlite://`` aiosqlite);
    a sync-only driver is refused.
    """
    parsed, kwargs, listeners = engine_settings(url, timeout, ASYNC_DRIVERS, options)
    backend, _, driver = parsed.drivername.partition("+")
    if driver in _SYNC_DRIVERS:
        raise InvalidArgumentError(
            f"{parsed.drivername} is a sync driver; for AsyncDatabasePersistence use"
            f" {backend}+{_SYNC_DRIVERS[driver]}:// (or {backend}://), or DatabasePersistence"
        )
    if driver == "aiomysql":
        repair()
    try:
        engine = create_async_engine(parsed, **kwargs)
    except (
        sa_exc.ArgumentError,
        sa_exc.NoSuchModuleError,
        sa_exc.InvalidRequestError,
        ImportError,
    ) as exc:
        raise InvalidArgumentError(f"cannot use database URL {parsed!r}: {exc}") from exc
    for listener in listeners:
        event.listen(engine.sync_engine, "connect", listener)
    return engine


def _async_engine_of(bind: object, timeout: float) -> tuple[AsyncEngine, bool]:
    """``(engine, owned)`` for a URL, an AsyncEngine or an async_sessionmaker."""
    if isinstance(bind, str | URL):
        # Pinging is the leases' job: they do it within the call's deadline.
        return make_async_engine(bind, timeout=timeout, pool_pre_ping=False), True
    engine: object = bind
    if isinstance(bind, async_sessionmaker):
        engine = bind.kw.get("bind")
        if engine is None:
            raise InvalidArgumentError(
                "the async_sessionmaker has no bind; configure it with an AsyncEngine"
            )
    if isinstance(engine, AsyncConnection):
        engine = engine.engine
    if isinstance(engine, AsyncEngine):
        if engine.dialect.driver == "aiomysql":
            repair()
        return engine, False
    if isinstance(bind, Engine):
        raise InvalidArgumentError(
            "bind is a sync Engine; give AsyncDatabasePersistence an AsyncEngine (or a URL),"
            " or use DatabasePersistence"
        )
    raise InvalidArgumentError(
        "bind must be a database URL, an AsyncEngine or an async_sessionmaker, not"
        f" {type(bind).__name__}"
    )


class _Core(DatabasePersistence):
    """DatabasePersistence on the AsyncEngine's sync facade; its calls need a greenlet."""

    def __init__(self, engine: Engine, owned: bool, **options: Any) -> None:
        self._given = (engine, owned)
        super().__init__(engine, **options)

    def _engine_for(self, bind: object, timeout: float) -> tuple[Engine, bool]:
        return self._given


@dataclass(frozen=True)
class _OnLoop:
    """The event loop some leases' connections belong to, and the gate of that loop:
    at most as many calls at once as the pool has connections, so that no call ever
    waits inside the (thread-blocking) pool."""

    loop: weakref.ref[asyncio.AbstractEventLoop]
    gate: asyncio.Semaphore | None


_on_loop: weakref.WeakKeyDictionary[Leases, _OnLoop] = weakref.WeakKeyDictionary()
_moving = threading.Lock()
#: One first use (table check, migrations) at a time per loop: Alembic's context is
#: global, and the sync code guards it with a lock that would block the loop.
_first_use: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


class AsyncDatabasePersistence(AsyncPersistence):
    """Stores snapshots in a SQL table from async code: SQLite, PostgreSQL, MySQL, MariaDB.

    The same records as :class:`DatabasePersistence`, written by the same code, through
    an async driver: ``bind`` is a URL (``postgresql://`` uses psycopg 3's async mode,
    ``mysql://`` aiomysql, ``sqlite://`` aiosqlite), an AsyncEngine or an
    async_sessionmaker. Every call returns or raises within about ``timeout`` seconds;
    when every connection is busy, calls wait their turn on the event loop. ``await
    aclose()`` (or ``async with``) closes its connections and disposes an engine it made.

    Its connections belong to the event loop they were opened on. Used from a later event
    loop (``asyncio.run`` twice), it drops them, unused, and opens new ones; used from
    two event loops running at once, the second raises PersistenceError: make one
    persistence per loop.
    """

    def __init__(
        self,
        bind: str | URL | AsyncEngine | async_sessionmaker[Any],
        *,
        serializer: Serializer | None = None,
        create_table: bool = True,
        model: type[WorkflowInterruptMixin] = WorkflowInterrupt,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        timeout = checked_timeout(timeout)
        self.engine, owned = _async_engine_of(bind, timeout)
        self._core = core = _Core(
            self.engine.sync_engine,
            owned,
            serializer=serializer,
            create_table=create_table,
            model=model,
            timeout=timeout,
        )
        self.serializer = core.serializer
        self.timeout = core.timeout
        self.model = core.model
        self.table = core.table
        self._owns_engine = owned
        self._on_loop: _OnLoop | None = None
        # The sync backend's cleanup would wait on the network outside the event loop.
        core._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _cut_off_when_unused, core._leases, self.engine.sync_engine if owned else None
        )

    def __repr__(self) -> str:
        return f"<AsyncDatabasePersistence {self.engine.url!r} table={self.table.name!r}>"

    async def aclose(self) -> None:
        """Close the connections it holds (and dispose an engine made from a URL).

        The persistence stays usable: a later call opens connections again.
        """
        if self._on_loop is not None and self._on_loop.loop() is not asyncio.get_running_loop():
            self._move_to(asyncio.get_running_loop())  # the old loop's are dropped, unused
        await greenlet_spawn(self._core.close)

    async def __aenter__(self) -> AsyncDatabasePersistence:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- AsyncPersistence ---------------------------------------------------------------

    async def save(
        self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None
    ) -> int:
        return await self._call(
            partial(self._core.save, snapshot, expected_version=expected_version), write=True
        )

    async def load(self, workflow_id: str) -> WorkflowSnapshot:
        return await self._call(partial(self._core.load, workflow_id), write=False)

    async def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return await self._call(
            partial(self._core.delete, workflow_id, expected_version=expected_version),
            write=True,
        )

    async def exists(self, workflow_id: str) -> bool:
        return await self._call(partial(self._core.exists, workflow_id), write=False)

    async def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        return await self._call(partial(self._core.list, **filters), write=False)

    async def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        return await self._call(partial(self._core.prune, older_than, status=status), write=True)

    # -- running a call -----------------------------------------------------------------

    async def _call(self, call: Callable[[], T], *, write: bool) -> T:
        """Run ``call`` (the sync backend's method) in a greenlet on this loop, within
        ``timeout``."""
        loop = asyncio.get_running_loop()
        on_loop = self._on_loop
        if on_loop is None or on_loop.loop() is not loop:
            on_loop = self._move_to(loop)
        gate = on_loop.gate
        timer = asyncio.timeout(self.timeout)
        admitted = gate is None
        try:
            async with timer:
                if gate is None:
                    return await self._run(call)
                await gate.acquire()
                admitted = True
                try:
                    return await self._run(call)
                finally:
                    gate.release()
        except TimeoutError as exc:
            if not timer.expired():
                raise
            raise self._too_late(admitted=admitted, write=write) from exc

    async def _run(self, call: Callable[[], T]) -> T:
        core = self._core
        if core._plan is None:
            await self._prepare()
        return await greenlet_spawn(call)

    async def _prepare(self) -> None:
        loop = asyncio.get_running_loop()
        lock = _first_use.get(loop)
        if lock is None:
            lock = _first_use.setdefault(loop, asyncio.Lock())
        async with lock:
            if self._core._plan is None:
                await greenlet_spawn(self._core._prepare)

    def _too_late(self, *, admitted: bool, write: bool) -> StorageUnavailableError:
        if not admitted:
            return StorageUnavailableError(
                f"every connection of the pool to {self.engine.url!r} stayed busy for"
                f" {self.timeout:g} s; nothing was sent. Retry, or give the engine a larger"
                " pool_size or max_overflow"
            )
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

    # -- event loops --------------------------------------------------------------------

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> _OnLoop:
        """The connections' loop state for ``loop``; those opened on a loop that no
        longer runs are dropped, unused (they cannot work on another loop)."""
        leases = self._core._leases
        with _moving:
            on_loop = _on_loop.get(leases)
            if on_loop is None or on_loop.loop() is not loop:
                if on_loop is not None:
                    old = on_loop.loop()
                    if old is not None and old.is_running():
                        raise PersistenceError(
                            f"{self!r} is in use on another event loop, running in another"
                            " thread; its connections belong to that loop. Make one"
                            " persistence per event loop"
                        )
                    if leases.exclusive:
                        _cut_off(leases, self.engine.sync_engine if self._owns_engine else None)
                on_loop = _OnLoop(weakref.ref(loop), _gate(leases))
                _on_loop[leases] = on_loop
            self._on_loop = on_loop
            return on_loop


def _gate(leases: Leases) -> asyncio.Semaphore | None:
    size = leases.capacity if leases.serial is None else 1
    return None if size is None else asyncio.Semaphore(size)


#: Async drivers whose connections work on any event loop: psycopg waits through the
#: running loop at each call, aiosqlite through a thread of its own. aiomysql's streams
#: belong to the loop that opened them.
_ANY_LOOP_DRIVERS = frozenset({"psycopg", "aiosqlite"})


def _cut_off(leases: Leases, owned_engine: Engine | None) -> None:
    """Drop the connections of a loop that is gone, without waiting on them."""
    if leases.dialect.driver in _ANY_LOOP_DRIVERS:
        return
    old_pool = leases.pool
    new_pool: Pool | None = None
    if owned_engine is not None:
        owned_engine.dispose(close=False)
        new_pool = owned_engine.pool
    for lease in leases.abandon(new_pool, keep=False):
        _close_socket(lease.conn.dbapi_connection)
        lease.conn.invalidate()  # the driver's close is a no-op now: nothing is awaited
        lease.conn.close()
        if lease.guard is not None:
            lease.guard.close()
    queue = getattr(old_pool, "_pool", None)  # QueuePool's idle connections
    while queue is not None and not queue.empty():
        _close_socket(getattr(queue.get(False), "dbapi_connection", None))


def _cut_off_when_unused(leases: Leases, owned_engine: Engine | None) -> None:
    """When a persistence is garbage collected (there is no event loop to wait on)."""
    leases.detach(partial(_cut_off, leases, owned_engine))


def _close_socket(dbapi_connection: Any) -> None:
    """Close an aiomysql connection's socket without its event loop, which may be closed
    (the transport would schedule its close there), and disarm the driver's own close."""
    driver: Any = getattr(dbapi_connection, "driver_connection", None)
    writer = getattr(driver, "_writer", None)
    if writer is None:
        return
    transport = writer.transport
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        transport._sock = None  # so its finalizer does not close (or warn of) it again
    driver._writer = driver._reader = None
