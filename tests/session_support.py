"""Helpers of the session persistence tests: another connection's view, the server
identity of a connection, waiting until a transaction blocks on another's lock."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from workflow_persistence import WorkflowInterrupt

#: How long a test waits for something another transaction must do.
WAIT_SECONDS = 20.0


def stored_version(engine: Engine, workflow_id: str) -> int | None:
    """What another connection sees: committed rows only."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(WorkflowInterrupt.version).where(WorkflowInterrupt.workflow_id == workflow_id)
        ).scalar()


def server_id_sql(kind: str) -> str:
    """The statement giving a connection's id on the server (its backend pid)."""
    return "SELECT pg_backend_pid()" if kind == "postgresql" else "SELECT CONNECTION_ID()"


def kill(kind: str, engine: Engine, server_id: int) -> None:
    """End a connection from the server side, as a restart or a failover would."""
    with engine.connect() as conn:
        if kind == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(server_id)})")
        else:
            conn.exec_driver_sql(f"KILL {int(server_id)}")
        conn.commit()


def is_waiting_on_a_lock(kind: str, engine: Engine, server_id: int) -> bool:
    """Whether the connection ``server_id`` waits on a lock held by another transaction."""
    with engine.connect() as conn:
        if kind == "postgresql":
            sql = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pid = %s AND wait_event_type = 'Lock'"
            )
        else:
            sql = (
                "SELECT count(*) FROM information_schema.innodb_trx"
                " WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'"
            )
        return bool(conn.exec_driver_sql(sql, (server_id,)).scalar())


def wait_until(condition: Any, what: str) -> None:
    """Poll ``condition()`` until it holds; fail after WAIT_SECONDS.

    Polls every 0.15 s: InnoDB refreshes what ``innodb_trx`` shows only when it has not
    been read for 0.1 s, so faster polling would see the same stale rows forever.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.15)


class SqliteStatementStarted:
    """Set when a raw sqlite3 connection starts a statement containing ``word``: once an
    UPDATE has started, it can only finish by getting the write lock."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.event = threading.Event()

    def __call__(self, sql: str) -> None:
        if self.word in sql:
            self.event.set()


def async_url(url: URL) -> URL:
    """The async driver's URL for the same database."""
    backend = url.get_backend_name()
    driver = {"sqlite": "aiosqlite", "postgresql": "psycopg", "mysql": "aiomysql"}[backend]
    return url.set(drivername=f"{backend}+{driver}")
