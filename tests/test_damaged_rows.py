"""Rows damaged behind the library's back, planted with raw SQL on each database.

A record whose columns hold what the library never writes (SQLite's dynamic types, a
MariaDB zero date, a PostgreSQL infinite timestamp, a version below 1) reads as
CorruptSnapshotError; listing leaves it out and lists the rest; writing over it, deleting
and pruning it work. Never a TypeError, AttributeError, ValueError or MemoryError.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session

from workflow_persistence import (
    ConflictError,
    CorruptSnapshotError,
    DatabasePersistence,
    WorkflowInterruptMixin,
    WorkflowInterruptRepository,
    WorkflowSnapshot,
)

from . import flows

TABLE = "workflow_interrupts"
HEALTHY = ("good-1", "good-2")


@dataclass(frozen=True)
class Damage:
    """``value`` is SQL planted in ``column`` of the record ``bad``."""

    column: str
    value: str

    def __str__(self) -> str:
        return f"{self.column}={self.value}"


DAMAGES = {
    "sqlite": [
        Damage("data", "'a snapshot as TEXT'"),
        Damage("data", "1.5"),
        Damage("data", "9000000000000000000"),  # bytes(9e18) would be a MemoryError
        Damage("version", "'abc'"),
        Damage("version", "1.5"),
        Damage("version", "0"),
        Damage("version", "-3"),
        Damage("version", "9e999"),  # REAL infinity
        Damage("created_at", "'garbage'"),
        Damage("updated_at", "'garbage'"),
        Damage("updated_at", "5"),
        Damage("updated_at", "1.5"),
        Damage("updated_at", "x'00ff'"),
        Damage("updated_at", "'0000-00-00 00:00:00'"),
        Damage("updated_at", "'9999-12-31 23:00:00-05:00'"),  # past year 9999 in UTC
        Damage("expires_at", "'garbage'"),  # sorts after any timestamp: not expired
    ],
    "postgresql": [
        Damage("version", "0"),
        Damage("version", "-3"),
        Damage("updated_at", "'infinity'"),
        Damage("created_at", "'-infinity'"),
        Damage("updated_at", "'10000-01-01 00:00:00+00'"),
        Damage("updated_at", "'0044-03-15 00:00:00+00 BC'"),
        Damage("expires_at", "'infinity'"),
    ],
    "mariadb": [
        Damage("version", "0"),
        Damage("version", "-3"),
        Damage("updated_at", "'0000-00-00 00:00:00'"),
        Damage("created_at", "'0000-00-00 00:00:00'"),
        Damage("updated_at", "'2024-00-10 00:00:00'"),  # a zero month
        Damage("expires_at", "'2999-00-10 00:00:00'"),  # a zero month, in the future
    ],
}
CASES = [
    pytest.param(kind, damage, id=f"{kind}-{damage}")
    for kind, damages in DAMAGES.items()
    for damage in damages
]


def plant(engine: Engine, *statements: str) -> None:
    """Run raw SQL on a connection of its own (MariaDB: with strict modes off, so zero
    dates go in), leaving the engine's pooled connections untouched."""
    planter = sa.create_engine(engine.url, poolclass=sa.NullPool)
    try:
        with planter.begin() as conn:
            if engine.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET SESSION sql_mode = ''")
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        planter.dispose()


def damage_record(engine: Engine, damage: Damage, workflow_id: str = "bad") -> None:
    plant(
        engine,
        f"UPDATE {TABLE} SET {damage.column} = {damage.value} WHERE workflow_id = '{workflow_id}'",
    )


@pytest.fixture
def store(engine: Engine) -> Iterator[DatabasePersistence]:
    persistence = DatabasePersistence(engine)
    yield persistence
    persistence.close()


@pytest.fixture
def damaged(engine: Engine, store: DatabasePersistence, damage: Damage) -> DatabasePersistence:
    """Two healthy interrupted runs and, saved last (newest), the damaged ``bad``."""
    workflow = flows.approval_workflow(store)
    for workflow_id in (*HEALTHY, "bad"):
        workflow.start({"amount": 30}, workflow_id=workflow_id)
    damage_record(engine, damage)
    return store


def _listed(infos: list[Any]) -> list[str]:
    return [info.workflow_id for info in infos]


def _listable(column: str) -> list[str]:
    """What list shows, newest first: it never reads ``data``, so damage there is
    for load to find."""
    return ["bad", *reversed(HEALTHY)] if column == "data" else list(reversed(HEALTHY))


