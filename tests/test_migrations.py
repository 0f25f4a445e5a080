"""The packaged Alembic migrations (API.md section 7, 8) on real, brand-new databases.

Every test gets an empty database of each kind (``empty_database_url``) and runs the
migrations through ``workflow_persistence.migrations`` or through the real ``alembic``
command line with the repository's ``alembic.ini``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from workflow_persistence import (
    DatabasePersistence,
    PersistenceError,
    StorageUnavailableError,
    WorkflowInterrupt,
    WorkflowInterruptRepository,
    WorkflowNotFoundError,
    WorkflowSnapshot,
    metadata,
    migrations,
)
from workflow_persistence._storage.database import make_engine

from .conftest import Server
from .hostapp.support import (
    INDEX,
    REPO_ROOT,
    ROOT_INI,
    TABLE,
    alembic,
    all_indexes,
    cli_env,
    connected,
    recorded_statements,
    schema_diff,
    table_names,
    url_text,
    version_rows,
    writes,
)

FIRST = "wfp_0001"
REVISION = "wfp_0003"  # the head
VERSION_TABLE = migrations.VERSION_TABLE
OUR_TABLES = {TABLE, VERSION_TABLE}
COLUMNS = [
    "workflow_id", "data", "version", "created_at", "updated_at",
    "status", "workflow_name", "current_node", "interrupt", "run_metadata", "expires_at",
    "deadline",
]
NULLABLE = [
    "workflow_name", "current_node", "interrupt", "run_metadata", "expires_at", "deadline",
]
INDEXES = {
    INDEX: ["updated_at"],
    "ix_workflow_interrupts_status_updated_at": ["status", "updated_at"],
    "ix_workflow_interrupts_expires_at": ["expires_at"],
    "ix_workflow_interrupts_deadline": ["deadline"],
}
PREVIOUS = "wfp_0002"  # what the head revises
RAN_OUR_REVISION = f"Running upgrade {PREVIOUS} -> {REVISION}"


# -- helpers ---------------------------------------------------------------------------


def assert_promised_schema(url: URL, kind: str) -> None:
    """The table is exactly what API.md section 3 promises, on this kind of database."""
    with connected(url) as connection:
        assert schema_diff(connection, metadata) == []
        inspector = sa.inspect(connection)
        columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
        assert list(columns) == COLUMNS
        assert [name for name, c in columns.items() if c["nullable"]] == NULLABLE
        assert all(c["default"] is None for c in columns.values())
        for name, length in (
            ("workflow_id", 255), ("workflow_name", 255), ("current_node", 255), ("status", 16)
        ):
            text_type = columns[name]["type"]
            assert isinstance(text_type, sa.String)
            assert text_type.length == length
        assert isinstance(columns["version"]["type"], sa.Integer)
        stamps = [
            columns[n]["type"] for n in ("created_at", "updated_at", "expires_at", "deadline")
        ]
        if kind == "postgresql":
            assert isinstance(columns["data"]["type"], postgresql.BYTEA)
            assert all(isinstance(t, postgresql.TIMESTAMP) and t.timezone for t in stamps)
            rows = connection.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = :t"
                ),
                {"t": TABLE},
            )
            declared = {str(name): str(data_type) for name, data_type in rows}
            assert declared == {
                "workflow_id": "character varying",
                "data": "bytea",
                "version": "integer",
                "created_at": "timestamp with time zone",
                "updated_at": "timestamp with time zone",
                "status": "character varying",
                "workflow_name": "character varying",
                "current_node": "character varying",
                "interrupt": "jsonb",
                "run_metadata": "jsonb",
                "expires_at": "timestamp with time zone",
                "deadline": "timestamp with time zone",
            }
        elif kind == "mariadb":
            assert isinstance(columns["data"]["type"], mysql.LONGBLOB)
            assert all(isinstance(t, mysql.DATETIME) and t.fsp == 6 for t in stamps)
            for name in ("workflow_id", "workflow_name", "current_node"):
                assert getattr(columns[name]["type"], "collation", None) == "utf8mb4_nopad_bin"
            declared_rows = connection.execute(
                sa.text(
                    "SELECT COLUMN_NAME, COLUMN_TYPE, COLLATION_NAME"
                    " FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": TABLE},
            )
            found = {name: (str(ctype), coll) for name, ctype, coll in declared_rows}
            status_collation = found["status"][1]
            assert found == {
                "workflow_id": ("varchar(255)", "utf8mb4_nopad_bin"),
                "data": ("longblob", None),
                "version": ("int(11)", None),
                "created_at": ("datetime(6)", None),
                "updated_at": ("datetime(6)", None),
                "status": ("varchar(16)", status_collation),
                "workflow_name": ("varchar(255)", "utf8mb4_nopad_bin"),
                "current_node": ("varchar(255)", "utf8mb4_nopad_bin"),
                # MariaDB's JSON is LONGTEXT checked by json_valid().
                "interrupt": ("longtext", "utf8mb4_bin"),
                "run_metadata": ("longtext", "utf8mb4_bin"),
                "expires_at": ("datetime(6)", None),
                "deadline": ("datetime(6)", None),
            }
        else:
            assert isinstance(columns["data"]["type"], sa.BLOB)
            declared = {
                row[1]: row[2] for row in connection.exec_driver_sql(f"PRAGMA table_info({TABLE})")
            }
            assert declared == {
                "workflow_id": "VARCHAR(255)",
                "data": "BLOB",
                "version": "INTEGER",
                "created_at": "DATETIME",
                "updated_at": "DATETIME",
                "status": "VARCHAR(16)",
                "workflow_name": "VARCHAR(255)",
                "current_node": "VARCHAR(255)",
                "interrupt": "JSON",
                "run_metadata": "JSON",
                "expires_at": "DATETIME",
                "deadline": "DATETIME",
            }
        assert inspector.get_pk_constraint(TABLE)["constrained_columns"] == ["workflow_id"]
        indexes = inspector.get_indexes(TABLE)
        assert {i["name"]: i["column_names"] for i in indexes} == INDEXES
        assert not any(i["unique"] for i in indexes)
        # The catalogue, PK index included: one index on workflow_id (the PK's), no other.
        every = all_indexes(connection, TABLE)
        assert sorted(every.values()) == sorted(
            [*((columns, False) for columns in INDEXES.values()), (["workflow_id"], True)]
        )
        assert every[INDEX] == (["updated_at"], False)


def current(url: URL | str) -> str | None:
    with connected(url) as connection:
        return migrations.current_revision(connection)


def snapshot(workflow_id: str = "run-1") -> WorkflowSnapshot:
    return WorkflowSnapshot(workflow_id, state={"amount": 30, "note": "Grüße"})


def offline_url(url: URL, kind: str) -> URL:
    # Offline there is no server to ask: a mariadb:// URL says MariaDB (its collation).
    return url.set(drivername="mariadb+pymysql") if kind == "mariadb" else url


def sql_statements(script: str) -> list[str]:
    """The statements of an offline SQL script, comments dropped."""
    statements = []
    for chunk in re.split(r";\s*$", script, flags=re.M):
        lines = [ln for ln in chunk.splitlines() if ln.strip() and not ln.startswith("--")]
        if lines:
            statements.append("\n".join(lines))
    return statements


@contextmanager
def recorded_transactions() -> Iterator[list[tuple[str, str]]]:
    """``(event, statement)`` for every engine in this process, env.py's own included."""
    seen: list[tuple[str, str]] = []

    def on_begin(_conn: Any) -> None:
        seen.append(("begin", ""))

    def on_commit(_conn: Any) -> None:
        seen.append(("commit", ""))

    def on_rollback(_conn: Any) -> None:
        seen.append(("rollback", ""))

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(("execute", statement))

    hooks: list[tuple[str, Callable[..., None]]] = [
        ("begin", on_begin),
        ("commit", on_commit),
        ("rollback", on_rollback),
        ("before_cursor_execute", on_execute),
    ]
    for name, fn in hooks:
        event.listen(Engine, name, fn)
    try:
        yield seen
    finally:
        for name, fn in hooks:
            event.remove(Engine, name, fn)


