"""Helpers of the migration tests: run the alembic command line, look into a database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, event
from sqlalchemy.engine import URL

from workflow_persistence._storage.database import make_engine
from workflow_persistence.migrations import URL_ENV_VAR, VERSION_TABLE

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_INI = REPO_ROOT / "alembic.ini"
#: The console script installed next to the interpreter running the tests.
ALEMBIC = Path(sys.executable).with_name("alembic")
TABLE = "workflow_interrupts"
INDEX = "ix_workflow_interrupts_updated_at"
#: Statements that change a database (anything a no-op migration must not run).
WRITES = re.compile(r"^\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|RENAME|TRUNCATE)\b", re.I)


def url_text(url: URL | str) -> str:
    """The URL as a command line takes it, password included."""
    return url if isinstance(url, str) else url.render_as_string(hide_password=False)


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without a stray ``$WORKFLOW_PERSISTENCE_URL``."""
    env = {k: v for k, v in os.environ.items() if k != URL_ENV_VAR}
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    expect_ok: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program; fail the test with its output when its exit status is unexpected."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=cli_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if expect_ok and done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}",
            pytrace=False,
        )
    return done


def alembic(
    *args: str | Path,
    cwd: Path,
    config: Path = ROOT_INI,
    env: Mapping[str, str] | None = None,
    expect_ok: bool = True,
) -> subprocess.CompletedProcess[str]:
    """The real ``alembic`` command line with ``config``."""
    return run([ALEMBIC, "-c", config, *args], cwd=cwd, env=env, expect_ok=expect_ok)


@contextmanager
def connected(url: URL | str) -> Iterator[Connection]:
    """A connection to ``url`` on an engine of its own, disposed afterwards."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def table_names(url: URL | str, schema: str | None = None) -> set[str]:
    with connected(url) as connection:
        return set(sa.inspect(connection).get_table_names(schema=schema))


def version_rows(url: URL | str, table: str = VERSION_TABLE) -> list[str]:
    with connected(url) as connection:
        return list(connection.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())


def schema_diff(
    connection: Connection, metadata: MetaData | Sequence[MetaData], **options: Any
) -> list[Any]:
    """Alembic autogenerate's differences between the database and ``metadata``."""
    opts = {
        "compare_type": True,
        "compare_server_default": True,
        "version_table": VERSION_TABLE,
        **options,
    }
    context = MigrationContext.configure(connection, opts=opts)
    target: Any = metadata  # Alembic accepts a list of MetaData, its stub says MetaData
    return list(compare_metadata(context, target))


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement SQLAlchemy sends through ``engine`` while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def writes(statements: Sequence[str]) -> list[str]:
    return [s for s in statements if WRITES.match(s)]


def all_indexes(connection: Connection, table: str) -> dict[str, tuple[list[str], bool]]:
    """Every index on ``table``, constraint-backing ones included: name -> (columns, is_pk).

    SQLAlchemy's inspector leaves out the index behind the primary key; this asks each
    database's catalogue, so a redundant index on ``workflow_id`` would show.
    """
    found: dict[str, tuple[list[str], bool]] = {}
    family = connection.dialect.name
    if family == "sqlite":
        for _seq, name, _unique, origin, _partial in connection.exec_driver_sql(
            f"PRAGMA index_list({table})"
        ):
            columns = [r[2] for r in connection.exec_driver_sql(f"PRAGMA index_info({name})")]
            found[name] = (columns, origin == "pk")
    elif family == "postgresql":
        rows = connection.execute(
            sa.text(
                "SELECT c.relname, ix.indisprimary, a.attname"
                " FROM pg_index ix"
                " JOIN pg_class c ON c.oid = ix.indexrelid"
                " JOIN pg_class t ON t.oid = ix.indrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(ix.indkey)"
                " WHERE t.relname = :table AND n.nspname = current_schema()"
                " ORDER BY c.relname, array_position(ix.indkey::int2[], a.attnum)"
            ),
            {"table": table},
        )
        for name, primary, column in rows:
            found.setdefault(name, ([], bool(primary)))[0].append(column)
    else:
        rows = connection.execute(
            sa.text(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
                " ORDER BY INDEX_NAME, SEQ_IN_INDEX"
            ),
            {"table": table},
        )
        for name, column in rows:
            found.setdefault(name, ([], name == "PRIMARY"))[0].append(column)
    return found
