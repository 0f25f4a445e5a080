"""The library's connections: kept checked out in autocommit between calls, from its own pool.

A call runs its one statement on a connection it already holds: one round trip, no pool
checkout. Those connections come from a pool only the library draws on:

* for a URL, the pool of the engine the library made;
* for a caller's Engine, a copy of that Engine's pool (``Pool.recreate()``: the same
  creator, connect arguments, events, size, overflow and recycling), shared by every
  DatabasePersistence on the Engine. The app's own pool is never drawn on, so the library
  can never leave it exhausted, and the library's session settings (autocommit, statement
  timeouts) never reach the app's sessions;
* in-memory SQLite (StaticPool, SingletonThreadPool) keeps its database in the connection
  itself, so there the app's pool is used as it is.

When every connection the pool allows is leased, a thread waits for another to release
one, which is handed over still set up. It never waits inside SQLAlchemy's pool, where
connections kept leased would never come back.
"""

from __future__ import annotations

import builtins
import collections
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.pool import (
    AssertionPool,
    Pool,
    PoolProxiedConnection,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from workflow_persistence._sql.cursors import CursorFactory, cursor_factory
from workflow_persistence._sql.operations import first_line
from workflow_persistence._sql.poolers import SERVER_PID_SQL, through_pooler
from workflow_persistence.errors import StorageUnavailableError

from .deadlines import CONNECT_SECONDS, WATCHDOG, Guard, guard_for, session_bounds

__all__ = ["IDLE_RETURN_SECONDS", "Lease", "Leases", "leases_beside"]

#: A leased connection idle longer than this goes back to the pool (seconds).
IDLE_RETURN_SECONDS = 30.0
#: How long handing connections back may take outside a call (close(), a dispose).
GIVE_BACK_SECONDS = 5.0
_DEFAULT_MAX_IDLE = 5
#: In a connection's ``info``: it went back to the pool, so ping it before reuse.
_POOLED_KEY = "workflow_persistence.pooled"
#: In a connection's ``info``: the server-side bound its session carries (seconds).
_BOUND_KEY = "workflow_persistence.bound"

#: Objects a forked child inherited and must neither use nor close.
abandoned: builtins.list[Any] = []


class Lease:
    """A connection in autocommit, with the cursor its calls reuse."""

    __slots__ = ("bound", "conn", "cursor", "guard", "new_cursor")

    def __init__(
        self, conn: PoolProxiedConnection, guard: Guard | None, new_cursor: CursorFactory
    ) -> None:
        self.conn = conn
        self.guard = guard
        self.new_cursor = new_cursor
        self.cursor: Any = None
        self.bound: float | None = None

    def fresh_cursor(self) -> None:
        """Drop the cursor, and the last result it holds, for a new one."""
        self.cursor.close()
        self.cursor = self.new_cursor(self.conn)


class Leases:
    """The connections the library holds on one pool, and the threads waiting for one.

    ``list.append`` and ``list.pop`` are atomic, so a call takes and returns its lease
    without a lock; a lease is only ever used by the thread that popped it. Only
    opening a connection, and waiting in line for one, take the lock.
    """

    def __init__(self, pool: Pool, dialect: Dialect, url: URL, *, exclusive: bool) -> None:
        self.pool = pool
        self.dialect = dialect
        self.url = url
        self.family = _family(dialect)
        self.new_cursor = cursor_factory(dialect)
        #: Only the library uses the pool: its sessions may carry the library's bounds.
        self.exclusive = exclusive
        self.capacity = _capacity(pool) if exclusive else None
        self.max_idle = _max_idle(pool, exclusive)
        self._users = 0  # persistences using these leases
        self._fresh_state()

    def attach(self) -> None:
        """A persistence starts using these leases."""
        with self._users_lock:
            self._users += 1

    def detach(self, close: Callable[[], object] | None = None) -> None:
        """A persistence is gone; when none is left, give the idle leases back, so the
        pool can close them and nothing keeps a connection checked out for good (which
        would also keep the Engine alive, through SQLAlchemy's checked-out records).

        ``close`` does that instead of :meth:`close` (which waits on the network).
        """
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            (close or self.close)()

    def _fresh_state(self) -> None:
        self.idle: list[tuple[Lease, float]] = []
        self.leased = 0  # counted only when the pool has a capacity
        self._lock = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()  # first come first served
        self.waiting = 0  # len(self._queue), read without the lock on the hot path
        # A StaticPool has one connection for every thread: take turns on it.
        self.serial = threading.Lock() if isinstance(self.pool, StaticPool) else None
        self._sweeping = threading.Lock()
        self._users_lock = threading.Lock()
        self.pid = os.getpid()

    # -- taking a lease -----------------------------------------------------------------

    def acquire(self, deadline: float, bound: float | None, now: float | None = None) -> Lease:
        """A lease set up with ``bound``; connecting or waiting gives up at ``deadline``.

        ``now`` is the caller's ``time.monotonic()``, when it has just read it.
        """
        idle = self.idle
        if now is None:
            now = time.monotonic()
        while idle and not self.waiting:  # threads waiting come first
            try:
                lease, since = idle.pop()
            except IndexError:
                break
            if now - since < IDLE_RETURN_SECONDS:
                if lease.bound != bound:  # left by a persistence with another timeout
                    self._rebind(lease, bound, deadline)
                return lease
            self.give_back(lease, deadline)
        return self._new_lease(deadline, bound)

    def _new_lease(self, deadline: float, bound: float | None) -> Lease:
        if self.capacity is None:
            return self._checkout(deadline, bound)
        handed_over = self._wait_for_room(deadline, self.capacity)
        if handed_over is not None:
            if handed_over.bound != bound:
                self._rebind(handed_over, bound, deadline)
            return handed_over
        try:
            return self._checkout(deadline, bound)
        except BaseException:
            self._returned()
            raise

    def _wait_for_room(self, deadline: float, capacity: int) -> Lease | None:
        """A lease another thread released, or None once one more may be opened.

        Threads wait in line: a released lease, or the room a closed one leaves, goes to
        the longest waiting, so a thread that keeps calling cannot take it back first.
        """
        with self._lock:
            if not self._queue:
                try:
                    return self.idle.pop()[0]
                except IndexError:
                    pass
                if self.leased < capacity:
                    self.leased += 1
                    return None
            waiter = _Waiter(self._lock)
            self._queue.append(waiter)
            self.waiting += 1
            self._hand_over_idle()  # one may have come back since the look above
            try:
                while not waiter.served:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StorageUnavailableError(
                            f"all {capacity} connections the pool allows to {self.url!r}"
                            " stayed busy until the call's timeout; retry, or give the"
                            " Engine a larger pool_size or max_overflow"
                        )
                    waiter.ready.wait(remaining)
            finally:
                if not waiter.served:
                    self._queue.remove(waiter)
                    self.waiting -= 1
            return waiter.lease  # None: room for a new connection was passed on

    def _hand_over_idle(self) -> None:
        """Give idle leases to the threads waiting in line (the lock is held)."""
        while self._queue:
            try:
                lease = self.idle.pop()[0]
            except IndexError:
                return
            self._serve(lease)

    def _serve(self, lease: Lease | None) -> None:
        waiter = self._queue.popleft()
        self.waiting -= 1
        waiter.lease = lease
        waiter.served = True
        waiter.ready.notify()

    def _checkout(self, deadline: float, bound: float | None) -> Lease:
        """A connection from the pool, set up; one that went stale in the pool is
        replaced once, as SQLAlchemy's pre-ping would (but within the deadline)."""
        for attempt in (1, 2):
            conn = self._connect(deadline)
            guard = guard_for(conn.dbapi_connection) if self.family != "sqlite" else None
            lease = Lease(conn, guard, self.new_cursor)
            ping = bool(conn.info.pop(_POOLED_KEY, False))
            try:
                self._set_up(lease, bound, deadline, ping=ping)
            except _Stale:
                if attempt == 2:  # pragma: no cover - a fresh connection is never pinged
                    raise
                continue
            return lease
        raise AssertionError("unreachable")  # pragma: no cover

    def _rebind(self, lease: Lease, bound: float | None, deadline: float) -> None:
        try:
            self._set_up(lease, bound, deadline, ping=False)
        except BaseException:
            self._returned()  # _set_up dropped the connection
            raise

    def _connect(self, deadline: float) -> PoolProxiedConnection:
        budget = deadline - time.monotonic()
        if budget <= 0:
            raise StorageUnavailableError(f"no time left to connect to {self.url!r}")
        _connect_budget.seconds = budget
        try:
            return self.pool.connect()
        except (sa_exc.SQLAlchemyError, self.dialect.loaded_dbapi.Error, OSError) as exc:
            # The pool hands over the driver's own exception, unwrapped.
            raise StorageUnavailableError(
                f"cannot connect to the database {self.url!r}: {first_line(exc)}"
            ) from exc
        finally:
            _connect_budget.seconds = None

    def _set_up(self, lease: Lease, bound: float | None, deadline: float, *, ping: bool) -> None:
        """Autocommit, the reused cursor and the session bounds, within the deadline.

        On failure the connection is dropped (not counted back: the caller does that).
        """
        guard = lease.guard
        if guard is not None:
            WATCHDOG.watch(guard, deadline)
        try:
            self._configure(lease, bound, ping=ping)
        except BaseException as exc:
            expired = guard is not None and WATCHDOG.unwatch(guard)
            stale = ping and not expired and self._is_disconnect(lease, exc)
            self._drop(lease, exc)
            if stale:
                raise _Stale from exc
            if expired:
                raise StorageUnavailableError(
                    f"no answer from the database {self.url!r} while setting up a"
                    " connection; the server or the network stopped responding"
                ) from exc
            if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                raise
            raise StorageUnavailableError(
                f"cannot set up a connection to {self.url!r}: {first_line(exc)}"
            ) from exc
        if guard is not None and WATCHDOG.unwatch(guard):
            self._drop(lease, None)
            raise StorageUnavailableError(
                f"no answer from the database {self.url!r} while setting up a connection"
            )

    def _configure(self, lease: Lease, bound: float | None, *, ping: bool) -> None:
        conn = lease.conn
        dbapi_connection = conn.dbapi_connection
        if dbapi_connection is None:
            raise RuntimeError("the pool handed out a closed connection")
        if lease.cursor is None:
            self.dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
            lease.cursor = self.new_cursor(conn)  # a new one per call would cost ~15 µs
        if ping:
            lease.cursor.execute("SELECT 1")
            lease.cursor.fetchall()
        # Through a pooler, a session setting would stay on a server connection that other
        # clients get next: there the watchdog alone bounds a call.
        pooled = self.family == "postgresql" and through_pooler(
            conn, partial(_server_pid, lease)
        )
        if bound is not None and not pooled and conn.info.get(_BOUND_KEY) != bound:
            mariadb = bool(getattr(self.dialect, "is_mariadb", False))
            lease.cursor.execute(session_bounds(self.family, bound, is_mariadb=mariadb))
            conn.info[_BOUND_KEY] = bound
        lease.bound = bound

    def _is_disconnect(self, lease: Lease, exc: BaseException) -> bool:
        dialect = self.dialect
        return isinstance(exc, dialect.loaded_dbapi.Error) and bool(
            dialect.is_disconnect(exc, lease.conn.dbapi_connection, lease.cursor)
        )

    @contextmanager
    def connection(self, deadline: float, bound: float | None) -> Iterator[Connection]:
        """A SQLAlchemy Connection on one of the library's connections, in its default
        transaction mode, for creating the table: opened within the deadline like any
        lease, and cut by the watchdog at the deadline."""
        lease = self.acquire(deadline, bound)
        guard = lease.guard
        if guard is not None:
            WATCHDOG.watch(guard, deadline)
        connection: Connection | None = None
        failure: BaseException | None = None
        try:
            lease.cursor.close()
            dbapi_connection = lease.conn.dbapi_connection
            if dbapi_connection is not None:
                self.dialect.reset_isolation_level(dbapi_connection)
            if self.exclusive:
                lease.conn.info[_POOLED_KEY] = True
            # An Engine over the library's pool, so that SQLAlchemy, noticing a lost
            # connection, invalidates the library's pool rather than the app's.
            engine = Engine(self.pool, self.dialect, self.url)
            connection = Connection(engine, connection=lease.conn)
            yield connection
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:  # still watched: ending the transaction is a round trip too
                if connection is not None:
                    connection.close()
                else:
                    self._drop(lease, failure)
            except Exception as exc:
                lease.conn.invalidate(exc)
            expired = guard is not None and WATCHDOG.unwatch(guard)
            if guard is not None:
                guard.close()
            self._returned()
            if expired and failure is not None:
                raise StorageUnavailableError(  # instead of the driver's error
                    f"no answer from the database {self.url!r} within the call's timeout"
                    " while checking or creating the table (the server or the network"
                    " stopped responding); the connection was closed"
                ) from failure

    # -- returning one ------------------------------------------------------------------

    def release(self, lease: Lease, deadline: float) -> None:
        """Keep a lease for the next call (or hand it to a waiting thread)."""
        idle = self.idle
        now = time.monotonic()
        if len(idle) < self.max_idle or self.waiting:
            idle.append((lease, now))
            if self.waiting:
                with self._lock:
                    self._hand_over_idle()
        else:
            self.give_back(lease, deadline)
        # The stack is used from its top: leases at the bottom can sit idle for good, out
        # of the pool's reach (its recycling, other users). Return stale ones.
        try:
            oldest = idle[0][1]
        except IndexError:  # emptied by another thread meanwhile
            return
        if now - oldest >= IDLE_RETURN_SECONDS and self._sweeping.acquire(False):
            try:
                self._sweep(now, deadline)
            finally:
                self._sweeping.release()

    def _sweep(self, now: float, deadline: float) -> None:
        idle = self.idle
        while True:  # other threads pop and push meanwhile: every step may find it changed
            try:
                if now - idle[0][1] < IDLE_RETURN_SECONDS:
                    return
                lease, since = idle.pop(0)
            except IndexError:
                return
            if now - since >= IDLE_RETURN_SECONDS:
                self.give_back(lease, deadline)
            else:  # another thread changed the stack meanwhile: keep this one
                idle.append((lease, since))
                return

    def give_back(self, lease: Lease, deadline: float | None = None) -> None:
        """Return a connection to the pool as the pool handed it out (pinged on reuse)."""
        conn = lease.conn
        guard = lease.guard
        if guard is not None:
            WATCHDOG.watch(guard, deadline or time.monotonic() + GIVE_BACK_SECONDS)
        try:
            lease.cursor.close()
            if conn.dbapi_connection is not None:
                self.dialect.reset_isolation_level(conn.dbapi_connection)
            if self.exclusive:  # a caller's pool pings (or not) as its owner chose
                conn.info[_POOLED_KEY] = True
        except Exception as exc:
            conn.invalidate(exc)
        conn.close()  # the pool's reset-on-return (a rollback) runs here, still watched
        if guard is not None:
            WATCHDOG.unwatch(guard)
            guard.close()
        self._returned()

    def discard(self, lease: Lease, exc: BaseException | None) -> None:
        """Close a connection that is broken, or was cut by the watchdog."""
        self._drop(lease, exc)
        self._returned()

    def _drop(self, lease: Lease, exc: BaseException | None) -> None:
        lease.conn.invalidate(exc if isinstance(exc, Exception) else None)
        lease.conn.close()
        if lease.guard is not None:
            lease.guard.close()

    def _returned(self) -> None:
        """A lease is gone: its room goes to the first thread in line, else is freed."""
        if self.capacity is not None:
            with self._lock:
                if self._queue:
                    self._serve(None)
                else:
                    self.leased -= 1

    def close(self) -> None:
        """Give every idle lease back to the pool."""
        if self.pid != os.getpid():
            return
        deadline = time.monotonic() + GIVE_BACK_SECONDS
        while self.idle:
            try:
                lease, _ = self.idle.pop()
            except IndexError:
                break
            self.give_back(lease, deadline)

    # -- pool lifecycle -----------------------------------------------------------------

    def renew_pool(self, pool: Pool | None = None) -> None:
        """Hand back every idle lease and start over: on a copy of the library's own
        pool, closing the old one's idle connections (as ``Engine.dispose()`` does), or,
        on an app's pool the library only borrows, on ``pool``, the Engine's new one."""
        if self.pid != os.getpid():
            return
        self.close()
        old = self.pool
        if self.exclusive:
            self.pool = old.recreate()
            old.dispose()
        elif pool is not None:
            self.pool = pool  # the app disposed the old one as it chose

    def after_fork(self, pool: Pool | None = None) -> None:
        """In a forked child: forget the parent's connections without touching them
        (using one would change the parent's server session, closing one would end it);
        the library's own pool is replaced by ``pool`` or a fresh copy."""
        if self.pid == os.getpid():
            return
        self.abandon(pool)

    def abandon(self, pool: Pool | None = None, *, keep: bool = True) -> builtins.list[Lease]:
        """Start over without touching the connections held (they belong to another
        process, or to an event loop that is gone); return the idle leases dropped.

        ``keep`` holds on to them for good, so that they are never closed here.
        """
        dropped = [lease for lease, _ in self.idle]
        if keep:
            abandoned.append((self.idle, self.pool))
        if self.exclusive:
            self.pool = pool if pool is not None else self.pool.recreate()
        self._fresh_state()
        return dropped


class _Waiter:
    """A thread waiting in line for a lease, or for room to open a connection."""

    __slots__ = ("lease", "ready", "served")

    def __init__(self, lock: threading.Lock) -> None:
        self.ready = threading.Condition(lock)
        self.served = False
        self.lease: Lease | None = None


def _server_pid(lease: Lease) -> Any:
    lease.cursor.execute(SERVER_PID_SQL)
    return lease.cursor.fetchone()[0]


class _Stale(Exception):
    """A connection from the pool failed its ping: the server closed it meanwhile."""


def _family(dialect: Dialect) -> str:
    name = dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def _capacity(pool: Pool) -> int | None:
    """How many connections the pool hands out at once; None without a limit."""
    if isinstance(pool, QueuePool):
        overflow = getattr(pool, "_max_overflow", -1)  # -1: no limit
        return None if overflow < 0 else pool.size() + overflow
    if isinstance(pool, AssertionPool):
        return 1
    return None  # NullPool opens one per checkout; StaticPool shares one


def _max_idle(pool: Pool, exclusive: bool) -> int:
    if isinstance(pool, StaticPool):
        return 1
    if not exclusive or isinstance(pool, SingletonThreadPool | AssertionPool):
        # Someone else's connections (a SingletonThreadPool's belong to their threads):
        # never keep one between calls.
        return 0
    size = pool.size() if isinstance(pool, QueuePool) else 0
    return max(size, 1) if size else _DEFAULT_MAX_IDLE


# -- the pools beside callers' Engines ---------------------------------------------------------

#: Where an Engine keeps the leases beside it: on the Engine itself, so they live and
#: die with it (a registry would keep every Engine alive: the copied pool's
#: first-connect hook refers back to its Engine).
_LEASES_ATTRIBUTE = "_workflow_persistence_leases"
_beside: weakref.WeakSet[Leases] = weakref.WeakSet()  # for the fork hook
_beside_lock = threading.Lock()
_connect_budget = threading.local()


def leases_beside(engine: Engine) -> Leases:
    """The leases on a caller's Engine, shared by every DatabasePersistence on it, so one
    made per request still finds warm connections."""
    leases: Leases | None = getattr(engine, _LEASES_ATTRIBUTE, None)
    if leases is None:
        with _beside_lock:
            leases = getattr(engine, _LEASES_ATTRIBUTE, None)
            if leases is None:
                leases = _new_leases_beside(engine)
                setattr(engine, _LEASES_ATTRIBUTE, leases)
                _beside.add(leases)
    return leases


def _new_leases_beside(engine: Engine) -> Leases:
    pool = engine.pool
    own: Pool | None = None
    if not isinstance(pool, StaticPool | SingletonThreadPool):  # not in-memory SQLite
        try:
            own = pool.recreate()
        except NotImplementedError:  # a pool class that cannot be copied: borrow, per call
            own = None
    if own is None:
        leases = Leases(pool, engine.dialect, engine.url, exclusive=False)
    else:
        # The leases ping a connection coming back from the pool themselves, within the
        # call's deadline: SQLAlchemy's pre-ping could wait for ever on a silent server.
        own._pre_ping = False
        leases = Leases(own, engine.dialect, engine.url, exclusive=True)
        event.listen(engine, "do_connect", _bounded_connect)
    event.listen(engine, "engine_disposed", lambda disposed: leases.renew_pool(disposed.pool))
    return leases


def _bounded_connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect within the call's deadline when the library opens a connection of a
    caller's Engine; the app's own connects (no budget in their thread) are untouched.

    The bounded parameters go to this one connect only: changing ``cparams`` in place
    would change every later connect of the Engine.
    """
    budget: float | None = getattr(_connect_budget, "seconds", None)
    if budget is None:
        return None
    bounded = _connect_bounds(dialect.driver, cparams, budget)
    if bounded is None:
        return None
    connection = dialect.connect(*cargs, **bounded)
    if dialect.driver == "pymysql":  # back to the caller's read timeout after the handshake
        connection._read_timeout = cparams.get("read_timeout")
    return connection


def _connect_bounds(driver: str, cparams: dict[str, Any], budget: float) -> dict[str, Any] | None:
    """``cparams`` with connecting bounded as the library's own engines are (a few
    seconds, unless the app chose its own limit) and within ``budget`` seconds; None if
    nothing changes."""
    if driver in ("psycopg", "psycopg2"):
        current = cparams.get("connect_timeout")
        limit = min(float(current) if current else CONNECT_SECONDS, budget)
        seconds = max(2, math.ceil(limit))  # libpq takes whole seconds, at least 2
        if current and float(current) <= seconds:
            return None
        return {**cparams, "connect_timeout": seconds}
    if driver == "pymysql":
        bounded = dict(cparams)
        for name in ("connect_timeout", "read_timeout"):  # the handshake is read
            current = cparams.get(name)
            bounded[name] = min(float(current) if current else CONNECT_SECONDS, budget)
        return bounded
    return None


def _after_fork_in_child() -> None:
    global _beside_lock
    _beside_lock = threading.Lock()
    for leases in list(_beside):
        leases.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
