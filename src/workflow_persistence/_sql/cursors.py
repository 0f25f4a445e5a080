"""The cursor a leased connection's calls run on, per driver.

The operations (``operations.py``) pass psycopg's own execute options (``binary=True``
so a blob is not sent as hex, ``prepare=False`` for the prune batches). psycopg's sync
cursor takes them; SQLAlchemy's adapter of psycopg's async mode, which runs the driver's
coroutines from sync code (greenlets), does not. Its cursor here takes and passes them
on, so sync and async run the same operations on the same options.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["CursorFactory", "cursor_factory"]

CursorFactory = Callable[[PoolProxiedConnection], Any]


def cursor_factory(dialect: Dialect) -> CursorFactory:
    """How a lease on ``dialect`` makes its cursor."""
    if dialect.is_async and dialect.driver == "psycopg":
        return _psycopg_async_cursor
    return _plain_cursor


def _plain_cursor(conn: PoolProxiedConnection) -> Any:
    return conn.cursor()


def _psycopg_async_cursor(conn: PoolProxiedConnection) -> Any:
    return _psycopg_async_cursor_class()(conn.dbapi_connection)


@functools.cache
def _psycopg_async_cursor_class() -> type[Any]:
    from sqlalchemy.dialects.postgresql.psycopg import AsyncAdapt_psycopg_cursor
    from sqlalchemy.util import await_

    class OptionsCursor(AsyncAdapt_psycopg_cursor):
        """SQLAlchemy's adapted cursor, with psycopg's keyword options passed on."""

        __slots__ = ()

        def execute(  # type: ignore[override]
            self, operation: Any, parameters: Any = None, /, **options: Any
        ) -> Any:
            try:
                return await_(self._run(operation, parameters, options))
            except Exception as error:
                self._adapt_connection._handle_exception(error)

        async def _run(self, operation: Any, parameters: Any, options: dict[str, Any]) -> Any:
            cursor: Any = self._cursor
            result = await cursor.execute(operation, parameters, **options)
            pgresult = cursor.pgresult
            # SQLAlchemy's results are read synchronously: fetch the rows here.
            if pgresult and pgresult.status == self._adapt_connection.dbapi.ExecStatus.TUPLES_OK:
                self._rows = collections.deque(await cursor.fetchall())
            return result

    return OptionsCursor
