"""WorkflowInterruptRepository inside a caller's Session and transaction, on each database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session

from workflow_persistence import (
    ConflictError,
    InvalidArgumentError,
    InvalidWorkflowIdError,
    PayloadTooLargeError,
    WorkflowInterrupt,
    WorkflowInterruptMixin,
    WorkflowInterruptRepository,
)

from . import wire


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def _repo(session: Session) -> WorkflowInterruptRepository[WorkflowInterrupt]:
    return WorkflowInterruptRepository(session)


def _stored(engine: Engine, workflow_id: str) -> tuple[bytes, int] | None:
    """What another connection sees: committed data only."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(WorkflowInterrupt.data, WorkflowInterrupt.version).where(
                WorkflowInterrupt.workflow_id == workflow_id
            )
        ).first()
    return None if row is None else (bytes(row[0]), row[1])


class StatementCounter:
    """Counts the statements SQLAlchemy sends on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


def test_upsert_returns_versions_and_get_reads_them(session: Session) -> None:
    repo = _repo(session)
    assert repo.upsert("w", b"one") == 1
    assert repo.upsert("w", b"two") == 2
    row = repo.get("w")
    assert row is not None
    assert (row.data, row.version) == (b"two", 2)
    assert row.created_at.tzinfo is not None and row.updated_at >= row.created_at
    assert repo.get("missing") is None


def test_upsert_accepts_any_bytes_like(session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", bytearray(b"\x00\x01"))
    repo.upsert("v", memoryview(b"\xff\xfe"))
    assert repo.get("w").data == b"\x00\x01"  # type: ignore[union-attr]
    assert repo.get("v").data == b"\xff\xfe"  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError):
        repo.upsert("w", "text")  # type: ignore[arg-type]


def test_repository_never_commits(engine: Engine, session: Session) -> None:
    _repo(session).upsert("w", b"data")
    assert _stored(engine, "w") is None  # the caller has not committed yet
    session.commit()
    assert _stored(engine, "w") == (b"data", 1)


def test_rollback_undoes_insert_and_update(engine: Engine, session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", b"kept")
    session.commit()
    repo.upsert("w", b"discarded")
    repo.upsert("new", b"discarded")
    session.rollback()
    assert _stored(engine, "w") == (b"kept", 1)
    assert _stored(engine, "new") is None


def test_upsert_shares_the_callers_transaction(engine: Engine, session: Session) -> None:
    """The snapshot and the app's own writes commit, or roll back, together."""
    repo = _repo(session)
    with session.begin():
        repo.upsert("w", b"with-app-write")
        session.execute(
            sa.update(WorkflowInterrupt)
            .where(WorkflowInterrupt.workflow_id == "w")
            .values(version=WorkflowInterrupt.version + 10)
        )
    assert _stored(engine, "w") == (b"with-app-write", 11)


@pytest.mark.parametrize("case", ["new", "existing", "expected-0", "expected-n"])
def test_one_statement_per_upsert(engine: Engine, session: Session, case: str) -> None:
    repo = _repo(session)
    repo.upsert("warm-up", b"x")  # MySQL reads max_allowed_packet once per connection
    if case in ("existing", "expected-n"):
        repo.upsert("w", b"v1")
    session.commit()  # listeners are looked at once per transaction
    with StatementCounter(engine) as counter:
        if case == "new":
            version = repo.upsert("w", b"v1")
        elif case == "existing":
            version = repo.upsert("w", b"v2")
        elif case == "expected-0":
            version = repo.upsert("w", b"v1", expected_version=0)
        else:
            version = repo.upsert("w", b"v2", expected_version=1)
    assert len(counter.statements) == 1, counter.statements
    assert counter.statements[0].lstrip().upper().startswith(("INSERT", "UPDATE"))
    assert version == (1 if case in ("new", "expected-0") else 2)
    session.commit()
    assert _stored(engine, "w") == ((b"v1", 1) if version == 1 else (b"v2", 2))


