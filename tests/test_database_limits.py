"""DatabasePersistence under pressure: a small app pool, row locks, a server gone silent.

Each database test runs against the real servers; the silent server is a TCP proxy in
front of the real one that stops forwarding while every socket stays open, as a hung
server or a stuck middlebox does (the kernel keeps acknowledging, so TCP never notices).
"""

from __future__ import annotations

import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from workflow_persistence import (
    DatabasePersistence,
    InvalidArgumentError,
    StorageUnavailableError,
    WorkflowSnapshot,
)

TIMEOUT = 2.0
#: How late past ``TIMEOUT`` a bounded call may return: the watchdog's wake-up and the
#: error's way out, on a busy two-core machine.
SLACK = 0.75


def _url_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@contextmanager
def _timed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    finished: list[float] = []
    try:
        yield lambda: finished[0] - started
    finally:
        finished.append(time.monotonic())


# -- the app's pool (issue item: pool starvation) ----------------------------------------------


def test_four_threads_leave_a_small_app_pool_free(engine: Engine, db_kind: str) -> None:
    """pool_size=2, max_overflow=0, pool_timeout=2: after four threads made 50 calls
    each and stopped, the app checks out two connections at once."""
    app = sa.create_engine(engine.url, pool_size=2, max_overflow=0, pool_timeout=2)
    with app.connect() as first, app.connect() as second:  # connected: time checkouts only
        first.exec_driver_sql("SELECT 1")
        second.exec_driver_sql("SELECT 1")
    store = DatabasePersistence(app)
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        barrier.wait()
        try:
            for i in range(50):
                workflow_id = f"w{n}"
                if i % 5 == 4:
                    store.delete(workflow_id)
                elif i % 5 == 3:
                    store.exists(workflow_id)
                elif i % 5 == 2:
                    store.load(workflow_id)
                else:
                    store.save(WorkflowSnapshot(workflow_id, state={"i": i}))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []  # none of the library's own threads starved either
        with _timed() as elapsed, app.connect() as first, app.connect() as second:
            first.exec_driver_sql("SELECT 1")
            second.exec_driver_sql("SELECT 1")
        print(f"\n{db_kind}: the app checked out two connections in {elapsed() * 1000:.1f} ms")
        assert elapsed() < 1.0
        assert app.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        store.close()
        app.dispose()


def test_many_persistences_on_one_engine_share_the_librarys_connections(engine: Engine) -> None:
    """Twenty persistences on one small-pooled Engine (one per tenant, say), all kept
    alive: the app's pool stays free and the library opened one connection for all."""
    app = sa.create_engine(engine.url, pool_size=2, max_overflow=0, pool_timeout=2)
    stores = [DatabasePersistence(app) for _ in range(20)]
    try:
        for n, store in enumerate(stores):
            store.save(WorkflowSnapshot(f"tenant-{n}"))
        with app.connect() as first, app.connect() as second:
            first.exec_driver_sql("SELECT 1")
            second.exec_driver_sql("SELECT 1")
        library_pool = stores[0]._leases.pool
        assert library_pool.checkedout() + library_pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        stores[0].close()
        app.dispose()


def test_timeout_must_be_a_positive_number() -> None:
    for bad in (0, -1, float("nan"), float("inf"), True, "5", None):
        with pytest.raises(InvalidArgumentError, match="timeout"):
            DatabasePersistence("sqlite://", timeout=bad)  # type: ignore[arg-type]
    assert DatabasePersistence("sqlite://", timeout=1).timeout == 1.0


# -- a row lock held elsewhere (issue item: calls that never return) ---------------------------


