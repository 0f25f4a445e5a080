"""AsyncDatabasePersistence on PostgreSQL (psycopg async), MariaDB (aiomysql) and a
SQLite file (aiosqlite): the contract, sharing records with DatabasePersistence, deadlines,
engines and pools, event loops, and aiomysql's bytes."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from tests.conftest import _shared_engine
from workflow_persistence import (
    AsyncDatabasePersistence,
    AsyncPersistence,
    ConflictError,
    DatabasePersistence,
    InvalidArgumentError,
    InvalidWorkflowIdError,
    PayloadTooLargeError,
    PersistenceError,
    StorageUnavailableError,
    WorkflowNotFoundError,
    WorkflowSnapshot,
)
from workflow_persistence._snapshot import utc_now
from workflow_persistence._sql import mysql as _mysql

from .samples import assert_same_content, rich_snapshot, serializer

ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "mariadb": "mysql+aiomysql"}


def async_url(url: URL) -> URL:
    """The same database through the async driver."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername=ASYNC_DRIVERS["postgresql" if backend == "postgresql" else "mariadb"])


@pytest.fixture
def sync_engine(
    db_kind: str, shared_engines: dict[str, Engine], new_database_url: Callable[[str], URL]
) -> Engine:
    """The migrated scratch database of the kind, emptied."""
    engine = _shared_engine(db_kind, shared_engines, new_database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM workflow_interrupts")
    return engine


@pytest.fixture
def url(sync_engine: Engine) -> URL:
    return async_url(sync_engine.url)


@pytest.fixture
async def store(url: URL) -> AsyncIterator[AsyncDatabasePersistence]:
    persistence = AsyncDatabasePersistence(url, serializer=serializer())
    yield persistence
    await persistence.aclose()
    assert persistence.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- the contract ---------------------------------------------------------------------------


async def test_is_an_async_persistence_on_the_async_driver(store: AsyncDatabasePersistence) -> None:
    assert isinstance(store, AsyncPersistence)
    assert store.engine.dialect.is_async


async def test_rich_snapshot_round_trips(store: AsyncDatabasePersistence) -> None:
    original = rich_snapshot()
    assert await store.save(original) == 1
    assert_same_content(await store.load("refund-42"), original)


async def test_versions_timestamps_and_expected_version(store: AsyncDatabasePersistence) -> None:
    snapshot = WorkflowSnapshot("w", state={"n": 1})
    assert await store.save(snapshot, expected_version=0) == 1
    first = await store.load("w")
    assert first.created_at == first.updated_at and first.created_at.utcoffset() == timedelta(0)
    with pytest.raises(ConflictError):
        await store.save(snapshot, expected_version=0)
    with pytest.raises(ConflictError):
        await store.save(WorkflowSnapshot("w", state={"n": 9}), expected_version=5)
    assert (await store.load("w")).state == {"n": 1}
    snapshot.state["n"] = 2
    assert await store.save(snapshot, expected_version=1) == 2
    assert await store.save(snapshot) == 3
    second = await store.load("w")
    assert second.version == 3 and second.state == {"n": 2}
    assert second.created_at == first.created_at < second.updated_at
    with pytest.raises(ConflictError):
        await store.save(WorkflowSnapshot("absent"), expected_version=1)


async def test_load_delete_exists(store: AsyncDatabasePersistence) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await store.load("nothing")
    await store.save(WorkflowSnapshot("a"))
    assert await store.exists("a")
    with pytest.raises(ConflictError):
        await store.delete("a", expected_version=2)
    assert await store.delete("a", expected_version=1)
    assert not await store.exists("a")
    assert not await store.delete("a")
    with pytest.raises(InvalidWorkflowIdError):
        await store.load("")


async def test_list_and_prune(store: AsyncDatabasePersistence) -> None:
    await store.save(WorkflowSnapshot("a", status="interrupted", metadata={"tenant": "a"}))
    await store.save(WorkflowSnapshot("b", status="failed", metadata={"tenant": "b"}))
    await store.save(WorkflowSnapshot("c", status="interrupted", metadata={"tenant": "c"}))
    assert [i.workflow_id for i in await store.list()] == ["c", "b", "a"]
    assert [i.workflow_id for i in await store.list(status="interrupted", limit=1)] == ["c"]
    assert [i.workflow_id for i in await store.list(metadata={"tenant": "b"})] == ["b"]
    with pytest.raises(InvalidArgumentError):
        await store.list(metadata={"bad key": 1})
    assert await store.prune(timedelta(hours=1)) == 0
    assert await store.prune(utc_now(), status="failed") == 1
    assert [i.workflow_id for i in await store.list()] == ["c", "a"]
    assert await store.prune(utc_now()) == 2


async def test_expired_records_count_as_gone(store: AsyncDatabasePersistence) -> None:
    await store.save(WorkflowSnapshot("old", expires_at=utc_now() - timedelta(seconds=1)))
    await store.save(WorkflowSnapshot("live", expires_at=utc_now() + timedelta(hours=1)))
    with pytest.raises(WorkflowNotFoundError):
        await store.load("old")
    assert not await store.exists("old")
    assert [i.workflow_id for i in await store.list()] == ["live"]
    assert await store.save(WorkflowSnapshot("old")) == 1  # a save over it starts again
    await store.save(WorkflowSnapshot("gone", expires_at=utc_now() - timedelta(seconds=1)))
    assert await store.prune() == 1


# -- one set of records for sync and async -----------------------------------------------------


async def test_sync_and_async_share_records(
    store: AsyncDatabasePersistence, sync_engine: Engine
) -> None:
    sync = DatabasePersistence(sync_engine, serializer=serializer())
    try:
        original = rich_snapshot("shared")
        await store.save(original)
        assert_same_content(sync.load("shared"), original)
        assert sync.save(sync.load("shared"), expected_version=1) == 2
        loaded = await store.load("shared")
        assert loaded.version == 2
        assert_same_content(loaded, original)
        assert [i.workflow_id for i in sync.list()] == ["shared"]
        assert await store.delete("shared", expected_version=2)
        assert not sync.exists("shared")
    finally:
        sync.close()


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_compare_and_set_has_one_winner(store: AsyncDatabasePersistence) -> None:
    await store.save(WorkflowSnapshot("race"))

    async def claim(n: int) -> int | None:
        try:
            return await store.save(
                WorkflowSnapshot("race", state={"by": n}), expected_version=1
            )
        except ConflictError:
            return None

    results = await asyncio.gather(*(claim(n) for n in range(40)))
    winners = [n for n, version in enumerate(results) if version is not None]
    assert len(winners) == 1 and results[winners[0]] == 2
    loaded = await store.load("race")
    assert loaded.version == 2 and loaded.state == {"by": winners[0]}


async def test_first_use_by_many_tasks_at_once(url: URL) -> None:
    async with AsyncDatabasePersistence(url) as persistence:
        versions = await asyncio.gather(
            *(persistence.save(WorkflowSnapshot(f"w{n}")) for n in range(30))
        )
        assert versions == [1] * 30


# -- deadlines ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_unreachable_server_fails_fast(scheme: str) -> None:
    user = "postgres" if scheme == "postgresql" else "root"
    persistence = AsyncDatabasePersistence(f"{scheme}://{user}@127.0.0.1:{_closed_port()}/x")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        await persistence.load("w")
    assert time.monotonic() - started < 5
    assert caught.value.__cause__ is not None
    await persistence.aclose()


async def test_a_held_row_lock_ends_within_timeout(url: URL, sync_engine: Engine) -> None:
    async with AsyncDatabasePersistence(url, timeout=2) as persistence:
        await persistence.save(WorkflowSnapshot("locked"))
        with sync_engine.connect() as holder:
            _hold_lock(holder, "locked")
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError):
                await persistence.save(WorkflowSnapshot("locked"))
            elapsed = time.monotonic() - started
            holder.rollback()
        assert 1 < elapsed < 3.5
        assert await persistence.save(WorkflowSnapshot("locked")) == 2  # usable again