@pytest.mark.parametrize("case", ["new", "existing", "expected-0", "expected-n"])
def test_one_round_trip_per_upsert_on_the_fast_path(
    engine: Engine, session: Session, db_kind: str, case: str
) -> None:
    """With no listeners the repository runs on the session's DBAPI connection; still
    exactly one statement per upsert, counted on the wire."""
    repo = _repo(session)
    for n in range(6):  # past psycopg's prepare threshold, and MySQL's one-time limit read
        repo.upsert(f"warm-{n}", b"x")
        repo.upsert(f"warm-{n}", b"x", expected_version=1)
        repo.upsert(f"warm-new-{n}", b"x", expected_version=0)
    if case in ("existing", "expected-n"):
        repo.upsert("w", b"v1")
    dbapi = session.connection().connection.dbapi_connection
    action = {
        "new": lambda: repo.upsert("w", b"v1"),
        "existing": lambda: repo.upsert("w", b"v2"),
        "expected-0": lambda: repo.upsert("w", b"v1", expected_version=0),
        "expected-n": lambda: repo.upsert("w", b"v2", expected_version=1),
    }[case]
    assert wire.round_trips(dbapi, db_kind, action) == 1
    session.commit()
    assert _stored(engine, "w") == ((b"v1", 1) if case in ("new", "expected-0") else (b"v2", 2))


def test_listeners_and_echo_see_the_statements(engine: Engine, session: Session) -> None:
    """An engine someone observes (events, echo, OpenTelemetry) is not bypassed."""
    repo = _repo(session)
    with StatementCounter(engine) as counter:
        repo.upsert("w", b"x")
        repo.get("w")
        repo.exists("w")
        repo.list(limit=5)
        repo.delete("w")
    verbs = [s.lstrip().split()[0].upper() for s in counter.statements]
    assert verbs == ["INSERT", "SELECT", "SELECT", "SELECT", "DELETE"]