# -- upgrade head ------------------------------------------------------------------------

WAYS = ("api", "api-env", "cli-x", "cli-env")


def upgrade_by(way: str, url: URL, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``upgrade head`` one way; return what the command line logged."""
    if way == "api":
        migrations.upgrade(url)
        return ""
    if way == "api-env":
        monkeypatch.setenv(migrations.URL_ENV_VAR, url_text(url))
        migrations.upgrade()
        return ""
    if way == "cli-x":
        return alembic("-x", f"url={url_text(url)}", "upgrade", "head", cwd=cwd).stderr
    env = cli_env({migrations.URL_ENV_VAR: url_text(url)})
    return alembic("upgrade", "head", cwd=cwd, env=env).stderr


@pytest.mark.parametrize("way", WAYS)
def test_upgrade_head_creates_the_promised_table(
    way: str,
    empty_database_url: URL,
    db_kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert table_names(empty_database_url) == set()
    logged = upgrade_by(way, empty_database_url, tmp_path, monkeypatch)
    if way.startswith("cli"):
        assert RAN_OUR_REVISION in logged
    assert table_names(empty_database_url) == OUR_TABLES
    assert version_rows(empty_database_url) == [REVISION]
    assert current(empty_database_url) == REVISION
    assert "alembic_version" not in table_names(empty_database_url)  # the host's name is free
    assert_promised_schema(empty_database_url, db_kind)
    assert list(tmp_path.iterdir()) == []  # no stray SQLite file from the default URL


def test_alembic_check_and_autogenerate_find_nothing_to_do(
    empty_database_url: URL, tmp_path: Path
) -> None:
    x_url = f"url={url_text(empty_database_url)}"
    alembic("-x", x_url, "upgrade", "head", cwd=tmp_path)
    done = alembic("-x", x_url, "check", cwd=tmp_path)
    assert "No new upgrade operations detected" in done.stdout + done.stderr
    assert alembic("-x", x_url, "current", cwd=tmp_path).stdout.split() == [REVISION, "(head)"]


def test_x_url_wins_over_the_environment(empty_database_url: URL, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    env = cli_env({migrations.URL_ENV_VAR: f"sqlite:///{elsewhere}"})
    alembic("-x", f"url={url_text(empty_database_url)}", "upgrade", "head", cwd=tmp_path, env=env)
    assert table_names(empty_database_url) == OUR_TABLES
    assert not elsewhere.exists()


def test_without_url_the_local_sqlite_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(migrations.URL_ENV_VAR, raising=False)
    assert migrations.resolve_url() == migrations.DEFAULT_URL == "sqlite:///workflow_persistence.db"
    assert migrations.resolve_url("sqlite:///given.db") == "sqlite:///given.db"
    monkeypatch.setenv(migrations.URL_ENV_VAR, "sqlite:///from-env.db")
    assert migrations.resolve_url() == "sqlite:///from-env.db"
    logged = alembic("upgrade", "head", cwd=tmp_path).stderr
    assert RAN_OUR_REVISION in logged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workflow_persistence.db"]
    assert table_names(f"sqlite:///{tmp_path / 'workflow_persistence.db'}") == OUR_TABLES


def test_the_first_revision_carries_the_branch_label(tmp_path: Path) -> None:
    script = ScriptDirectory.from_config(Config(str(ROOT_INI)))
    assert script.get_bases() == [FIRST]
    assert script.get_heads() == [REVISION]
    labelled = script.get_revision(f"{migrations.BRANCH}@head")
    assert labelled is not None
    assert labelled.revision == REVISION
    assert labelled.down_revision == PREVIOUS
    assert migrations.BRANCH in labelled.branch_labels  # inherited from the first one
    first = script.get_revision(FIRST)
    assert first is not None
    assert first.branch_labels == {migrations.BRANCH}
    assert alembic("heads", cwd=tmp_path).stdout.split() == [
        REVISION, f"({migrations.BRANCH})", "(head)"
    ]
    # In a checkout the environment is the repository's own folder.
    assert migrations.script_location() == REPO_ROOT / "migrations"
    assert Path(migrations.versions_dir()) == REPO_ROOT / "migrations" / "versions"
    assert Path(script.dir) == migrations.script_location()


def test_upgrade_to_the_branch_label(empty_database_url: URL) -> None:
    migrations.upgrade(empty_database_url, f"{migrations.BRANCH}@head")
    assert table_names(empty_database_url) == OUR_TABLES
    assert current(empty_database_url) == REVISION


# -- downgrade base, upgrade twice -------------------------------------------------------


@pytest.mark.parametrize("way", ["api", "cli"])
def test_downgrade_base_removes_the_table(
    way: str, empty_database_url: URL, db_kind: str, tmp_path: Path
) -> None:
    migrations.upgrade(empty_database_url)
    with DatabasePersistence(empty_database_url, create_table=False) as persistence:
        persistence.save(snapshot())
    if way == "api":
        migrations.upgrade(empty_database_url, "base", direction="downgrade")
    else:
        x_url = f"url={url_text(empty_database_url)}"
        alembic("-x", x_url, "downgrade", "base", cwd=tmp_path)
    assert table_names(empty_database_url) == {VERSION_TABLE}
    assert version_rows(empty_database_url) == []
    assert current(empty_database_url) is None
    with connected(empty_database_url) as connection:
        assert all_indexes(connection, TABLE) == {}
    # ... and it can be brought back.
    migrations.upgrade(empty_database_url)
    assert_promised_schema(empty_database_url, db_kind)


def test_a_second_upgrade_does_nothing(empty_database_url: URL, tmp_path: Path) -> None:
    migrations.upgrade(empty_database_url)
    with DatabasePersistence(empty_database_url, create_table=False) as persistence:
        persistence.save(snapshot())
    engine = make_engine(empty_database_url)
    try:
        with recorded_statements(engine) as statements:
            migrations.upgrade(engine)
        assert statements  # it did look at the database
        assert writes(statements) == []
    finally:
        engine.dispose()
    logged = alembic("-x", f"url={url_text(empty_database_url)}", "upgrade", "head", cwd=tmp_path)
    assert "Running upgrade" not in logged.stderr
    assert version_rows(empty_database_url) == [REVISION]
    with DatabasePersistence(empty_database_url, create_table=False) as persistence:
        assert persistence.load("run-1").state == {"amount": 30, "note": "Grüße"}


# -- DatabasePersistence and the migrations ----------------------------------------------


def test_database_persistence_creates_and_stamps_the_table(
    empty_database_url: URL, db_kind: str, tmp_path: Path
) -> None:
    with DatabasePersistence(url_text(empty_database_url)) as persistence:
        assert table_names(empty_database_url) == set()  # nothing before first use
        assert persistence.exists("run-1") is False
        assert table_names(empty_database_url) == OUR_TABLES
        persistence.save(snapshot())
    assert current(empty_database_url) == REVISION
    assert_promised_schema(empty_database_url, db_kind)
    # A later migrate / alembic upgrade has nothing to do.
    engine = make_engine(empty_database_url)
    try:
        with recorded_statements(engine) as statements:
            migrations.upgrade(engine)
        assert writes(statements) == []
    finally:
        engine.dispose()
    logged = alembic("-x", f"url={url_text(empty_database_url)}", "upgrade", "head", cwd=tmp_path)
    assert "Running upgrade" not in logged.stderr
    assert version_rows(empty_database_url) == [REVISION]
    with DatabasePersistence(empty_database_url) as persistence:
        assert persistence.load("run-1").version == 1


def test_create_table_false_on_an_empty_database(empty_database_url: URL) -> None:
    with DatabasePersistence(empty_database_url, create_table=False) as persistence:
        calls: list[Callable[[], object]] = [
            lambda: persistence.save(snapshot()),
            lambda: persistence.load("run-1"),
            lambda: persistence.exists("run-1"),
            lambda: persistence.list(),
            lambda: persistence.delete("run-1"),
            lambda: persistence.prune(timedelta(days=1)),
        ]
        for call in calls:
            with pytest.raises(PersistenceError) as raised:
                call()
            # Neither "not found" nor "unavailable": the table is missing, say so.
            assert not isinstance(raised.value, WorkflowNotFoundError | StorageUnavailableError)
            message = str(raised.value)
            assert TABLE in message
            assert "migrate" in message
    assert table_names(empty_database_url) == set()


def test_an_existing_table_is_used_as_it_is(empty_database_url: URL, db_kind: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            WorkflowInterruptRepository(session).upsert("made-before", b"not a snapshot")
        with recorded_statements(engine) as statements, DatabasePersistence(engine) as persistence:
            persistence.save(snapshot())
            assert persistence.load("run-1").version == 1
            assert persistence.exists("made-before")
        assert [s for s in writes(statements) if re.match(r"\s*(CREATE|ALTER|DROP)", s)] == []
        # A later upgrade adopts the table: it records the revision and keeps the rows.
        with recorded_statements(engine) as statements:
            migrations.upgrade(engine)
        assert not any(TABLE in s and s.lstrip().upper().startswith("CREATE") for s in statements)
        assert current(empty_database_url) == REVISION
        with Session(engine) as session:
            repository: WorkflowInterruptRepository[WorkflowInterrupt]
            repository = WorkflowInterruptRepository(session)
            assert {i.workflow_id for i in repository.list()} == {"made-before", "run-1"}
            row = repository.get("made-before")
            assert row is not None
            assert row.data == b"not a snapshot"
    finally:
        engine.dispose()
    assert_promised_schema(empty_database_url, db_kind)


# -- offline mode, transactions ----------------------------------------------------------


def test_offline_sql_creates_the_table(
    empty_database_url: URL, db_kind: str, tmp_path: Path
) -> None:
    url = offline_url(empty_database_url, db_kind)
    done = alembic("-x", f"url={url_text(url)}", "upgrade", "head", "--sql", cwd=tmp_path)
    script = done.stdout
    assert "CREATE TABLE workflow_interrupts" in script
    assert f"CREATE INDEX {INDEX} ON workflow_interrupts (updated_at)" in script
    assert f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{FIRST}')" in script
    assert f"version_num='{REVISION}' WHERE" in script
    assert (
        "CREATE INDEX ix_workflow_interrupts_status_updated_at"
        " ON workflow_interrupts (status, updated_at)"
    ) in script
    assert "CONCURRENTLY" not in script.upper()
    if db_kind == "postgresql":
        statements = sql_statements(script)
        assert (statements[0], statements[-1]) == ("BEGIN", "COMMIT")
        assert statements.count("BEGIN") == 1
    assert table_names(empty_database_url) == set()  # offline touches nothing
    # The script, run by hand, gives the same schema as the online upgrade.
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            for statement in sql_statements(script):
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    assert current(empty_database_url) == REVISION
    assert_promised_schema(empty_database_url, db_kind)


def test_postgresql_migration_runs_in_one_transaction(
    new_database_url: Callable[[str], URL],
) -> None:
    url = new_database_url("postgresql")
    engine = make_engine(url)
    try:
        # Handed an open transaction, the migration runs inside it: a rollback undoes all.
        with engine.connect() as connection:
            outer = connection.begin()
            migrations.upgrade(connection)
            assert set(sa.inspect(connection).get_table_names()) == OUR_TABLES
            assert outer.is_active
            outer.rollback()
        assert table_names(url) == set()
    finally:
        engine.dispose()
    # On its own (a URL, as the command line does) it is one BEGIN ... COMMIT.
    with recorded_transactions() as seen:
        migrations.upgrade(url)
    changes = [i for i, (kind, sql) in enumerate(seen) if kind == "execute" and writes([sql])]
    assert len(changes) >= 6  # version table, table, index, version row, columns, indexes
    first, last = changes[0], changes[-1]
    begins = [i for i, (kind, _) in enumerate(seen[:first]) if kind == "begin"]
    assert begins, "the DDL ran outside a transaction"
    between = [kind for kind, _ in seen[begins[-1] : last + 1]]
    assert "commit" not in between
    assert "rollback" not in between
    assert ("commit", "") in seen[last:]
    assert not any("CONCURRENTLY" in sql.upper() for _, sql in seen)
    assert table_names(url) == OUR_TABLES


def test_upgrade_keeps_the_password_of_a_url_object(
    new_database_url: Callable[[str], URL], servers: dict[str, Server]
) -> None:
    """``str(URL)`` masks the password; the environment must pass the URL on intact."""
    url = new_database_url("mariadb")
    admin = sa.create_engine(
        servers["mariadb"].admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    user = f"wfp_{url.database}"[-32:]
    secret = "s3cret-" + user[-6:]
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{secret}'")
            connection.exec_driver_sql(f"GRANT ALL ON {url.database}.* TO '{user}'@'%%'")
        with_password = url.set(username=user, password=secret)
        assert "***" in str(with_password)
        migrations.upgrade(with_password)
        assert table_names(with_password) == OUR_TABLES
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        admin.dispose()


def test_the_model_and_the_migration_name_the_same_things() -> None:
    table = WorkflowInterrupt.__table__
    assert isinstance(table, sa.Table)
    assert table.name == TABLE
    assert [c.name for c in table.columns] == COLUMNS
    assert {i.name: [c.name for c in i.columns] for i in table.indexes} == INDEXES
    assert tuple(COLUMNS[5:-1]) == migrations.RUN_COLUMNS
    assert COLUMNS[-1] == migrations.DEADLINE_COLUMN
    assert metadata.tables[TABLE] is table
