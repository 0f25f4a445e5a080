"""Deadlines for database calls: server-side bounds first, a watchdog for silent peers.

``DatabasePersistence(timeout=...)`` promises that every call returns or raises within
about ``timeout`` seconds. Two layers keep that promise:

* The server gives up first. Each of the library's sessions carries a statement and lock
  wait timeout a little under ``timeout`` (:func:`session_bounds`), so a row lock held by
  another transaction or a slow statement ends in a clean error: nothing changed, the
  connection still usable.
* A watchdog thread shuts down the socket of a call still waiting at ``timeout``. That is
  the only way out when the server, or something between, stops answering while the TCP
  connection stays open: libpq has no read timeout, and the peer's kernel keeps
  acknowledging, so keepalives and ``tcp_user_timeout`` never fire. The connection is
  lost, and whether a write reached the server is unknown.

A call costs the watchdog one uncontended lock and a dict entry (about 0.5 µs); its
thread sleeps until the earliest deadline, and for good when no call is in flight.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from typing import Any

from workflow_persistence._sql import mysql as _mysql

__all__ = ["CONNECT_SECONDS", "WATCHDOG", "Guard", "guard_for", "server_bound", "session_bounds"]

#: Connecting gives up after this long (or the call's timeout, if shorter): a database
#: that cannot be reached fails within a few seconds.
CONNECT_SECONDS = 5


def server_bound(timeout: float) -> float:
    """The server-side limit for a call bounded by ``timeout``: a little under it, so the
    server's clean error comes before the watchdog has to cut the connection."""
    return timeout - min(1.0, timeout / 10)


def session_bounds(family: str, seconds: float, *, is_mariadb: bool = False) -> str:
    """The statement that bounds lock waits and statements of a session by ``seconds``."""
    millis = max(1, math.ceil(seconds * 1000))
    if family == "postgresql":
        return f"SET statement_timeout = {millis}"  # lock waits happen inside a statement
    if family == "mysql":
        return _mysql.session_bounds(seconds, is_mariadb=is_mariadb)
    return f"PRAGMA busy_timeout = {millis}"  # SQLite: how long a writer waits for the lock


class Guard:
    """What the watchdog needs to end one connection's wait: a duplicate of its socket.

    Shutting down the duplicate ends the socket itself (unlike closing it), and holding
    our own descriptor means a number the driver closed and the kernel reused can never
    be shut down by mistake.
    """

    __slots__ = ("socket",)

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def expire(self) -> None:
        """Called by the watchdog thread: make the blocked driver call fail now."""
        with contextlib.suppress(OSError):  # closed meanwhile, by its owner or the driver
            self.socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.socket.close()


def guard_for(dbapi_connection: Any) -> Guard | None:
    """A Guard for a network connection of psycopg or PyMySQL; None for SQLite (waits
    there are bounded by the busy timeout) or a driver whose socket cannot be found."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg 3, psycopg2
    if fileno is None:
        fileno = getattr(getattr(dbapi_connection, "_sock", None), "fileno", None)  # PyMySQL
    if fileno is None:
        return None
    try:
        return Guard(socket.socket(fileno=os.dup(fileno())))
    except (OSError, ValueError, TypeError):
        return None


class _Watchdog:
    """One daemon thread per process that expires the guards of calls past their deadline."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Guard, float] = {}
        self._next_check = math.inf
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, guard: Guard, deadline: float) -> None:
        """Expire ``guard`` at ``deadline`` (time.monotonic) unless unwatched before."""
        with self._lock:
            self._calls[guard] = deadline
            wake = deadline < self._next_check
            if wake:
                self._next_check = deadline
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="workflow-persistence-watchdog", daemon=True
                )
                self._thread.start()
        if wake:
            self._wake.set()

    def unwatch(self, guard: Guard) -> bool:
        """Stop watching; True if the watchdog took the guard to expire it.

        Call it once per :meth:`watch`. No lock: whichever of the caller and the watchdog
        pops the entry first decides, and the watchdog pops only under the lock that
        :meth:`watch` takes, so it can never take a later call's entry.
        """
        return self._calls.pop(guard, None) is None

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for guard, deadline in list(self._calls.items()):
                    if deadline <= now and self._calls.pop(guard, None) is not None:
                        guard.expire()
                self._next_check = min(self._calls.values(), default=math.inf)
                self._wake.clear()
                delay = self._next_check - now
            self._wake.wait(None if delay == math.inf else delay)


WATCHDOG = _Watchdog()

if hasattr(os, "register_at_fork"):
    # A forked child has no watchdog thread, and the lock may have been held at the fork.
    os.register_at_fork(after_in_child=WATCHDOG._reset)
