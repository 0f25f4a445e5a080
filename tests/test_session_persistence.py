"""SessionPersistence: the persistence contract inside the caller's Session and transaction,
on a SQLite file, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from workflow_persistence import (
    ConflictError,
    DatabasePersistence,
    InvalidWorkflowIdError,
    Persistence,
    PersistenceError,
    SessionPersistence,
    StorageUnavailableError,
    WorkflowNotFoundError,
    WorkflowSnapshot,
)

from . import test_contract
from .hostapp.models import HostBase, HostInterrupt, User
from .samples import serializer
from .session_support import (
    SqliteStatementStarted,
    is_waiting_on_a_lock,
    kill,
    server_id_sql,
    stored_version,
    wait_until,
)

# The whole contract, on a SessionPersistence whose transaction is never committed.
for _name in dir(test_contract):
    if _name.startswith("test_"):
        globals()[_name] = getattr(test_contract, _name)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def store(session: Session) -> Persistence:
    """What the contract tests run on."""
    return SessionPersistence(session, serializer=serializer())


def _committed(engine: Engine, snapshot: WorkflowSnapshot) -> None:
    with Session(engine) as session, session.begin():
        SessionPersistence(session).save(snapshot)


def test_nothing_is_visible_until_the_caller_commits(engine: Engine, session: Session) -> None:
    store = SessionPersistence(session)
    assert store.save(WorkflowSnapshot("w", state={"n": 1})) == 1
    assert store.load("w").state == {"n": 1}  # the transaction sees its own write
    assert stored_version(engine, "w") is None  # another connection does not
    assert session.in_transaction()
    session.commit()
    assert stored_version(engine, "w") == 1


def test_a_rollback_leaves_nothing(engine: Engine, session: Session) -> None:
    _committed(engine, WorkflowSnapshot("kept", state={"v": 1}))
    store = SessionPersistence(session)
    store.save(WorkflowSnapshot("new"))
    store.save(WorkflowSnapshot("kept", state={"v": 2}), expected_version=1)
    assert store.delete("kept", expected_version=2) is True
    session.rollback()
    assert stored_version(engine, "new") is None
    assert DatabasePersistence(engine).load("kept").state == {"v": 1}


def test_the_persistence_never_ends_the_transaction(engine: Engine, session: Session) -> None:
    store = SessionPersistence(session)
    store.save(WorkflowSnapshot("w"))
    transaction = session.get_transaction()
    store.save(WorkflowSnapshot("w"))
    store.load("w")
    store.exists("w")
    store.list()
    store.prune(timedelta(days=1))
    store.delete("other")
    assert transaction is not None and transaction.is_active
    assert session.get_transaction() is transaction
    assert stored_version(engine, "w") is None


def test_ids_are_checked_before_a_transaction_begins(session: Session) -> None:
    store = SessionPersistence(session)
    for call in (
        lambda: store.load(""),
        lambda: store.save(WorkflowSnapshot("x" * 256)),
        lambda: store.delete(""),
        lambda: store.exists(7),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidWorkflowIdError):
            call()
    assert not session.in_transaction()


def test_a_conflict_leaves_the_transaction_usable(engine: Engine, session: Session) -> None:
    """A failed compare-and-set is no failed statement: even on PostgreSQL the caller's
    transaction goes on."""
    _committed(engine, WorkflowSnapshot("w"))
    store = SessionPersistence(session)
    with pytest.raises(ConflictError):
        store.save(WorkflowSnapshot("w"), expected_version=5)
    with pytest.raises(ConflictError):
        store.save(WorkflowSnapshot("w"), expected_version=0)
    assert store.save(WorkflowSnapshot("w", state={"n": 2}), expected_version=1) == 2
    session.commit()
    assert stored_version(engine, "w") == 2


def test_the_snapshot_commits_with_the_apps_own_rows(engine: Engine) -> None:
    """A host model on WorkflowInterruptMixin, beside the host's own table: one
    transaction for both, whichever way it ends."""
    HostBase.metadata.create_all(engine)
    try:
        for commit in (False, True):
            with Session(engine) as session:
                session.add(User(email="ann@example.com", name="Ann"))
                store = SessionPersistence(session, model=HostInterrupt)
                store.save(WorkflowSnapshot("refund-1", state={"amount": 30}))
                assert [i.workflow_id for i in store.list()] == ["refund-1"]
                if commit:
                    session.commit()
                else:
                    session.rollback()
            with Session(engine) as session:
                users = session.scalars(sa.select(User.email)).all()
                store = SessionPersistence(session, model=HostInterrupt)
                assert store.exists("refund-1") is commit
                assert users == (["ann@example.com"] if commit else [])
        assert DatabasePersistence(engine, model=HostInterrupt).load("refund-1").state == {
            "amount": 30
        }
        with pytest.raises(WorkflowNotFoundError):  # not in the library's own table
            DatabasePersistence(engine).load("refund-1")
    finally:
        HostBase.metadata.drop_all(engine)


@pytest.mark.parametrize("expected", [0, 1], ids=["start", "resume"])
def test_of_two_transactions_on_one_run_exactly_one_wins(
    engine: Engine, db_kind: str, expected: int
) -> None:
    """Both read the run at the same version; the second's compare-and-set waits on the
    first's lock and, once the first commits, finds the new version: ConflictError."""
    if expected:
        _committed(engine, WorkflowSnapshot("run", state={"by": "nobody"}))
    outcome: list[object] = []
    server_id: list[int] = []
    started = SqliteStatementStarted("INSERT" if expected == 0 else "UPDATE")

    def second() -> None:
        with Session(engine) as session:
            store = SessionPersistence(session)
            connection = session.connection()
            raw: Any = connection.connection.dbapi_connection
            if db_kind == "sqlite":
                raw.set_trace_callback(started)
            else:
                server_id.append(connection.exec_driver_sql(server_id_sql(db_kind)).scalar_one())
            if expected:
                store.load("run")
            try:
                mine = WorkflowSnapshot("run", state={"by": "second"})
                store.save(mine, expected_version=expected)
                session.commit()
                outcome.append("won")
            except PersistenceError as exc:
                session.rollback()
                outcome.append(exc)
            finally:
                if db_kind == "sqlite":
                    raw.set_trace_callback(None)

    with Session(engine) as first:
        store = SessionPersistence(first)
        assert store.save(WorkflowSnapshot("run", state={"by": "first"}), expected_version=expected)
        thread = threading.Thread(target=second)
        thread.start()
        try:
            if db_kind == "sqlite":
                wait_until(started.event.is_set, "the second writer's statement to start")
            else:
                wait_until(lambda: bool(server_id), "the second transaction to connect")
                wait_until(
                    lambda: is_waiting_on_a_lock(db_kind, engine, server_id[0]),
                    "the second transaction to wait on the first's row lock",
                )
            assert not outcome  # it cannot finish while the first holds the lock
            first.commit()
        finally:
            thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
    stored = DatabasePersistence(engine).load("run")
    assert stored.state == {"by": "first"} and stored.version == expected + 1


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_a_lost_connection_is_storage_unavailable(engine: Engine, db_kind: str) -> None:
    with Session(engine) as session:
        store = SessionPersistence(session)
        store.save(WorkflowSnapshot("w"))
        server_id = session.connection().exec_driver_sql(server_id_sql(db_kind)).scalar_one()
        kill(db_kind, engine, server_id)
        with pytest.raises(StorageUnavailableError) as caught:
            store.load("w")
        assert isinstance(caught.value.__cause__, engine.dialect.loaded_dbapi.Error)
        session.rollback()
        # The session goes on with a new connection; the lost transaction left nothing.
        assert not store.exists("w")


