"""DatabasePersistence specifics: binds, round trips, limits, outages, threads, forks."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from workflow_persistence import (
    ConflictError,
    DatabasePersistence,
    InvalidArgumentError,
    JsonSerializer,
    PayloadTooLargeError,
    StorageUnavailableError,
    WorkflowInterruptRepository,
    WorkflowSnapshot,
)
from workflow_persistence._storage.database import SQLITE_CACHE_KIB, make_engine

from . import wire


@pytest.fixture
def store(engine: Engine) -> Iterator[DatabasePersistence]:
    persistence = DatabasePersistence(engine)
    yield persistence
    persistence.close()


def _leased_dbapi_connection(store: DatabasePersistence) -> Any:
    """The one DBAPI connection the persistence holds after a call (white-box)."""
    assert len(store._leases.idle) == 1
    return store._leases.idle[0][0].conn.dbapi_connection


def round_trips(store: DatabasePersistence, kind: str, action: Callable[[], object]) -> int:
    """Round trips of ``action`` in steady state: psycopg prepares a statement on its
    6th use on a connection, which costs one extra round trip that once; the warm-up
    runs past it."""
    for _ in range(6):
        action()
    return wire.round_trips(_leased_dbapi_connection(store), kind, action)


def test_save_and_load_are_one_round_trip_each(store: DatabasePersistence, db_kind: str) -> None:
    snapshot = WorkflowSnapshot("w", state={"k": "v" * 1000})
    store.save(snapshot)  # prepare, and let MySQL read max_allowed_packet once
    store.load("w")
    assert round_trips(store, db_kind, lambda: store.save(snapshot)) == 1

    def save_new() -> None:
        store.delete("new")
        store.save(WorkflowSnapshot("new"))

    assert round_trips(store, db_kind, save_new) == 2  # a delete and an insert

    def save_expected() -> None:
        store.save(snapshot, expected_version=store.load("w").version)

    assert round_trips(store, db_kind, save_expected) == 2  # a load and a compare-and-set
    assert round_trips(store, db_kind, lambda: store.load("w")) == 1
    assert round_trips(store, db_kind, lambda: store.exists("w")) == 1
    assert round_trips(store, db_kind, lambda: store.delete("gone")) == 1
    assert round_trips(store, db_kind, lambda: store.list(limit=10)) == 1
    # The expired records (by the expires_at index), then the old ones (by updated_at).
    assert round_trips(store, db_kind, lambda: store.prune(timedelta(days=1))) == 2
    assert round_trips(store, db_kind, lambda: store.prune()) == 1


@pytest.mark.parametrize("form", ["url-string", "url-object", "engine", "sessionmaker"])
def test_bind_forms(engine: Engine, form: str) -> None:
    url = engine.url
    bind: Any = {
        "url-string": url.render_as_string(hide_password=False),
        "url-object": url,
        "engine": engine,
        "sessionmaker": sessionmaker(bind=engine),
    }[form]
    with DatabasePersistence(bind) as store:
        assert store.save(WorkflowSnapshot("w", state={"form": form})) == 1
        assert store.load("w").state == {"form": form}
        assert (store.engine is engine) == (form in ("engine", "sessionmaker"))


def test_bad_binds_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        DatabasePersistence(sessionmaker())
    with pytest.raises(InvalidArgumentError):
        DatabasePersistence(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        DatabasePersistence("not a url")
    with pytest.raises(InvalidArgumentError):
        DatabasePersistence("nosuchdb://host/x")


def test_urls_without_a_driver_use_the_extras_drivers() -> None:
    assert make_engine("postgresql://u@h/d").dialect.driver == "psycopg"
    assert make_engine("mysql://u@h/d").dialect.driver == "pymysql"
    assert make_engine("mariadb://u@h/d").dialect.driver == "pymysql"
    assert make_engine("postgresql+psycopg://u@h/d").url.drivername == "postgresql+psycopg"


def test_close_hands_connections_back_and_stays_usable(engine: Engine) -> None:
    store = DatabasePersistence(engine)
    store.save(WorkflowSnapshot("w"))
    own = store._leases.pool
    assert own is not engine.pool
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # the app's: untouched
    assert own.checkedout() == 1  # type: ignore[attr-defined]  # the library's: kept leased
    store.close()
    assert own.checkedout() == 0  # type: ignore[attr-defined]
    assert store.load("w").version == 1
    store.close()
    store.close()  # closing twice is harmless
    assert store._leases.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_concurrent_compare_and_set_has_one_winner(store: DatabasePersistence) -> None:
    store.save(WorkflowSnapshot("w"))
    threads = 8
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []

    def claim(n: int) -> None:
        barrier.wait()
        try:
            store.save(WorkflowSnapshot("w", state={"by": n}), expected_version=1)
            outcomes.append("won")
        except ConflictError:
            outcomes.append("conflict")

    workers = [threading.Thread(target=claim, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(outcomes) == ["conflict"] * (threads - 1) + ["won"]
    assert store.load("w").version == 2


def test_concurrent_saves_lose_no_version(store: DatabasePersistence) -> None:
    threads, saves = 6, 15
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(saves):
            store.save(WorkflowSnapshot("w"))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert store.load("w").version == threads * saves


def _child_uses_store(store: DatabasePersistence, result: Any) -> None:
    try:
        store.save(WorkflowSnapshot("child", state={"pid": os.getpid()}))
        result.put(store.load("w").state["from"])
    except Exception as exc:  # pragma: no cover - reported to the parent
        result.put(repr(exc))


def test_a_forked_child_gets_its_own_connections(
    store: DatabasePersistence, engine: Engine
) -> None:
    store.save(WorkflowSnapshot("w", state={"from": "parent"}))  # parent holds a lease
    context = multiprocessing.get_context("fork")
    result = context.SimpleQueue()
    child = context.Process(target=_child_uses_store, args=(store, result))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert result.get() == "parent"
    # The parent's leased connection was neither used nor closed by the child.
    assert store.load("child").state["pid"] == child.pid
    assert store.save(WorkflowSnapshot("w", state={"from": "parent"})) == 2
    store.close()
    # Nor did the child change the parent's pooled connections (a child that switched
    # one to autocommit would make this uncommitted write visible).
    with Session(engine) as session:
        WorkflowInterruptRepository(session).upsert("uncommitted", b"x")
        with engine.connect() as other:
            seen = other.execute(
                sa.text("SELECT COUNT(*) FROM workflow_interrupts WHERE workflow_id = :id"),
                {"id": "uncommitted"},
            ).scalar_one()
        assert seen == 0
        session.rollback()


def _kill_server_side(engine: Engine, kind: str, store: DatabasePersistence) -> None:
    conn = _leased_dbapi_connection(store)
    cursor = conn.cursor()
    if kind == "postgresql":
        cursor.execute("SELECT pg_backend_pid()")
        statement = f"SELECT pg_terminate_backend({cursor.fetchone()[0]})"
    else:
        cursor.execute("SELECT CONNECTION_ID()")
        statement = f"KILL {cursor.fetchone()[0]}"
    cursor.close()
    admin = sa.create_engine(engine.url, poolclass=sa.NullPool)
    with admin.connect() as other:
        other.exec_driver_sql(statement)
    admin.dispose()


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_reads_survive_a_dropped_connection(store: DatabasePersistence, engine: Engine,
                                            db_kind: str) -> None:
    store.save(WorkflowSnapshot("w", state={"n": 1}))
    _kill_server_side(engine, db_kind, store)
    assert store.load("w").state == {"n": 1}  # retried once on a fresh connection


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_a_write_on_a_dropped_connection_fails_cleanly(store: DatabasePersistence,
                                                       engine: Engine, db_kind: str) -> None:
    store.save(WorkflowSnapshot("w", state={"n": 1}))
    _kill_server_side(engine, db_kind, store)
    with pytest.raises(StorageUnavailableError) as caught:
        store.save(WorkflowSnapshot("w", state={"n": 2}))
    assert caught.value.__cause__ is not None  # the driver's error
    assert store.save(WorkflowSnapshot("w", state={"n": 3})) == 2  # service resumes
    assert store.load("w").state == {"n": 3}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("peer", ["closed-port", "silent-server"])
def test_an_unreachable_database_fails_fast(
    scheme: str, peer: str, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue("silent_server") if peer == "silent-server" else _closed_port()
    user = "postgres" if scheme == "postgresql" else "root"
    store = DatabasePersistence(f"{scheme}://{user}@127.0.0.1:{port}/test")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        store.load("w")
    assert time.monotonic() - started < 8  # the connect timeout is 5 seconds
    assert caught.value.__cause__ is not None
    store.close()


@pytest.mark.parametrize("db_kind", ["mariadb"])
def test_a_record_over_max_allowed_packet_is_refused_and_the_old_one_kept(engine: Engine) -> None:
    # Compression off: the payloads below must reach the database at their full size.
    store = DatabasePersistence(engine, serializer=JsonSerializer(compress_threshold=None))
    request_close = store.close
    store.save(WorkflowSnapshot("w", state={"size": "small"}))
    with engine.connect() as conn:
        limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
    with pytest.raises(PayloadTooLargeError) as caught:
        store.save(WorkflowSnapshot("w", state={"blob": os.urandom(limit)}))
    assert caught.value.limit == limit
    # PyMySQL 1.2 sends blobs as hex, so a payload over half the limit cannot fit.
    with pytest.raises(PayloadTooLargeError):
        store.save(WorkflowSnapshot("w", state={"blob": os.urandom(limit // 2)}))
    loaded = store.load("w")
    assert (loaded.version, loaded.state) == (1, {"size": "small"})
    # Just under the limit still fits, on the same pooled connection.
    fits = limit // 2 - 8 * 1024
    assert store.save(WorkflowSnapshot("w", state={"blob": os.urandom(fits)})) == 2
    assert len(store.load("w").state["blob"]) == fits
    request_close()


@pytest.mark.parametrize("db_kind", ["postgresql", "sqlite"])
def test_large_snapshots_round_trip(store: DatabasePersistence) -> None:
    blob = os.urandom(20 * 1024 * 1024)
    store.save(WorkflowSnapshot("w", state={"blob": blob}))
    assert store.load("w").state["blob"] == blob


def test_driver_timestamps_and_ids_agree_with_the_orm(store: DatabasePersistence,
                                                      engine: Engine) -> None:
    """Rows written on the raw path read back identically through SQLAlchemy types."""
    from sqlalchemy.orm import Session

    from workflow_persistence import WorkflowInterrupt

    snapshot = WorkflowSnapshot("ünïcödé 🚀")
    store.save(snapshot)
    with Session(engine) as session:
        row = session.get(WorkflowInterrupt, "ünïcödé 🚀")
        assert row is not None
        assert row.updated_at == snapshot.updated_at == row.created_at
        assert row.version == 1


def test_engine_options_reach_sqlalchemy(tmp_path: Any) -> None:
    url = URL.create("sqlite", database=str(tmp_path / "x.db"))
    engine = make_engine(url, pool_size=2)
    assert engine.pool.size() == 2  # type: ignore[attr-defined]
    engine.dispose()


def test_sqlite_files_get_a_large_page_cache_but_a_callers_engine_keeps_its_own(
    tmp_path: Any,
) -> None:
    def settings(engine: Engine) -> tuple[str, int]:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            return mode, connection.exec_driver_sql("PRAGMA cache_size").scalar_one()

    ours = DatabasePersistence(f"sqlite:///{tmp_path / 'ours.db'}")
    try:
        assert settings(ours.engine) == ("wal", -SQLITE_CACHE_KIB)
        assert SQLITE_CACHE_KIB >= 64 * 1024
    finally:
        ours.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'theirs.db'}")
    theirs = DatabasePersistence(engine)
    try:
        theirs.save(WorkflowSnapshot("w"))
        assert settings(engine) == ("delete", -2000)  # SQLite's defaults, untouched
    finally:
        theirs.close()
        engine.dispose()


def test_packet_sizer_matches_the_drivers_escaping() -> None:
    """The size check agrees with what the driver really sends, for both schemes."""
    import pymysql.converters

    from workflow_persistence._sql import mysql as _mysql

    class HexDriver:
        escape = staticmethod(pymysql.converters.escape_bytes)

    class BackslashDriver:
        @staticmethod
        def escape(value: bytes) -> str:
            text = value.decode("ascii", "surrogateescape")
            return "'" + text.translate(pymysql.converters._escape_table) + "'"

    data = os.urandom(4096) + b"\x00\n\r\x1a'\"\\" * 10
    hex_sizer = _mysql._sizer_for(HexDriver())
    backslash_sizer = _mysql._sizer_for(BackslashDriver())
    assert hex_sizer(data) >= len(pymysql.converters.escape_bytes(data))
    assert backslash_sizer(data) >= len(BackslashDriver.escape(data))
    assert backslash_sizer(data) < hex_sizer(data)


def test_the_packet_check_counts_the_question_and_metadata() -> None:
    """A save sends the JSON texts of the question and metadata beside the data: a
    statement they push over max_allowed_packet is refused before it is sent."""
    import pymysql.converters

    from workflow_persistence._sql import mysql as _mysql

    class Connection:  # what the check learns once per connection, already learned
        def __init__(self) -> None:
            self.info = {_mysql._LIMIT_KEY: 110_000, _mysql._SIZER_KEY: _mysql.hex_escaped_size}

    data = b"d" * 30_000  # 60 KB as hex: fits
    _mysql.check_packet_size(Connection(), data, None, "{}")
    question = json.dumps({"text": "é" * 10_000}, ensure_ascii=False)  # 20 KB in UTF-8
    escaped = pymysql.converters.escape_string(question).encode()
    assert len(escaped) <= 2 * len(question.encode())
    _mysql.check_packet_size(Connection(), data, question, "{}")  # 60 + 40 + 4 KB: just fits
    with pytest.raises(PayloadTooLargeError, match="question and metadata"):
        _mysql.check_packet_size(Connection(), data, question, question)


def test_prune_in_batches_is_exact_with_ties_across_batches(
    store: DatabasePersistence, engine: Engine
) -> None:
    """Prune deletes in batches that each start where the last ended; records sharing an
    updated_at across a batch boundary must all go, newer ones all stay."""
    from workflow_persistence import WorkflowInterrupt
    from workflow_persistence._sql.statements import PRUNE_BATCH

    old_a = datetime(2020, 1, 1, tzinfo=UTC)
    old_b = datetime(2020, 6, 1, tzinfo=UTC)
    cutoff = datetime(2021, 1, 1, tzinfo=UTC)
    data = JsonSerializer().dumps(WorkflowSnapshot("x"))
    rows = [
        {"workflow_id": f"old-{i}", "data": data, "version": 1, "status": "interrupted",
         "created_at": old_a if i < 1500 else old_b, "updated_at": old_a if i < 1500 else old_b}
        for i in range(2 * PRUNE_BATCH + 300)
    ]
    rows += [
        {"workflow_id": f"new-{i}", "data": data, "version": 1, "status": "interrupted",
         "created_at": cutoff, "updated_at": cutoff}  # exactly at the cutoff: kept
        for i in range(50)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(WorkflowInterrupt), rows)
    assert store.prune(cutoff) == 2 * PRUNE_BATCH + 300
    remaining = store.list()
    assert len(remaining) == 50
    assert all(info.workflow_id.startswith("new-") for info in remaining)


def test_an_engine_on_a_singleton_thread_pool_works() -> None:
    """create_engine("sqlite://") gives each thread its own connection: never share."""
    engine = sa.create_engine("sqlite://")
    store = DatabasePersistence(engine)
    store.save(WorkflowSnapshot("w", state={"n": 1}))
    assert store.load("w").state == {"n": 1}
    store.close()
    engine.dispose()


def test_leases_idle_too_long_go_back_to_the_pool(store: DatabasePersistence,
                                                   engine: Engine) -> None:
    from workflow_persistence._storage import leases as _leases

    barrier = threading.Barrier(3)

    def burst() -> None:
        barrier.wait()
        store.load("missing") if store.exists("missing") else store.exists("x")

    threads = [threading.Thread(target=burst) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store._leases.idle) >= 1
    # Age every idle lease past the limit; the next release sweeps the stale ones back.
    store._leases.idle = [
        (lease, since - _leases.IDLE_RETURN_SECONDS - 1) for lease, since in store._leases.idle
    ]
    store.exists("x")
    assert len(store._leases.idle) == 1  # only the lease just used stays
    assert store._leases.pool.checkedout() == 1  # type: ignore[attr-defined]
