"""AsyncSessionPersistence and AsyncWorkflowInterruptRepository on the async drivers
(aiosqlite, psycopg's async mode, aiomysql), inside the caller's AsyncSession."""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import AsyncIterator, Collection, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, Unpack

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from workflow_persistence import (
    AsyncSessionPersistence,
    AsyncWorkflowInterruptRepository,
    ConflictError,
    DatabasePersistence,
    Persistence,
    PersistenceError,
    StorageUnavailableError,
    StoredSnapshotInfo,
    WorkflowInterrupt,
    WorkflowSnapshot,
)
from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence.abc import ListFilters

from . import test_contract
from .hostapp.models import HostBase, HostInterrupt, User
from .samples import assert_same_content, rich_snapshot, serializer
from .session_support import (
    SqliteStatementStarted,
    async_url,
    is_waiting_on_a_lock,
    kill,
    server_id_sql,
    stored_version,
    wait_until,
)

T = TypeVar("T")

# The whole contract, on an AsyncSessionPersistence driven from sync test code.
for _name in dir(test_contract):
    if _name.startswith("test_"):
        globals()[_name] = getattr(test_contract, _name)


def _async_engine(engine: Engine) -> AsyncEngine:
    options: dict[str, Any] = {}
    if engine.dialect.name in ("mysql", "mariadb"):
        options["connect_args"] = {"charset": "utf8mb4"}
    return create_async_engine(async_url(engine.url), **options)


class Blocking(Persistence):
    """An AsyncPersistence run to completion on one event loop, for the sync contract."""

    def __init__(self, runner: asyncio.Runner, store: AsyncSessionPersistence) -> None:
        self.runner = runner
        self.store = store

    @property
    def serializer(self) -> Serializer:
        return self.store.sync.serializer

    @serializer.setter
    def serializer(self, value: Serializer) -> None:
        self.store.sync.serializer = value

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(call)

    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        return self._run(self.store.save(snapshot, expected_version=expected_version))

    def load(self, workflow_id: str) -> WorkflowSnapshot:
        return self._run(self.store.load(workflow_id))

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return self._run(self.store.delete(workflow_id, expected_version=expected_version))

    def exists(self, workflow_id: str) -> bool:
        return self._run(self.store.exists(workflow_id))

    def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        return self._run(self.store.list(**filters))

    def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        return self._run(self.store.prune(older_than, status=status))


@pytest.fixture
def store(engine: Engine) -> Iterator[Persistence]:
    """What the contract tests run on: one AsyncSession, never committed."""
    with asyncio.Runner() as runner:
        async_engine = _async_engine(engine)
        session = AsyncSession(async_engine)
        yield Blocking(runner, AsyncSessionPersistence(session, serializer=serializer()))
        runner.run(session.close())
        assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        runner.run(async_engine.dispose())


@pytest.fixture
async def async_engine(engine: Engine) -> AsyncIterator[AsyncEngine]:
    made = _async_engine(engine)
    yield made
    assert made.pool.checkedout() == 0, "a test left a connection checked out"  # type: ignore[attr-defined]
    await made.dispose()


