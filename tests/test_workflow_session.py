"""start/resume(session=) and astart/aresume(session=): the run's writes join the app's
transaction, on a SQLite file, PostgreSQL and MariaDB (sync and async drivers)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from workflow_persistence import (
    AsyncDatabasePersistence,
    AsyncInMemoryPersistence,
    ConflictError,
    DatabasePersistence,
    InMemoryPersistence,
    InvalidArgumentError,
    Workflow,
)

from . import flows
from .test_database_async import async_url

refunds = sa.Table(
    "app_refunds",
    sa.MetaData(),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("amount", sa.Integer, nullable=False),
)


class Rollback(Exception):
    """The app's own failure after the run was started in its transaction."""


@pytest.fixture
def app_engine(engine: Engine) -> Engine:
    """The scratch database with the library's table and the app's own."""
    refunds.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(refunds.delete())
    return engine


@pytest.fixture
def workflow(app_engine: Engine) -> Iterator[Workflow]:
    persistence = DatabasePersistence(app_engine)
    yield flows.approval_workflow(persistence)
    persistence.close()


def _stored(engine: Engine, workflow_id: str) -> tuple[str | None, int]:
    """The run's stored status (None: no record) and how many app rows there are."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status FROM workflow_interrupts WHERE workflow_id = :id"),
            {"id": workflow_id},
        ).first()
        count = conn.execute(sa.select(sa.func.count()).select_from(refunds)).scalar_one()
    return (None if row is None else row[0]), count


def test_a_rolled_back_start_stores_nothing(app_engine: Engine, workflow: Workflow) -> None:
    def start_then_fail() -> None:
        with Session(app_engine) as session, session.begin():
            session.execute(refunds.insert().values(id="r-42", amount=30))
            run = workflow.start({"amount": 30}, workflow_id="r-42", session=session)
            assert run.status == "interrupted"
            raise Rollback

    with pytest.raises(Rollback):
        start_then_fail()
    assert _stored(app_engine, "r-42") == (None, 0)


def test_the_app_row_and_the_run_commit_together(app_engine: Engine, workflow: Workflow) -> None:
    with Session(app_engine) as session, session.begin():
        session.execute(refunds.insert().values(id="r-42", amount=30))
        workflow.start({"amount": 30}, workflow_id="r-42", session=session)
        with app_engine.connect() as other:  # not visible before the commit
            found = other.execute(
                sa.text("SELECT count(*) FROM workflow_interrupts WHERE workflow_id = 'r-42'")
            ).scalar_one()
        assert found == 0
    assert _stored(app_engine, "r-42") == ("interrupted", 1)


def test_resume_in_a_session_commits_or_rolls_back_with_it(
    app_engine: Engine, workflow: Workflow
) -> None:
    persistence = DatabasePersistence(app_engine, serializer=workflow.persistence.serializer)
    workflow.start({"amount": 30}, workflow_id="r-42")
    before = persistence.load("r-42")

    def resume_then_fail() -> None:
        with Session(app_engine) as session, session.begin():
            assert workflow.resume("r-42", "yes", session=session).result is True
            raise Rollback

    with pytest.raises(Rollback):
        resume_then_fail()
    after = persistence.load("r-42")
    persistence.close()
    assert (after.status, after.version) == ("interrupted", before.version)
    with Session(app_engine) as session, session.begin():
        session.execute(refunds.insert().values(id="r-42", amount=30))
        assert workflow.resume("r-42", "yes", session=session).result is True
    assert _stored(app_engine, "r-42") == (None, 1)  # completed: the record went


def _lock_waits(engine: Engine) -> int:
    """Transactions of this database waiting on a row lock (PostgreSQL, MariaDB)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        else:
            # A claim in flight on another connection of this database: it waits on our
            # row lock (innodb_trx does not always show MariaDB's waiter as LOCK WAIT).
            query = (
                "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE()"
                " AND id <> CONNECTION_ID() AND command = 'Query'"
                " AND (info LIKE 'UPDATE workflow_interrupts%%'"
                " OR info LIKE 'INSERT INTO workflow_interrupts%%')"
            )
        return int(conn.exec_driver_sql(query).scalar_one())


