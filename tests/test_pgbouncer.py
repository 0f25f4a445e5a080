"""PgBouncer in transaction mode (the mode managed poolers use) in front of PostgreSQL.

Each transaction may run on another server connection there, so psycopg's prepared
statements break (``prepared statement "_pg3_0" does not exist``) and session settings
leak to the pooler's other clients. The library must work with default settings, sync
and async, and keep preparing on direct connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from workflow_persistence import (
    AsyncDatabasePersistence,
    DatabasePersistence,
    Persistence,
    SessionPersistence,
    WorkflowSnapshot,
)
from workflow_persistence.migrations import upgrade

from .topology_pg import PgBouncer, pgbouncer

THREADS = 4
ROUNDS = 40  # save + load each: what failed 38 times out of 320 calls before


@pytest.fixture(scope="module")
def database(new_database_url: Callable[[str], URL]) -> URL:
    """A migrated scratch database on the main server."""
    url = new_database_url("postgresql")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def bouncer(database: URL) -> Iterator[PgBouncer]:
    with pgbouncer(database, pool_mode="transaction") as started:
        yield started


@pytest.fixture
def bounced_url(bouncer: PgBouncer, database: URL) -> URL:
    return bouncer.url(database.database or "postgres")


def hammer(make: Callable[[int], Persistence], prefix: str) -> list[str]:
    """THREADS threads x ROUNDS save + load, each on its own persistence from ``make``;
    the failures, as text."""
    failures: list[str] = []

    def work(thread: int) -> None:
        persistence = make(thread)
        for i in range(ROUNDS):
            workflow_id = f"{prefix}-{thread}-{i}"
            try:
                version = persistence.save(WorkflowSnapshot(workflow_id, state={"i": i}))
                loaded = persistence.load(workflow_id)
                assert (loaded.version, loaded.state) == (version, {"i": i})
            except Exception as exc:  # every failure counts, whatever its type
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def server_settings(url: URL, *, connections: int = 8) -> set[str]:
    """``statement_timeout`` as the pooler's next clients find it, over several of its
    server connections at once."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    found: set[str] = set()
    opened = [engine.connect() for _ in range(connections)]
    try:
        for conn in opened:
            with conn.begin():  # one transaction each: one server connection each
                found.add(str(conn.exec_driver_sql("SHOW statement_timeout").scalar()))
    finally:
        for conn in opened:
            conn.close()
        engine.dispose()
    return found


def test_database_persistence_on_a_url(bounced_url: URL) -> None:
    with DatabasePersistence(bounced_url) as persistence:
        assert hammer(lambda _: persistence, "url") == []
        lease, _ = persistence._leases.idle[-1]
        assert lease.conn.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
    # The library's statement timeout stayed off the server connections others get next.
    assert server_settings(bounced_url) == {"0"}


def test_database_persistence_on_a_callers_engine(bounced_url: URL) -> None:
    engine = sa.create_engine(bounced_url, pool_size=2, max_overflow=2)
    try:
        made: list[DatabasePersistence] = []

        def make(_: int) -> Persistence:
            made.append(DatabasePersistence(engine, create_table=False))
            return made[-1]

        assert hammer(make, "engine") == []
        for persistence in made:
            persistence.close()
        # The app's own statements on the same Engine still work too.
        with engine.connect() as conn:
            for _ in range(10):
                conn.exec_driver_sql("SELECT count(*) FROM workflow_interrupts").scalar()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_session_persistence_on_a_callers_engine(bounced_url: URL) -> None:
    engine = sa.create_engine(bounced_url)
    sessions = sessionmaker(engine)
    failures: list[str] = []

    def work(thread: int) -> None:
        for i in range(ROUNDS):
            workflow_id = f"session-{thread}-{i}"
            try:
                # Two transactions at once: two server connections, which the pooler
                # hands out again in another order than the Engine's pool does.
                with sessions.begin() as first, sessions.begin() as second:
                    version = SessionPersistence(first).save(
                        WorkflowSnapshot(workflow_id, state={"i": i})
                    )
                    SessionPersistence(second).save(WorkflowSnapshot(f"{workflow_id}-b"))
                    for session in (first, second):
                        driver: Any = session.connection().connection.driver_connection
                        assert driver.prepare_threshold is None
                with sessions() as session:
                    loaded = SessionPersistence(session).load(workflow_id)
                assert loaded.version == version
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


async def test_async_database_persistence(bounced_url: URL) -> None:
    persistence = AsyncDatabasePersistence(bounced_url)
    failures: list[str] = []

    async def work(task: int) -> None:
        for i in range(ROUNDS):
            workflow_id = f"async-{task}-{i}"
            try:
                version = await persistence.save(WorkflowSnapshot(workflow_id, state={"i": i}))
                loaded = await persistence.load(workflow_id)
                assert (loaded.version, loaded.state) == (version, {"i": i})
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    try:
        await asyncio.gather(*(work(n) for n in range(THREADS)))
    finally:
        await persistence.aclose()
    assert failures == []


def test_direct_connections_keep_preparing(database: URL) -> None:
    """Only a pooled connection gives up prepared statements: a direct one keeps them."""
    with DatabasePersistence(database) as persistence:
        for i in range(10):
            persistence.save(WorkflowSnapshot("direct", state={"i": i}))
            persistence.load("direct")
        lease, _ = persistence._leases.idle[-1]
        driver: Any = lease.conn.driver_connection
        assert driver.prepare_threshold == 5  # psycopg's default
        prepared = lease.cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert prepared.fetchone()[0] >= 2  # the upsert and the select