@contextmanager
def _row_locked(engine: Engine, db_kind: str, workflow_id: str) -> Iterator[None]:
    """Another transaction holds the record's row lock (SQLite: the database's write lock)."""
    if db_kind == "sqlite":
        holder = sqlite3.connect(engine.url.database or "", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    admin = sa.create_engine(engine.url, poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(
            sa.text("SELECT version FROM workflow_interrupts WHERE workflow_id = :id FOR UPDATE"),
            {"id": workflow_id},
        ).one()
        try:
            yield
        finally:
            conn.rollback()
    admin.dispose()


_APP_SESSION = {  # the app's own session setting, and how to read it back
    "sqlite": ({"timeout": 7}, "PRAGMA busy_timeout", 7000),
    "postgresql": ({"options": "-c statement_timeout=7s"}, "SHOW statement_timeout", "7s"),
    "mariadb": (
        {"init_command": "SET SESSION innodb_lock_wait_timeout = 7"},
        "SELECT @@session.innodb_lock_wait_timeout",
        7,
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bind", ["url", "engine"])
def test_a_save_behind_a_row_lock_gives_up_within_the_timeout(
    engine: Engine, db_kind: str, bind: str
) -> None:
    connect_args, show_setting, app_value = _APP_SESSION[db_kind]
    app = sa.create_engine(engine.url, connect_args=connect_args)
    store = DatabasePersistence(app if bind == "engine" else _url_text(engine.url), timeout=TIMEOUT)
    try:
        assert store.save(WorkflowSnapshot("w", state={"n": 1})) == 1
        with _row_locked(engine, db_kind, "w"):
            with _timed() as elapsed, pytest.raises(StorageUnavailableError) as caught:
                store.save(WorkflowSnapshot("w", state={"n": 2}))
            print(f"\n{db_kind}/{bind}: a save behind a row lock raised after {elapsed():.2f} s")
            assert TIMEOUT / 4 <= elapsed() <= TIMEOUT + SLACK  # it waited, then gave up
            assert caught.value.__cause__ is not None
            assert "nothing was changed" in str(caught.value)
        # Nothing was written, and the persistence goes on once the lock is gone.
        assert store.load("w").state == {"n": 1}
        assert store.save(WorkflowSnapshot("w", state={"n": 3})) == 2
        # The bound was the library's own: the app's sessions keep their settings.
        with app.connect() as conn:
            assert conn.exec_driver_sql(show_setting).scalar_one() == app_value
    finally:
        store.close()
        app.dispose()


# -- a server that stops answering mid-call ----------------------------------------------------


class FreezableProxy:
    """A TCP proxy on a loopback port in front of a real server.

    :meth:`freeze` makes it stop forwarding, with every socket left open and new
    connections still accepted by the kernel: to the client, the server went silent.
    :meth:`thaw` drops the connections of the frozen time and forwards again.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._running = threading.Event()
        self._running.set()
        self._parked = threading.Event()
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        """Stop forwarding; returns once nothing more will be forwarded."""
        self._running.clear()
        self._parked.wait()

    def thaw(self) -> None:
        self._parked.clear()
        self._running.set()

    def close(self) -> None:
        self._closing = True
        self.thaw()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _serve(self) -> None:
        while not self._closing:
            if not self._running.is_set():
                self._parked.set()
                self._running.wait()
                self._drop_connections()
                continue
            for key, _ in self._selector.select(timeout=0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        self._selector.register(client, selectors.EVENT_READ, upstream)
        self._selector.register(upstream, selectors.EVENT_READ, client)

    def _forward(self, source: socket.socket, target: socket.socket) -> None:
        if source.fileno() < 0:  # closed with its peer earlier in this round
            return
        try:
            data = source.recv(65536)
            if data:
                target.sendall(data)
                return
        except OSError:
            pass
        for sock in (source, target):
            if sock.fileno() >= 0:
                self._selector.unregister(sock)
                sock.close()

    def _drop_connections(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]


@pytest.fixture
def proxy(engine: Engine) -> Iterator[FreezableProxy]:
    assert engine.url.port is not None
    server = FreezableProxy(engine.url.port)
    yield server
    server.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
@pytest.mark.parametrize("bind", ["url", "engine"])
def test_a_silent_server_ends_load_and_save_within_the_timeout(
    engine: Engine, proxy: FreezableProxy, db_kind: str, bind: str
) -> None:
    through_proxy = engine.url.set(host="127.0.0.1", port=proxy.port)
    # The app's Engine pings before reuse: a ping must not wait for ever either.
    app = sa.create_engine(through_proxy, pool_pre_ping=True)
    store = DatabasePersistence(app if bind == "engine" else _url_text(through_proxy),
                               timeout=TIMEOUT)
    try:
        assert store.save(WorkflowSnapshot("w", state={"n": 1})) == 1
        proxy.freeze()
        outcomes: dict[str, StorageUnavailableError] = {}
        calls: list[tuple[str, Callable[[], object]]] = [
            ("load", lambda: store.load("w")),
            ("save", lambda: store.save(WorkflowSnapshot("w", state={"n": 2}))),
            ("load again", lambda: store.load("w")),
        ]
        for name, call in calls:
            with _timed() as elapsed, pytest.raises(StorageUnavailableError) as caught:
                call()
            print(f"\n{db_kind}/{bind}: {name} behind a silent server raised after"
                  f" {elapsed():.2f} s: {caught.value}")
            assert elapsed() <= TIMEOUT + SLACK
            assert caught.value.__cause__ is not None
            outcomes[name] = caught.value
        assert "no answer" in str(outcomes["load"])
        proxy.thaw()
        assert store.load("w").state == {"n": 1}  # the cut save never reached the server
        assert store.save(WorkflowSnapshot("w", state={"n": 3})) == 2
    finally:
        proxy.thaw()
        store.close()
        app.dispose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_a_save_cut_by_the_timeout_says_its_outcome_is_unknown(
    engine: Engine, proxy: FreezableProxy
) -> None:
    store = DatabasePersistence(_url_text(engine.url.set(port=proxy.port)), timeout=TIMEOUT)
    try:
        store.save(WorkflowSnapshot("w"))
        proxy.freeze()
        with pytest.raises(StorageUnavailableError, match="unknown") as caught:
            store.save(WorkflowSnapshot("w"))
        assert "load the record" in str(caught.value)
    finally:
        proxy.thaw()
        store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
@pytest.mark.parametrize("bind", ["url", "engine"])
def test_a_first_call_behind_a_silent_server_ends_within_the_timeout(
    engine: Engine, proxy: FreezableProxy, db_kind: str, bind: str
) -> None:
    """The first call checks for the table: that, too, is bounded, even when the app's
    pool holds a connection it would pre-ping (which would wait for ever)."""
    through_proxy = engine.url.set(host="127.0.0.1", port=proxy.port)
    app = sa.create_engine(through_proxy, pool_pre_ping=True)
    with app.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    store = DatabasePersistence(app if bind == "engine" else _url_text(through_proxy),
                               timeout=TIMEOUT)
    try:
        proxy.freeze()
        with _timed() as elapsed, pytest.raises(StorageUnavailableError) as caught:
            store.exists("w")
        print(f"\n{db_kind}/{bind}: a first call behind a silent server raised after"
              f" {elapsed():.2f} s")
        assert elapsed() <= TIMEOUT + SLACK
        assert caught.value.__cause__ is not None
        proxy.thaw()
        assert store.exists("w") is False  # and it works once the server answers
    finally:
        proxy.thaw()
        store.close()
        app.dispose()


def _server_sessions(engine: Engine, db_kind: str) -> int:
    """Sessions the server holds on the test database, besides the one asking."""
    sql = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend'",
        "mariadb": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()",
    }[db_kind]
    admin = sa.create_engine(engine.url, poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            return int(conn.exec_driver_sql(sql).scalar_one()) - 1
    finally:
        admin.dispose()


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"])
def test_disposing_the_engine_closes_the_librarys_connections_too(
    engine: Engine, db_kind: str
) -> None:
    engine.dispose()  # the shared test engine's own idle connections
    app = sa.create_engine(engine.url)
    store = DatabasePersistence(app)
    try:
        store.save(WorkflowSnapshot("w"))
        assert _server_sessions(engine, db_kind) >= 1
        app.dispose()
        assert _server_sessions(engine, db_kind) == 0
        assert store.load("w").version == 1  # and the persistence stays usable
    finally:
        store.close()
        app.dispose()


@pytest.mark.timeout(120)
def test_threads_making_their_first_calls_at_once_create_the_table_once(
    empty_database_url: URL,
) -> None:
    """Eight threads, four persistences on one small-pooled Engine, an empty database:
    the first calls create the table once (the migrations are not run concurrently) and
    every call goes through, waiting its turn for the library's three connections."""
    app = sa.create_engine(empty_database_url, pool_size=2, max_overflow=1, pool_timeout=2)
    stores = [DatabasePersistence(app) for _ in range(4)]
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        store = stores[n % 4]
        barrier.wait()
        try:
            for i in range(40):
                store.save(WorkflowSnapshot(f"w{n}", state={"i": i}))
                assert store.load(f"w{n}").state == {"i": i}
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert {info.workflow_id for info in stores[0].list()} == {f"w{n}" for n in range(8)}
    finally:
        stores[0].close()
        app.dispose()