@pytest.mark.parametrize("db_kind", ["postgresql"])
def test_after_a_failed_statement_postgresql_wants_a_rollback(
    engine: Engine, db_kind: str
) -> None:
    with Session(engine) as session:
        store = SessionPersistence(session)
        store.save(WorkflowSnapshot("w"))
        with pytest.raises(sa.exc.DBAPIError):
            session.execute(sa.text("SELECT 1/0"))
        with pytest.raises(PersistenceError) as caught:
            store.exists("w")
        assert "aborted" in str(caught.value)
        session.rollback()
        assert store.save(WorkflowSnapshot("w")) == 1


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_on_sqlite_a_writer_past_the_busy_timeout_gets_an_error(
    engine: Engine, db_kind: str
) -> None:
    """SQLite has one writer: the second waits up to its busy timeout for the first's
    commit; past it, StorageUnavailableError (retry), never a second winner."""
    _committed(engine, WorkflowSnapshot("run"))
    impatient = sa.create_engine(engine.url, connect_args={"timeout": 0.05})
    try:
        with Session(engine) as first, Session(impatient) as second:
            SessionPersistence(first).save(WorkflowSnapshot("run"), expected_version=1)
            with pytest.raises(StorageUnavailableError) as caught:
                SessionPersistence(second).save(WorkflowSnapshot("run"), expected_version=1)
            assert "locked" in str(caught.value)
            second.rollback()
            first.commit()
        assert stored_version(engine, "run") == 2
        assert impatient.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        impatient.dispose()
