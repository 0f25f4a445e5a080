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
a cancellation on the loop (the watchdog thread of the sync backend cannot see inside an
async driver), and the event loop the connections belong to. On SQLite a call's
statements go to aiosqlite's thread in one trip, not one trip per statement.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.util import await_, greenlet_spawn

from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo, WorkflowSnapshot
from workflow_persistence._sql.aiomysql_bytes import repair
from workflow_persistence._sql.operations import DialectPlan
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
from .leases import Lease, Leases

if TYPE_CHECKING:  # SQLAlchemy's asyncio needs greenlet, from the asyncio extra
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

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
        engine: AsyncEngine = _asyncio_extension().create_async_engine(parsed, **kwargs)
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
    sa_asyncio = _asyncio_extension()
    engine: object = bind
    if isinstance(bind, sa_asyncio.async_sessionmaker):
        engine = bind.kw.get("bind")
        if engine is None:
            raise InvalidArgumentError(
                "the async_sessionmaker has no bind; configure it with an AsyncEngine"
            )
    if isinstance(engine, sa_asyncio.AsyncConnection):
        engine = engine.engine
    if isinstance(engine, sa_asyncio.AsyncEngine):
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


def _asyncio_extension() -> Any:
    """SQLAlchemy's asyncio extension, imported on first use: it needs greenlet."""
    try:
        from sqlalchemy.ext import asyncio as extension
    except ImportError as exc:
        raise InvalidArgumentError(
            "AsyncDatabasePersistence needs SQLAlchemy's asyncio support: install"
            " workflow-persistence[postgresql-async], [mysql-async] or [sqlite-async]"
            f" ({exc})"
        ) from exc
    return extension


class _Core(DatabasePersistence):
    """DatabasePersistence on the AsyncEngine's sync facade; its calls need a greenlet."""

    def __init__(self, engine: Engine, owned: bool, **options: Any) -> None:
        self._given = (engine, owned)
        super().__init__(engine, **options)
        self._one_trip = engine.dialect.driver == "aiosqlite"

    def _engine_for(self, bind: object, timeout: float) -> tuple[Engine, bool]:
        return self._given

    def _run(self, fn: Callable[[Lease, DialectPlan], Any], **options: Any) -> Any:
        if self._one_trip:
            fn = partial(_on_sqlite_thread, fn)
        return super()._run(fn, **options)


def _on_sqlite_thread(fn: Callable[[Lease, DialectPlan], T], lease: Lease, plan: DialectPlan) -> T:
    """``fn(lease, plan)`` in one trip to the thread aiosqlite runs the connection on.

    Through aiosqlite's cursor every statement, and every fetch, is a trip to that thread
    and back (a save is two, some calls more); here all of a call's statements run there
    at once, on sqlite3's own cursor, as aiosqlite's own methods do. Its queue of calls
    is private API, the same that SQLAlchemy's adapter uses; without it, statements go
    one by one.
    """
    queue = getattr(lease.conn.driver_connection, "_execute", None)
    if queue is None:
        return fn(lease, plan)
    try:
        return await_(queue(_on_this_thread, fn, lease.conn, plan))  # type: ignore[no-any-return]
    except Exception as error:  # "connection closed" becomes the driver's error, as usual
        lease.conn.dbapi_connection._handle_exception(error)  # type: ignore[union-attr]
        raise


def _on_this_thread(
    fn: Callable[[Lease, DialectPlan], T], conn: PoolProxiedConnection, plan: DialectPlan
) -> T:
    lease = Lease(conn, None, _sqlite3_cursor)
    lease.cursor = _sqlite3_cursor(conn)
    try:
        return fn(lease, plan)
    finally:
        lease.cursor.close()  # a cursor per call: it costs next to nothing on sqlite3


def _sqlite3_cursor(conn: PoolProxiedConnection) -> Any:
    return conn.driver_connection._conn.cursor()  # type: ignore[union-attr]


class _Deadlines:
    """The calls in flight on one event loop, each cancelled at its deadline, on one timer.

    ``asyncio.timeout`` arms a timer per call and leaves it cancelled in the loop's heap,
    which costs a call more than all of its other work on the event loop. Here a call
    adds its task to a dict; the one timer waits for the earliest deadline. The
    cancellation is told apart from any other as ``asyncio.timeout`` does.
    """

    __slots__ = ("_at", "_calls", "_timer")

    def __init__(self) -> None:
        self._calls: dict[asyncio.Task[Any], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def watch(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], at: float) -> None:
        """Cancel ``task`` at ``at`` (``loop.time()``) unless unwatched before."""
        self._calls[task] = at
        if at < self._at:  # only a shorter timeout than the calls in flight moves it
            if self._timer is not None:
                self._timer.cancel()
            self._at = at
            self._timer = loop.call_at(at, self._expire, loop, at)

    def unwatch(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching; True if the deadline passed and the task was cancelled for it
        (that cancellation is withdrawn here, as ``asyncio.timeout`` does)."""
        if self._calls.pop(task, None) is not None:
            return False
        task.uncancel()
        return True

    def _expire(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._timer, self._at = None, math.inf
        later = math.inf
        for task, at in builtins.list(self._calls.items()):
            if at <= due:
                del self._calls[task]
                task.cancel()
            elif at < later:
                later = at
        if later < math.inf:
            self._at = later
            self._timer = loop.call_at(later, self._expire, loop, later)


class _Gate:
    """At most ``size`` calls at once; the others wait their turn, first come first served.

    An ``asyncio.Semaphore`` whose free path is a plain check: entering it costs no
    coroutine when a connection is free, which is nearly always.
    """

    __slots__ = ("_free", "_waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_enter(self) -> bool:
        if self._free and not self._waiting:
            self._free -= 1
            return True
        return False

    async def enter(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # the turn came together with the cancellation: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def leave(self) -> None:
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # its turn: the place passes on
                return
        self._free += 1


@dataclass(frozen=True)
class _OnLoop:
    """The event loop some leases' connections belong to, and the gate of that loop:
    at most as many calls at once as the pool has connections, so that no call ever
    waits inside the (thread-blocking) pool."""

    loop: weakref.ref[asyncio.AbstractEventLoop]
    gate: _Gate | None
    deadlines: _Deadlines = field(default_factory=_Deadlines)


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
        self, bind: str | URL | AsyncEngine | async_sessionmaker[Any], *,
        serializer: Serializer | None = None, create_table: bool = True,
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
        admitted = gate is None
        task = asyncio.current_task()
        if task is None:  # as asyncio.timeout: a deadline needs a task to cancel
            raise RuntimeError(f"{self!r} must be awaited inside an asyncio task")
        deadlines = on_loop.deadlines
        cancelling = task.cancelling()
        deadlines.watch(loop, task, loop.time() + self.timeout)
        try:
            if gate is None:
                result = await self._run(call)
            else:
                if not gate.try_enter():
                    await gate.enter(loop)
                admitted = True
                try:
                    result = await self._run(call)
                finally:
                    gate.leave()
        except BaseException as exc:
            expired = deadlines.unwatch(task)
            if (
                expired
                and isinstance(exc, asyncio.CancelledError)
                and task.cancelling() <= cancelling  # no one else cancelled it
            ):
                raise self._too_late(admitted=admitted, write=write) from exc
            raise
        deadlines.unwatch(task)
        return result

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
        return self._core._no_answer(write=write)

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


def _gate(leases: Leases) -> _Gate | None:
    size = leases.capacity if leases.serial is None else 1
    return None if size is None else _Gate(size)


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
