"""Counting what crosses the wire: client/server round trips on a DBAPI connection."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any


def round_trips(conn: Any, kind: str, action: Callable[[], object]) -> int:
    """Round trips (statements) ``action`` makes on the DBAPI connection ``conn``.

    PostgreSQL: libpq's protocol trace (each ends with ReadyForQuery); MariaDB: the
    server's own per-session ``Questions`` counter; SQLite: every statement the library
    runs, implicit BEGIN and COMMIT included.
    """
    if kind == "postgresql":
        from psycopg import pq

        with tempfile.TemporaryFile("w+") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                action()
            finally:
                conn.pgconn.untrace()
            trace.seek(0)
            return trace.read().count("\tReadyForQuery\t")
    if kind == "mariadb":

        def questions() -> int:
            cursor = conn.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            value = int(cursor.fetchone()[1])
            cursor.close()
            return value

        before = questions()
        action()
        return questions() - before - 1  # the second SHOW counts itself
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        conn.set_trace_callback(None)
    return len(statements)