@pytest.mark.parametrize(("db_kind", "damage"), CASES)
def test_reading_a_damaged_record_raises_corrupt_snapshot(
    damaged: DatabasePersistence, damage: Damage
) -> None:
    with pytest.raises(CorruptSnapshotError, match=damage.column) as raised:
        damaged.load("bad")
    assert "'bad'" in str(raised.value)
    with pytest.raises(CorruptSnapshotError, match=damage.column):
        flows.approval_workflow(damaged).resume("bad", "yes")
    assert damaged.load("good-1").workflow_id == "good-1"  # the connection is still good


@pytest.mark.parametrize(("db_kind", "damage"), CASES)
def test_list_leaves_out_the_damaged_record_and_lists_the_rest(
    damaged: DatabasePersistence, damage: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _listable(damage.column)
    with caplog.at_level(logging.WARNING, logger="workflow_persistence"):
        assert _listed(damaged.list()) == expected
    assert ("'bad'" in caplog.text) is (damage.column != "data")
    # However the damaged row sorts, a limit still fills up with the records after it.
    assert _listed(damaged.list(limit=2)) == expected[:2]
    assert _listed(damaged.list(limit=1)) == expected[:1]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert _listed(damaged.list(updated_before=later)) == expected
    assert all(type(info.version) is int for info in damaged.list())


#: JSON columns holding what no save writes: not JSON (SQLite keeps any text), or not an
#: object where the metadata belongs.
JSON_DAMAGES = {
    "sqlite": [
        Damage("run_metadata", "'not json'"),
        Damage("interrupt", "'{broken'"),
        Damage("run_metadata", "'[1, 2]'"),
        Damage("status", "x'05'"),  # a blob where the status text belongs
    ],
    "postgresql": [Damage("run_metadata", "'[1, 2]'"), Damage("run_metadata", "'\"text\"'")],
    "mariadb": [Damage("run_metadata", "'[1, 2]'"), Damage("run_metadata", "'\"text\"'")],
}


@pytest.mark.parametrize(
    ("db_kind", "damage"),
    [
        pytest.param(kind, damage, id=f"{kind}-{damage}")
        for kind, damages in JSON_DAMAGES.items()
        for damage in damages
    ],
)
def test_list_leaves_out_a_record_whose_queryable_columns_are_damaged(
    damaged: DatabasePersistence, damage: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workflow_persistence"):
        assert _listed(damaged.list()) == list(reversed(HEALTHY))
    assert "'bad'" in caplog.text and damage.column in caplog.text
    assert _listed(damaged.list(limit=1)) == [HEALTHY[-1]]
    assert damaged.load("bad").workflow_id == "bad"  # data is the truth, and sound
    assert damaged.save(damaged.load("bad")) >= 1  # a save writes the columns anew
    assert "bad" in _listed(damaged.list())


def _outcome(save: Callable[[], int]) -> int | str:
    """The version a save returned, or the name of the library error it raised."""
    try:
        return save()
    except (ConflictError, CorruptSnapshotError) as exc:
        return type(exc).__name__


def _check_upsert_over(store: DatabasePersistence, column: str) -> None:
    """An upsert over a damaged record either works, and what it wrote loads (unless the
    damage is in created_at, which an upsert keeps), or says the version is damaged."""
    upserted = _outcome(lambda: store.save(WorkflowSnapshot("bad")))
    if column == "version" and upserted == "CorruptSnapshotError":
        return
    assert type(upserted) is int and upserted >= 1
    if column != "created_at":
        assert store.load("bad").version == upserted


@pytest.mark.parametrize(("db_kind", "damage"), CASES)
def test_writing_deleting_and_pruning_a_damaged_record_work(
    damaged: DatabasePersistence, damage: Damage
) -> None:
    stored = damaged.load("good-1").version  # what "bad" held before the damage
    assert damaged.exists("bad") is True
    compare_and_set = _outcome(
        lambda: damaged.save(WorkflowSnapshot("bad"), expected_version=stored)
    )
    assert compare_and_set == ("ConflictError" if damage.column == "version" else stored + 1)
    _check_upsert_over(damaged, damage.column)
    assert damaged.delete("bad") is True
    assert damaged.exists("bad") is False

    damage_record(damaged.engine, damage, "good-2")
    assert damaged.prune(datetime.now(UTC) + timedelta(hours=1)) >= 1
    assert not damaged.exists("good-1")
    assert damaged.list() == []


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_a_version_at_the_columns_maximum_is_left_as_it_is(
    store: DatabasePersistence, engine: Engine
) -> None:
    """The database refuses to count past its INTEGER: the save says why, writes nothing."""
    flows.approval_workflow(store).start({"amount": 30}, workflow_id="bad")
    top = 2**31 - 1
    damage_record(engine, Damage("version", str(top)))
    before = store.load("bad")
    assert before.version == top
    for expected in (None, top):
        with pytest.raises(CorruptSnapshotError, match="version cannot be incremented"):
            store.save(WorkflowSnapshot("bad", state={"new": 1}), expected_version=expected)
    with pytest.raises(CorruptSnapshotError, match="version cannot be incremented"):
        flows.approval_workflow(store).resume("bad", "yes")
    after = store.load("bad")
    assert (after.version, after.state, after.updated_at) == (
        top, before.state, before.updated_at
    )


@pytest.fixture
def observed(request: pytest.FixtureRequest, engine: Engine) -> Iterator[bool]:
    """Whether a cursor listener watches the engine (the repository then runs its
    statements through SQLAlchemy, which wraps driver errors)."""
    watching: bool = request.param

    def listener(*_args: Any) -> None:
        pass

    if watching:
        event.listen(engine, "before_cursor_execute", listener)
    yield watching
    if watching:
        event.remove(engine, "before_cursor_execute", listener)


@pytest.mark.parametrize("observed", [False, True], ids=["raw", "observed"], indirect=True)
@pytest.mark.parametrize(("db_kind", "damage"), CASES)
def test_the_repository_on_a_damaged_row(
    damaged: DatabasePersistence, engine: Engine, damage: Damage, observed: bool
) -> None:
    with Session(engine) as session:
        repo = WorkflowInterruptRepository(session)
        with pytest.raises(CorruptSnapshotError, match=damage.column):
            repo.get("bad")
        assert _listed(repo.list()) == _listable(damage.column)
        assert _listed(repo.list(limit=1)) == _listable(damage.column)[:1]
        good = repo.get("good-1")  # the transaction is still usable
        assert good is not None and good.version == damaged.load("good-1").version
        assert repo.exists("bad")
        assert repo.delete("bad") is True
        assert repo.delete_older_than(datetime.now(UTC) + timedelta(hours=1)) == 2
        session.commit()
    assert damaged.list() == []


@pytest.mark.parametrize("db_kind", ["sqlite"])  # only SQLite lets a BLOB into a VARCHAR key
def test_a_blob_workflow_id_is_left_out_of_the_list(engine: Engine) -> None:
    with DatabasePersistence(engine) as store:
        store.save(WorkflowSnapshot("good"))
        plant(
            engine,
            f"INSERT INTO {TABLE} (workflow_id, data, version, created_at, updated_at, status)"
            f" SELECT x'00ff', data, version, created_at, updated_at, status"
            f" FROM {TABLE} WHERE workflow_id = 'good'",
        )
        assert _listed(store.list()) == ["good"]
        assert store.prune(datetime.now(UTC) + timedelta(hours=1)) == 2


@pytest.mark.parametrize("db_kind", ["postgresql"])
def test_a_time_zone_west_of_utc_pushing_a_timestamp_before_year_one(engine: Engine) -> None:
    """psycopg converts timestamps to the session's time zone: 06:00 UTC on 1 January of
    the year 1 is in 1 BC at UTC-12, which Python cannot hold, wherever it is read."""
    with DatabasePersistence(engine) as store:
        store.save(WorkflowSnapshot("old"))
        store.save(WorkflowSnapshot("good"))
    plant(
        engine,
        f"UPDATE {TABLE} SET updated_at = '0001-01-01 06:00:00+00' WHERE workflow_id = 'old'",
    )
    west = sa.create_engine(engine.url, connect_args={"options": "-c timezone=Etc/GMT+12"})
    try:
        with DatabasePersistence(west, create_table=False) as store:
            with pytest.raises(CorruptSnapshotError, match="updated_at"):
                store.load("old")
            assert _listed(store.list()) == ["good"]
            assert store.prune(datetime(2000, 1, 1, tzinfo=UTC)) == 1  # RETURNING reads it
            assert not store.exists("old")
            assert _listed(store.list()) == ["good"]
    finally:
        west.dispose()


# -- NULLs, in a table a host app made without NOT NULL --------------------------------------


class _HostBase(DeclarativeBase):
    pass


class LooseInterrupt(WorkflowInterruptMixin, _HostBase):
    """The library's columns in a host app's own table, made by hand without NOT NULL."""

    __tablename__ = "wfp_loose_interrupts"


_LOOSE_DDL = {
    "sqlite": "CREATE TABLE IF NOT EXISTS wfp_loose_interrupts (workflow_id VARCHAR(255)"
    " PRIMARY KEY, data BLOB, version INTEGER, created_at DATETIME, updated_at DATETIME,"
    " status VARCHAR(16), workflow_name VARCHAR(255), current_node VARCHAR(255),"
    " interrupt JSON, run_metadata JSON, expires_at DATETIME, deadline DATETIME)",
    "postgresql": "CREATE TABLE IF NOT EXISTS wfp_loose_interrupts (workflow_id VARCHAR(255)"
    " PRIMARY KEY, data BYTEA, version INTEGER, created_at TIMESTAMPTZ,"
    " updated_at TIMESTAMPTZ, status VARCHAR(16), workflow_name VARCHAR(255),"
    " current_node VARCHAR(255), interrupt JSONB, run_metadata JSONB, expires_at TIMESTAMPTZ,"
    " deadline TIMESTAMPTZ)",
    "mariadb": "CREATE TABLE IF NOT EXISTS wfp_loose_interrupts (workflow_id VARCHAR(255)"
    " CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PRIMARY KEY, data LONGBLOB NULL,"
    " version INTEGER NULL, created_at DATETIME(6) NULL, updated_at DATETIME(6) NULL,"
    " status VARCHAR(16) NULL, workflow_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE"
    " utf8mb4_nopad_bin NULL, current_node VARCHAR(255) CHARACTER SET utf8mb4 COLLATE"
    " utf8mb4_nopad_bin NULL, interrupt JSON NULL, run_metadata JSON NULL,"
    " expires_at DATETIME(6) NULL, deadline DATETIME(6) NULL)",
}


@pytest.mark.parametrize("column", ["data", "version", "created_at", "updated_at"])
def test_null_columns_in_a_host_table(engine: Engine, db_kind: str, column: str) -> None:
    plant(engine, _LOOSE_DDL[db_kind], "DELETE FROM wfp_loose_interrupts")
    with DatabasePersistence(engine, model=LooseInterrupt, create_table=False) as store:
        workflow = flows.approval_workflow(store)
        for workflow_id in (*HEALTHY, "bad"):
            workflow.start({"amount": 30}, workflow_id=workflow_id)
        plant(engine, f"UPDATE wfp_loose_interrupts SET {column} = NULL WHERE workflow_id = 'bad'")

        with pytest.raises(CorruptSnapshotError, match=column):
            store.load("bad")
        with pytest.raises(CorruptSnapshotError, match=column):
            workflow.resume("bad", "yes")
        assert _listed(store.list()) == _listable(column)
        assert _listed(store.list(limit=1)) == _listable(column)[:1]
        with Session(engine) as session:
            repo = WorkflowInterruptRepository(session, LooseInterrupt)
            with pytest.raises(CorruptSnapshotError, match=column):
                repo.get("bad")
            assert _listed(repo.list()) == _listable(column)
        if column == "version":  # NULL + 1 is NULL: the version written is unusable
            assert _outcome(lambda: store.save(WorkflowSnapshot("bad"))) == "CorruptSnapshotError"
        else:
            _check_upsert_over(store, column)
        assert store.delete("bad") is True
        assert workflow.resume("good-1", "yes").status == "completed"


# -- an INTEGER data column must not become a huge allocation --------------------------------

_LOAD_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys
    from workflow_persistence import CorruptSnapshotError, DatabasePersistence

    store = DatabasePersistence(f"sqlite:///{sys.argv[1]}")
    store.exists("warm-up")  # connect and read the table before measuring
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    try:
        store.load("bad")
    except CorruptSnapshotError:
        outcome = "CorruptSnapshotError"
    except BaseException as exc:
        outcome = type(exc).__name__
    # The peak RSS of this process image: ru_maxrss would carry over the parent's peak,
    # which Linux keeps across the exec that started this child.
    with open("/proc/self/status") as status:
        [peak_kib] = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    print(outcome, int(peak_kib) // 1024)
    """
)


def test_an_integer_data_column_allocates_nothing(tmp_path: Path) -> None:
    """``bytes(1500000000)`` is 1.5 GB of zeros: calloc'd pages barely show in the RSS,
    so the child's 1 GiB address-space limit is what catches the allocation."""
    path = tmp_path / "damaged.db"
    with DatabasePersistence(f"sqlite:///{path}") as store:
        store.save(WorkflowSnapshot("bad"))
    engine = sa.create_engine(f"sqlite:///{path}")
    plant(engine, f"UPDATE {TABLE} SET data = 1500000000 WHERE workflow_id = 'bad'")
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_UNDER_LIMIT, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome, peak_mib = done.stdout.split()
    assert outcome == "CorruptSnapshotError"
    assert int(peak_mib) < 200, f"loading lifted the peak RSS to {peak_mib} MiB"
