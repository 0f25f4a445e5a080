"""PostgreSQL behind a transaction pooler (PgBouncer, Supavisor, pgcat, RDS Proxy ...).

psycopg prepares a statement once it has run five times on a connection
(``prepare_threshold``) and from then on runs it by name. Behind a pooler in transaction
mode each transaction may go to another server connection, where that name is missing
(``prepared statement "_pg3_0" does not exist``) or taken by another client (``already
exists``); PgBouncer before 1.21 does not track prepared statements at all. Session
settings (``SET statement_timeout``) likewise stay on whichever server connection ran
them, for the pooler's other clients to inherit.

A pooler shows itself by the process id it announces: it hands each client a cancel key
of its own, so the id the connection announced differs from the server's
``pg_backend_pid()``. That is checked once per connection; on a pooled one psycopg's
preparing is switched off, while direct connections keep it (it saves the server parsing
and planning each call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["SERVER_PID_SQL", "through_pooler"]

SERVER_PID_SQL = "SELECT pg_backend_pid()"
#: In a connection's ``info``: whether it goes through a pooler (checked once).
_POOLED_KEY = "workflow_persistence.through_pooler"


def through_pooler(pooled: PoolProxiedConnection, server_pid: Callable[[], Any]) -> bool:
    """Whether ``pooled`` (a PostgreSQL connection) reaches the server through a pooler;
    if so, psycopg no longer prepares statements on it. ``server_pid()`` runs
    :data:`SERVER_PID_SQL` on the connection and returns its value; it is called only the
    first time a connection is seen."""
    info = pooled.info
    known: bool | None = info.get(_POOLED_KEY)
    if known is None:
        driver: Any = pooled.driver_connection
        announced = _announced_pid(driver)
        known = announced is not None and announced != server_pid()
        if known and hasattr(driver, "prepare_threshold"):  # psycopg 3, sync or async
            driver.prepare_threshold = None
        info[_POOLED_KEY] = known
    return known


def _announced_pid(driver: Any) -> int | None:
    """The backend process id the connection was told at login."""
    info = getattr(driver, "info", None)  # psycopg 3
    pid = getattr(info, "backend_pid", None)
    if pid is None and hasattr(driver, "get_backend_pid"):  # psycopg2
        pid = driver.get_backend_pid()
    return pid if isinstance(pid, int) and pid else None