def test_two_resumes_in_two_transactions_one_wins(app_engine: Engine) -> None:
    effects = flows.SideEffects()
    persistence = DatabasePersistence(app_engine)
    # Kept when completed, so a resume that reads after the winner committed meets a
    # completed run (ConflictError) rather than no run.
    workflow = flows.counting_workflow(persistence, effects, block=False)
    workflow.keep_completed = timedelta(days=1)
    workflow.start(workflow_id="w")
    outcome: list[BaseException | str] = []

    def second() -> None:
        with Session(app_engine) as other, other.begin():
            try:
                outcome.append(workflow.resume("w", "no", session=other).result)
            except BaseException as exc:
                outcome.append(exc)

    with Session(app_engine) as first, first.begin():
        assert workflow.resume("w", "yes", session=first).result == "yes"
        thread = threading.Thread(target=second)
        thread.start()
        if app_engine.dialect.name != "sqlite":  # the second's claim waits on our row lock
            deadline = time.monotonic() + 20
            while _lock_waits(app_engine) == 0 and thread.is_alive():
                assert time.monotonic() < deadline, "the second resume never waited"
                time.sleep(0.01)  # polling the server for the wait, not papering over it
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
    assert effects.count == 1
    kept = persistence.load("w")
    assert (kept.status, kept.result) == ("completed", "yes")
    persistence.close()


def test_session_needs_a_database_persistence_and_a_session(app_engine: Engine) -> None:
    in_memory = flows.approval_workflow(InMemoryPersistence())
    with Session(app_engine) as session:
        with pytest.raises(InvalidArgumentError, match="needs a workflow whose persistence is a"):
            in_memory.start(session=session)
        with pytest.raises(InvalidArgumentError, match="needs a workflow whose persistence is a"):
            in_memory.resume("w", session=session)
    on_database = flows.approval_workflow(DatabasePersistence(app_engine))
    with pytest.raises(InvalidArgumentError, match="takes a SQLAlchemy Session, not str"):
        on_database.start(session="a session")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword argument 'sesion'"):
        on_database.start(sesion=None)  # type: ignore[call-arg]
    on_database.persistence.close()  # type: ignore[union-attr]


# -- async ------------------------------------------------------------------------------------


@pytest.fixture
async def async_engine(app_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(app_engine.url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def async_workflow(async_engine: AsyncEngine) -> AsyncIterator[Workflow]:
    persistence = AsyncDatabasePersistence(async_engine)
    yield flows.approval_workflow(persistence)  # type: ignore[arg-type]
    await persistence.aclose()


async def test_astart_in_an_async_session_commits_or_rolls_back_with_it(
    app_engine: Engine, async_engine: AsyncEngine, async_workflow: Workflow
) -> None:
    async def in_transaction(answer: str | None, *, fail: bool) -> None:
        async with AsyncSession(async_engine) as session, session.begin():
            if answer is None:
                await session.execute(refunds.insert().values(id="r-1", amount=30))
                run = await async_workflow.astart(
                    {"amount": 30}, workflow_id="r-1", session=session
                )
                assert run.status == "interrupted"
            else:
                run = await async_workflow.aresume("r-1", answer, session=session)
                assert run.result is True
            if fail:
                raise Rollback

    with pytest.raises(Rollback):
        await in_transaction(None, fail=True)
    assert _stored(app_engine, "r-1") == (None, 0)
    await in_transaction(None, fail=False)
    assert _stored(app_engine, "r-1") == ("interrupted", 1)
    with pytest.raises(Rollback):
        await in_transaction("yes", fail=True)
    assert _stored(app_engine, "r-1") == ("interrupted", 1)
    await in_transaction("yes", fail=False)
    assert _stored(app_engine, "r-1") == (None, 1)


async def test_async_session_needs_an_async_database_persistence(
    async_engine: AsyncEngine,
) -> None:
    in_memory = flows.approval_workflow(AsyncInMemoryPersistence())  # type: ignore[arg-type]
    async with AsyncSession(async_engine) as session:
        with pytest.raises(InvalidArgumentError, match="AsyncDatabasePersistence"):
            await in_memory.astart(session=session)
        with pytest.raises(InvalidArgumentError, match="AsyncDatabasePersistence"):
            await in_memory.aresume("w", session=session)