async def test_nothing_is_visible_until_the_caller_commits(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    async with AsyncSession(async_engine) as session:
        store = AsyncSessionPersistence(session)
        assert await store.save(WorkflowSnapshot("w", state={"n": 1})) == 1
        assert (await store.load("w")).state == {"n": 1}
        assert await asyncio.to_thread(stored_version, engine, "w") is None
        await session.commit()
    assert stored_version(engine, "w") == 1


async def test_a_rollback_leaves_nothing(engine: Engine, async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine) as session:
        store = AsyncSessionPersistence(session)
        await store.save(WorkflowSnapshot("w"))
        assert await store.exists("w")
        await session.rollback()
        assert not await store.exists("w")
    assert stored_version(engine, "w") is None


async def test_sync_and_async_read_each_others_records(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    sync_store = DatabasePersistence(engine, serializer=serializer())
    async with AsyncSession(async_engine) as session:
        store = AsyncSessionPersistence(session, serializer=serializer())
        original = rich_snapshot()
        await store.save(original)
        await session.commit()
        loaded = await asyncio.to_thread(sync_store.load, original.workflow_id)
        assert_same_content(loaded, original)
        await asyncio.to_thread(
            sync_store.save, WorkflowSnapshot("from-sync", state={"b": b"\x00\xff"})
        )
        assert (await store.load("from-sync")).state == {"b": b"\x00\xff"}
        assert (await store.load(original.workflow_id)).version == 1


@pytest.mark.parametrize("expected", [0, 1], ids=["start", "resume"])
async def test_of_two_tasks_on_one_run_exactly_one_wins(
    engine: Engine, async_engine: AsyncEngine, db_kind: str, expected: int
) -> None:
    """The second task's compare-and-set waits (without blocking the loop) on the first's
    lock and, once the first commits, finds the new version: ConflictError."""
    if expected:
        await asyncio.to_thread(
            DatabasePersistence(engine).save, WorkflowSnapshot("run", state={"by": "nobody"})
        )
    server_id: list[int] = []
    started = SqliteStatementStarted("INSERT" if expected == 0 else "UPDATE")

    async def second() -> object:
        async with AsyncSession(async_engine) as session:
            store = AsyncSessionPersistence(session)
            connection = await session.connection()
            raw: Any = (await connection.get_raw_connection()).dbapi_connection
            if db_kind == "sqlite":
                await raw._connection.set_trace_callback(started)
            else:
                found = await connection.exec_driver_sql(server_id_sql(db_kind))
                server_id.append(found.scalar_one())
            try:
                if expected:
                    await store.load("run")
                mine = WorkflowSnapshot("run", state={"by": "second"})
                await store.save(mine, expected_version=expected)
                await session.commit()
                return "won"
            except PersistenceError as exc:
                await session.rollback()
                return exc
            finally:
                if db_kind == "sqlite":
                    await raw._connection.set_trace_callback(None)

    async with AsyncSession(async_engine) as first:
        store = AsyncSessionPersistence(first)
        await store.save(WorkflowSnapshot("run", state={"by": "first"}), expected_version=expected)
        task = asyncio.create_task(second())
        if db_kind == "sqlite":
            await asyncio.to_thread(wait_until, started.event.is_set, "the second to start")
        else:

            def blocked() -> bool:
                return bool(server_id) and is_waiting_on_a_lock(db_kind, engine, server_id[0])

            await asyncio.to_thread(wait_until, blocked, "the second to wait on the row lock")
        assert not task.done()
        await first.commit()
        outcome = await task
    assert isinstance(outcome, ConflictError), outcome
    stored = DatabasePersistence(engine).load("run")
    assert stored.state == {"by": "first"} and stored.version == expected + 1


async def test_the_repository_as_coroutines(engine: Engine, async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine, expire_on_commit=False) as session:
        repository = AsyncWorkflowInterruptRepository(session)
        assert repository.model is WorkflowInterrupt
        assert await repository.upsert("r", b"\x00not a snapshot\xff") == 1
        assert await repository.upsert("r", b"second", expected_version=1) == 2
        with pytest.raises(ConflictError):
            await repository.upsert("r", b"third", expected_version=1)
        row = await repository.get("r")
        assert await repository.get("missing") is None
        assert await repository.exists("r")
        assert [i.workflow_id for i in await repository.list()] == ["r"]
        await session.commit()
    # Read outside any greenlet: a lazy load here would raise MissingGreenlet.
    assert row is not None
    assert (row.data, row.version, row.status) == (b"second", 2, "unknown")
    assert row.created_at.tzinfo is not None and row.updated_at >= row.created_at
    assert stored_version(engine, "r") == 2
    async with AsyncSession(async_engine) as session:
        repository = AsyncWorkflowInterruptRepository(session)
        assert await repository.delete_older_than(datetime.now(UTC) + timedelta(minutes=1)) == 1
        assert await repository.upsert("s", b"x") == 1
        assert await repository.delete("s", expected_version=1) is True
        await session.commit()
    assert stored_version(engine, "r") is None and stored_version(engine, "s") is None


async def test_a_host_model_commits_with_the_apps_rows(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    await asyncio.to_thread(HostBase.metadata.create_all, engine)
    try:
        async with AsyncSession(async_engine) as session:
            session.add(User(email="bo@example.com", name="Bo"))
            store = AsyncSessionPersistence(session, model=HostInterrupt)
            await store.save(WorkflowSnapshot("refund-2", state={"amount": 12}))
            repository = AsyncWorkflowInterruptRepository(session, HostInterrupt)
            row = await repository.get("refund-2")
            assert isinstance(row, HostInterrupt) and row.version == 1
            await session.commit()
        host = DatabasePersistence(engine, model=HostInterrupt)
        assert (await asyncio.to_thread(host.load, "refund-2")).state == {"amount": 12}
        with engine.connect() as conn:
            assert conn.execute(sa.select(User.name)).scalars().all() == ["Bo"]
    finally:
        await asyncio.to_thread(HostBase.metadata.drop_all, engine)


@pytest.mark.parametrize("db_kind", ["mariadb"])
async def test_aiomysql_bytes_work_even_where_pymysql_broke_them(
    async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aio-libs/aiomysql#1080: with PyMySQL 1.2.3+ aiomysql's bytes escaper is a string.
    The library mends it before its first statement, so a save of bytes works."""
    monkeypatch.setattr("aiomysql.connection.escape_bytes_prefixed", "removed in PyMySQL")
    async with AsyncSession(async_engine) as session:
        store = AsyncSessionPersistence(session)
        await store.save(WorkflowSnapshot("w", state={"blob": b"\x00'\\\xff"}))
        assert (await store.load("w")).state == {"blob": b"\x00'\\\xff"}
        await session.rollback()


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
async def test_a_lost_connection_is_storage_unavailable(
    engine: Engine, async_engine: AsyncEngine, db_kind: str
) -> None:
    async with AsyncSession(async_engine) as session:
        store = AsyncSessionPersistence(session)
        await store.save(WorkflowSnapshot("w"))
        connection = await session.connection()
        server_id = (await connection.exec_driver_sql(server_id_sql(db_kind))).scalar_one()
        await asyncio.to_thread(kill, db_kind, engine, server_id)
        with pytest.raises(StorageUnavailableError) as caught:
            await store.load("w")
        assert isinstance(caught.value.__cause__, async_engine.dialect.loaded_dbapi.Error)
        await session.rollback()
        assert not await store.exists("w")


def test_calls_run_on_the_loops_own_thread(engine: Engine) -> None:
    """Each call runs on the loop's own thread (the greenlet bridge), never a worker."""
    seen: set[int] = set()

    async def main() -> None:
        async_engine = _async_engine(engine)
        try:
            async with AsyncSession(async_engine) as session:
                store = AsyncSessionPersistence(session)
                real = store.sync._write

                def spy(*args: Any) -> Any:
                    seen.add(threading.get_ident())
                    return real(*args)

                store.sync._write = spy  # type: ignore[method-assign,assignment]
                await store.save(WorkflowSnapshot("w"))
                await session.rollback()
        finally:
            await async_engine.dispose()

    asyncio.run(main())
    assert seen == {threading.get_ident()}