def _hold_lock(holder: sa.Connection, workflow_id: str) -> None:
    """Hold the row lock of ``workflow_id`` (on SQLite the database's write lock)."""
    if holder.dialect.name == "sqlite":
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        holder.begin()
        holder.exec_driver_sql(
            "SELECT version FROM workflow_interrupts WHERE workflow_id = %s FOR UPDATE",
            (workflow_id,),
        )


async def test_a_busy_pool_is_waited_for_on_the_loop_within_timeout(
    url: URL, sync_engine: Engine
) -> None:
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    slow = AsyncDatabasePersistence(engine, timeout=3)
    quick = AsyncDatabasePersistence(engine, timeout=0.5)  # same engine: same connections
    await slow.save(WorkflowSnapshot("w"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with sync_engine.connect() as holder:
        _hold_lock(holder, "w")
        blocked = asyncio.create_task(slow.save(WorkflowSnapshot("w")))
        await asyncio.sleep(0.2)  # let it take the one connection and wait for the lock
        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="busy"):
            await quick.load("w")
        elapsed = time.monotonic() - started
        tick.cancel()
        holder.rollback()
    assert await blocked == 2  # the lock is gone: its wait ends in success
    assert 0.4 < elapsed < 1.5
    assert ticks >= 20  # the loop kept running while the call waited
    assert (await quick.load("w")).version == 2
    await slow.aclose()
    await quick.aclose()
    await engine.dispose()



async def test_a_call_cancelled_by_its_caller_stays_cancelled(url: URL) -> None:
    """Only the call's own deadline becomes StorageUnavailableError; a cancellation
    from outside (a request gone, a task group failing) goes through as it came."""
    async with AsyncDatabasePersistence(url, timeout=5) as persistence:
        await persistence.save(WorkflowSnapshot("w"))
        for _ in range(20):  # at whichever await of the call the cancellation lands
            task = asyncio.create_task(persistence.load("w"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelling() == 1
        assert (await persistence.load("w")).version == 1
    # A connection a cancelled call was using is dropped; aiosqlite stops its thread
    # without waiting, and that thread answers on the loop: let it, before the loop ends.
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 10)


async def test_calls_beyond_the_pool_take_turns_and_a_cancelled_one_passes_its_turn(
    url: URL,
) -> None:
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    persistence = AsyncDatabasePersistence(engine, timeout=10)
    await persistence.save(WorkflowSnapshot("w"))
    loads = [asyncio.create_task(persistence.load("w")) for _ in range(12)]
    await asyncio.sleep(0)  # the first holds the connection, the others wait their turn
    loads[3].cancel()
    loads[7].cancel()
    results = await asyncio.gather(*loads, return_exceptions=True)
    cancelled = [i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
    assert cancelled == [3, 7]
    assert all(
        isinstance(r, WorkflowSnapshot) and r.version == 1
        for i, r in enumerate(results)
        if i not in cancelled
    )
    await persistence.aclose()
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()


async def test_sqlite_calls_make_one_trip_to_the_driver_thread(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosqlite runs the connection on a thread of its own; each trip there and back
    costs more than the statement. A save, a load, an exists: one trip each."""
    import aiosqlite.core

    url = f"sqlite+aiosqlite:///{tmp_path}/one-trip.db"
    trips = 0
    queue = aiosqlite.core.Connection._execute

    async def counted(self: object, fn: object, *args: object, **kwargs: object) -> object:
        nonlocal trips
        trips += 1
        return await queue(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call, arg-type]

    async with AsyncDatabasePersistence(url) as persistence:
        await persistence.save(WorkflowSnapshot("w"))  # first use: the table, the lease
        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
        for call in (
            persistence.save(WorkflowSnapshot("w", state={"n": 1})),
            persistence.load("w"),
            persistence.exists("w"),
        ):
            trips = 0
            await call
            assert trips == 1

# -- engines and pools ----------------------------------------------------------------------


async def test_aclose_disposes_the_engine_it_made(url: URL) -> None:
    persistence = AsyncDatabasePersistence(url)
    await persistence.save(WorkflowSnapshot("w"))
    pool = persistence.engine.sync_engine.pool
    await persistence.aclose()
    assert pool.checkedout() == 0 and pool.checkedin() == 0  # type: ignore[attr-defined]
    assert await persistence.exists("w")  # still usable: it connects again
    async with persistence:
        pass
    assert persistence.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_callers_engine_pool_is_never_exhausted(url: URL) -> None:
    engine = create_async_engine(url, pool_size=2, max_overflow=0, pool_timeout=2)
    persistence = AsyncDatabasePersistence(async_sessionmaker(engine))

    async def worker(n: int) -> None:
        for i in range(20):
            await persistence.save(WorkflowSnapshot(f"w{n}", state={"i": i}))
            await persistence.load(f"w{n}")

    await asyncio.gather(*(worker(n) for n in range(8)))
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with engine.connect() as first, engine.connect() as second:
        await first.execute(sa.text("SELECT 1"))
        await second.execute(sa.text("SELECT 1"))
    await persistence.aclose()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()


def test_urls_get_async_drivers_and_sync_ones_are_refused(tmp_path: object) -> None:
    assert AsyncDatabasePersistence("postgresql://u@h/db").engine.dialect.is_async
    mysql = AsyncDatabasePersistence("mysql://u@h/db").engine
    assert mysql.dialect.driver == "aiomysql"
    assert AsyncDatabasePersistence("mariadb://u@h/db").engine.dialect.driver == "aiomysql"
    assert AsyncDatabasePersistence("sqlite://").engine.dialect.driver == "aiosqlite"
    for url, named in (
        ("mysql+pymysql://u@h/db", "mysql+aiomysql"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg"),
    ):
        with pytest.raises(InvalidArgumentError, match=re.escape(named)):
            AsyncDatabasePersistence(url)
    with pytest.raises(InvalidArgumentError):
        AsyncDatabasePersistence(sa.create_engine("sqlite://"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        AsyncDatabasePersistence("sqlite://", timeout=0)


# -- event loops ----------------------------------------------------------------------------


def test_works_on_a_later_event_loop(url: URL) -> None:
    persistence = AsyncDatabasePersistence(url)
    assert asyncio.run(persistence.save(WorkflowSnapshot("w"))) == 1
    assert asyncio.run(persistence.save(WorkflowSnapshot("w"))) == 2  # a new loop
    assert asyncio.run(persistence.load("w")).version == 2
    asyncio.run(persistence.aclose())
    assert persistence.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_two_running_loops_at_once_fail_clearly(url: URL) -> None:
    persistence = AsyncDatabasePersistence(url)
    used, done = threading.Event(), threading.Event()

    async def hold() -> None:
        await persistence.save(WorkflowSnapshot("w"))
        used.set()
        while not done.is_set():
            await asyncio.sleep(0.01)
        await persistence.aclose()

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    try:
        assert used.wait(30)
        with pytest.raises(PersistenceError, match="another event loop"):
            asyncio.run(persistence.load("w"))
    finally:
        done.set()
        thread.join(30)
    assert asyncio.run(persistence.load("w")).version == 1  # that loop has ended: fine
    asyncio.run(persistence.aclose())


# -- aiomysql and bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ["mariadb"])
async def test_aiomysql_bytes_and_packet_limit(store: AsyncDatabasePersistence) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    await store.save(WorkflowSnapshot("blob", state={"blob": blob}))
    assert (await store.load("blob")).state["blob"] == blob
    leases = store._core._leases
    (lease, _), *_ = leases.idle
    assert lease.conn.info[_mysql._SIZER_KEY] is _mysql.hex_escaped_size  # two bytes per byte
    limit = lease.conn.info[_mysql._LIMIT_KEY]
    # Under the limit as bytes, over it as hex: refused before it reaches the server.
    big = WorkflowSnapshot("big", state={"blob": os.urandom(int(limit * 0.55))})
    with pytest.raises(PayloadTooLargeError):
        await store.save(big)
    assert await store.exists("blob")  # the connection was not dropped by the server