def test_get_returns_the_sessions_persistent_instance(session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", b"x")
    row = repo.get("w")
    assert row is not None
    assert sa.inspect(row).persistent and row in session
    assert session.get(WorkflowInterrupt, "w") is row  # the identity map knows it
    assert not session.dirty  # loaded values, not pending changes


def test_conflicts_raise_and_change_nothing(engine: Engine, session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", b"v1")
    repo.upsert("w", b"v2")
    with pytest.raises(ConflictError):
        repo.upsert("w", b"stale", expected_version=1)
    with pytest.raises(ConflictError):
        repo.upsert("w", b"stale", expected_version=0)
    with pytest.raises(ConflictError):
        repo.upsert("missing", b"stale", expected_version=3)
    # The conflicts raised no database error, so the transaction is still usable
    # (on PostgreSQL an error would have aborted it).
    assert repo.upsert("w", b"v3", expected_version=2) == 3
    session.commit()
    assert _stored(engine, "w") == (b"v3", 3)
    assert _stored(engine, "missing") is None


def test_get_reflects_core_writes_in_the_same_session(session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", b"one")
    first = repo.get("w")
    repo.upsert("w", b"two")
    second = repo.get("w")
    assert second is not None
    assert second is first  # the session's identity map still holds one instance...
    assert (second.data, second.version) == (b"two", 2)  # ...with fresh contents
    assert session.get(WorkflowInterrupt, "w").version == 2  # type: ignore[union-attr]


def test_delete(session: Session) -> None:
    repo = _repo(session)
    repo.upsert("w", b"x")
    held = repo.get("w")
    assert repo.exists("w")
    assert repo.delete("w") is True
    assert repo.delete("w") is False
    assert not repo.exists("w")
    assert repo.get("w") is None
    assert held not in session  # the deleted row's instance left the session


def test_list_and_delete_older_than(engine: Engine, session: Session) -> None:
    repo = _repo(session)
    for wid in ("a", "b", "c"):
        repo.upsert(wid, b"x")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    repo.upsert("later", b"x")
    session.execute(
        sa.update(WorkflowInterrupt)
        .where(WorkflowInterrupt.workflow_id == "later")
        .values(updated_at=cutoff + timedelta(minutes=1))
    )
    assert repo.list()[0].workflow_id == "later"
    assert [i.workflow_id for i in repo.list(limit=1)] == ["later"]
    assert {i.workflow_id for i in repo.list(updated_before=cutoff)} == {"a", "b", "c"}
    old = repo.get("a")
    assert repo.delete_older_than(cutoff, limit=2) == 2
    assert repo.delete_older_than(cutoff) == 1
    assert old not in session
    session.commit()
    assert [i.workflow_id for i in repo.list()] == ["later"]


def test_bad_arguments_fail_before_any_statement(engine: Engine, session: Session) -> None:
    repo = _repo(session)
    with StatementCounter(engine) as counter:
        for bad in ("", "x" * 256, None, 7):
            with pytest.raises(InvalidWorkflowIdError):
                repo.upsert(bad, b"x")  # type: ignore[arg-type]
            with pytest.raises(InvalidWorkflowIdError):
                repo.get(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            repo.upsert("w", b"x", expected_version=-1)
        with pytest.raises(InvalidArgumentError):
            repo.delete_older_than(datetime(2026, 1, 1))
    assert counter.statements == []


@pytest.mark.parametrize("db_kind", ["mariadb"])  # max_allowed_packet is MariaDB's
def test_oversized_payload_on_mariadb_leaves_the_row_intact(
    engine: Engine, session: Session
) -> None:
    repo = _repo(session)
    repo.upsert("w", b"small")
    session.commit()
    limit = session.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one()
    with pytest.raises(PayloadTooLargeError) as caught:
        repo.upsert("w", b"\x00" * (limit // 2 + 1))  # sent as hex or escaped: twice the size
    assert caught.value.limit == limit
    assert repo.get("w").data == b"small"  # type: ignore[union-attr]
    assert repo.upsert("w", b"after") == 2  # the session and its connection still work
    session.commit()


class _OtherBase(DeclarativeBase):
    pass


class _NeverCreated(WorkflowInterruptMixin, _OtherBase):
    __tablename__ = "wfp_table_that_was_never_created"


def test_driver_errors_come_out_as_the_librarys(session: Session) -> None:
    from workflow_persistence import PersistenceError

    repo = WorkflowInterruptRepository(session, model=_NeverCreated)
    with pytest.raises(PersistenceError, match="does not exist") as caught:
        repo.upsert("w", b"x")
    assert caught.value.__cause__ is not None  # the driver's own error
    session.rollback()


def test_delete_older_than_with_expired_instances(engine: Engine) -> None:
    """After a commit the session's instances are expired; dropping them must not load
    rows that the DELETE just removed."""
    with Session(engine) as session:
        repo = _repo(session)
        repo.upsert("a", b"x")
        session.commit()
        held = repo.get("a")
        session.commit()  # expires ``held``
        assert repo.delete_older_than(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert held not in session
        session.commit()


def test_two_repositories_share_a_session_through_a_large_read(session: Session) -> None:
    first, second = _repo(session), _repo(session)
    big = b"x" * 300_000  # large enough that reading it gives the connection a new cursor
    first.upsert("big", big)
    assert second.exists("big")
    assert first.get("big").data == big  # type: ignore[union-attr]
    assert second.upsert("other", b"y") == 1  # the other repository's cursor still works
    assert second.get("big").data == big  # type: ignore[union-attr]


# -- the queryable columns (revision 2) --------------------------------------------------


def test_upsert_derives_the_columns_from_data(engine: Engine, session: Session) -> None:
    from workflow_persistence import JsonSerializer, PickleSerializer, WorkflowSnapshot

    snapshot = WorkflowSnapshot(
        "w",
        current_node="approve",
        interrupt={"question": "Approve?"},
        metadata={"tenant": "acme"},
        workflow_name="refund",
    )
    repo = _repo(session)
    repo.upsert("w", JsonSerializer().dumps(snapshot))
    signed = PickleSerializer(secret_key=b"k" * 32).dumps(WorkflowSnapshot("p"))
    repo.upsert("p", signed)  # not readable without the key: status unknown
    repo.upsert("junk", b"\x00 not a snapshot")
    session.commit()
    row = repo.get("w")
    assert row is not None
    assert (row.status, row.workflow_name, row.current_node) == ("interrupted", "refund", "approve")
    assert (row.interrupt, row.run_metadata, row.expires_at) == (
        {"question": "Approve?"},
        {"tenant": "acme"},
        None,
    )
    for workflow_id in ("p", "junk"):
        row = repo.get(workflow_id)
        assert row is not None
        assert (row.status, row.interrupt, row.run_metadata) == ("unknown", None, {})
    assert sorted(i.workflow_id for i in repo.list(status="unknown")) == ["junk", "p"]
    assert [i.workflow_id for i in repo.list(metadata={"tenant": "acme"})] == ["w"]


def test_upsert_with_given_columns_and_list_filters(session: Session) -> None:
    from workflow_persistence._serialization.columns import SnapshotColumns

    repo = _repo(session)
    failed = SnapshotColumns("failed", "billing", "charge", None, '{"tenant":"acme"}', None)
    waiting = SnapshotColumns(
        "interrupted", "refund", "approve", '"ok?"', '{"tenant":"acme"}', None
    )
    repo.upsert("f", b"x", columns=failed)
    repo.upsert("i", b"x", columns=waiting)
    with pytest.raises(InvalidArgumentError):
        repo.upsert("bad", b"x", columns={"status": "failed"})  # type: ignore[arg-type]
    assert [i.workflow_id for i in repo.list(status="failed")] == ["f"]
    assert [i.workflow_id for i in repo.list(workflow_name=["refund", "x"])] == ["i"]
    (info,) = repo.list(status="interrupted", metadata={"tenant": "acme"})
    assert (info.interrupt, info.current_node, info.metadata) == (
        "ok?",
        "approve",
        {"tenant": "acme"},
    )
    assert repo.list(metadata={"tenant": "Acme"}) == []
    with pytest.raises(InvalidArgumentError):
        repo.list(metadata={"tenant')--": "acme"})


def test_an_expired_row_counts_as_absent(session: Session) -> None:
    from workflow_persistence._serialization.columns import SnapshotColumns

    repo = _repo(session)
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = SnapshotColumns("completed", None, None, None, "{}", past)
    repo.upsert("w", b"one", columns=expired)
    assert repo.upsert("w", b"two", columns=expired) == 1  # written over as new
    assert not repo.exists("w")
    assert repo.list() == []
    assert repo.delete("w") is False
    assert repo.get("w") is not None  # get reads the row as it is, expiry and all
    live = SnapshotColumns("interrupted", None, None, None, "{}", None)
    assert repo.upsert("w", b"three", expected_version=0, columns=live) == 1
    assert repo.exists("w")


def test_filtered_lists_run_under_listeners_too(engine: Engine, session: Session) -> None:
    """The observed path (exec_driver_sql) binds the same parameters: JSON casts included."""
    from workflow_persistence._serialization.columns import SnapshotColumns

    repo = _repo(session)
    columns = SnapshotColumns(
        "interrupted", "refund", "approve", '{"q":1}', '{"t":"a","n":1}', None
    )
    with StatementCounter(engine) as counter:
        repo.upsert("w", b"x", columns=columns)
        listed = repo.list(
            status="interrupted", workflow_name="refund", metadata={"t": "a", "n": 1}
        )
        assert [i.workflow_id for i in listed] == ["w"]
        assert listed[0].interrupt == {"q": 1}
        assert repo.list(metadata={"n": True}) == []
    assert len(counter.statements) == 3
