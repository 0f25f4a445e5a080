"""Shared fixtures: real databases, one fixture per backend, leak checks.

Every test session works in scratch databases it creates on the real PostgreSQL and
MariaDB servers (and drops afterwards). A server that cannot be reached fails the tests
that need it; nothing is skipped. Point the tests elsewhere with
``WFP_TEST_POSTGRESQL_URL`` / ``WFP_TEST_MYSQL_URL`` (an account that may create
databases).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from workflow_persistence import (
    DatabasePersistence,
    FilePersistence,
    InMemoryPersistence,
    JsonSerializer,
    Persistence,
)
from workflow_persistence._storage.database import make_engine
from workflow_persistence.migrations import upgrade

POSTGRESQL_ADMIN_URL = os.environ.get(
    "WFP_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("WFP_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

DATABASES = ("sqlite", "postgresql", "mariadb")
BACKENDS = ("memory", "file", *DATABASES)


@dataclass
class Server:
    """A database server the tests create scratch databases on."""

    kind: str
    admin_url: URL
    created: list[str] = field(default_factory=list)

    def _admin(self) -> Engine:
        return sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def check(self) -> None:
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            pytest.fail(
                f"{self.kind} at {self.admin_url.render_as_string()} is required and cannot be"
                f" reached ({type(exc).__name__}: {str(exc).splitlines()[0]}). Start it, e.g."
                " with .ci/services, or set WFP_TEST_POSTGRESQL_URL / WFP_TEST_MYSQL_URL.",
                pytrace=False,
            )
        finally:
            engine.dispose()

    def create_database(self) -> URL:
        name = f"wfp_test_{secrets.token_hex(5)}"
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        self.created.append(name)
        return self.admin_url.set(database=name)

    def drop_database(self, name: str) -> None:
        engine = self._admin()
        try:
            with engine.connect() as conn:
                if self.kind == "postgresql":
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        finally:
            engine.dispose()

    def drop_all(self) -> None:
        for name in self.created:
            self.drop_database(name)
        self.created.clear()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, Server]]:
    found = {
        "postgresql": Server("postgresql", make_url(POSTGRESQL_ADMIN_URL)),
        "mariadb": Server("mariadb", make_url(MYSQL_ADMIN_URL)),
    }
    yield found
    for server in found.values():
        server.drop_all()


@pytest.fixture(scope="session")
def new_database_url(
    servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], URL]:
    """Make a new, empty database of a kind and return its URL."""

    def make(kind: str) -> URL:
        if kind == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "test.db"
            return make_url(f"sqlite:///{path}")
        server = servers[kind]
        server.check()
        return server.create_database()

    return make


@pytest.fixture(scope="session")
def shared_engines(new_database_url: Callable[[str], URL]) -> Iterator[dict[str, Engine]]:
    """One migrated scratch database per kind, reused by the tests (rows cleared each time)."""
    engines: dict[str, Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


def _shared_engine(kind: str, engines: dict[str, Engine], make: Callable[[str], URL]) -> Engine:
    if kind not in engines:
        engine = make_engine(make(kind))
        upgrade(engine)
        engines[kind] = engine
    return engines[kind]


@pytest.fixture(params=DATABASES)
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(
    db_kind: str, shared_engines: dict[str, Engine], new_database_url: Callable[[str], URL]
) -> Iterator[Engine]:
    """A migrated database of each kind with an empty ``workflow_interrupts`` table.

    After the test, no connection may still be checked out of its pool.
    """
    engine = _shared_engine(db_kind, shared_engines, new_database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM workflow_interrupts")
    yield engine
    assert engine.pool.checkedout() == 0, "a test left a connection checked out"  # type: ignore[attr-defined]


@pytest.fixture
def empty_database_url(db_kind: str, new_database_url: Callable[[str], URL]) -> URL:
    """A new database of each kind with no tables at all."""
    return new_database_url(db_kind)


def make_persistence(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    serializer: Any = None,
    *,
    clear: bool = True,
) -> Persistence:
    """A persistence of ``kind``; several made in one test share the same storage
    (except in memory), like processes sharing a database."""
    if kind == "memory":
        return InMemoryPersistence(serializer=serializer)
    if kind == "file":
        return FilePersistence(tmp_path / "snapshots", serializer=serializer)
    engines = request.getfixturevalue("shared_engines")
    engine = _shared_engine(kind, engines, request.getfixturevalue("new_database_url"))
    if clear:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM workflow_interrupts")
    persistence = DatabasePersistence(engine, serializer=serializer)

    def close() -> None:
        persistence.close()
        assert engine.pool.checkedout() == 0, "a connection is still checked out"  # type: ignore[attr-defined]

    request.addfinalizer(close)
    return persistence


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def persistence_factory(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., Persistence]:
    """Build the backend under test with a given serializer.

    The storage is emptied before the first one; later ones share it.
    """
    made: list[Persistence] = []

    def make(serializer: Any = None) -> Persistence:
        made.append(make_persistence(backend, request, tmp_path, serializer, clear=not made))
        return made[-1]

    return make


@pytest.fixture
def persistence(persistence_factory: Callable[..., Persistence]) -> Persistence:
    """Each of the five backends, empty, with the default serializer."""
    return persistence_factory(JsonSerializer())
