"""The packaged Alembic migrations: where they are, how to run them, and host-app hooks.

The environment lives in ``migrations/`` at the repository root (``alembic.ini`` points at
it) and ships inside the wheel as ``workflow_persistence/_migrations``. Run on its own
(``workflow-persistence migrate``, ``alembic upgrade head``, or ``DatabasePersistence``
creating its table) it records its revision in its own version table, so it never trips
over a host app's revisions in ``alembic_version``. A host app with its own Alembic
environment adds :func:`versions_dir` to its ``version_locations`` instead; its own
version table then tracks the ``workflow_persistence`` branch like any other. Its env.py
passes :func:`include_name` (autogenerate leaves our tables alone), :func:`render_item`
(its revisions import our column types from ``workflow_persistence.types``) and
:func:`process_revision_directives` (its revisions stay on its own branch, in its folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from workflow_persistence._serialization.columns import columns_of, pending_deadline
from workflow_persistence._serialization.serializers import JsonSerializer

from ._snapshot import SNAPSHOT_STATUSES, UNKNOWN_STATUS
from .errors import PersistenceError
from .models import TABLE_NAME, VERSION_TABLE
from .types import UTCDateTime, WorkflowIdType, mysql_binary_collation

if TYPE_CHECKING:
    from alembic.operations.ops import MigrationScript
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

__all__ = [
    "BRANCH",
    "DEADLINE_COLUMN",
    "DEFAULT_URL",
    "RUN_COLUMNS",
    "URL_ENV_VAR",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "fill_deadlines",
    "fill_run_columns",
    "include_name",
    "include_object",
    "process_revision_directives",
    "render_item",
    "require_run_columns",
    "resolve_url",
    "script_location",
    "upgrade",
    "versions_dir",
]

#: The branch label of the first revision: ``alembic upgrade workflow_persistence@head``.
BRANCH = "workflow_persistence"
URL_ENV_VAR = "WORKFLOW_PERSISTENCE_URL"
DEFAULT_URL = "sqlite:///workflow_persistence.db"

_OUR_TABLES = frozenset({TABLE_NAME, VERSION_TABLE})
_TYPES_MODULE = WorkflowIdType.__module__


def script_location() -> Path:
    """The Alembic environment: the packaged copy, or the source tree's in a checkout."""
    packaged = Path(__file__).resolve().parent / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    source = Path(__file__).resolve().parents[2] / "migrations"
    if (source / "env.py").is_file():
        return source
    raise FileNotFoundError("the workflow-persistence migrations are missing from this install")


def versions_dir() -> str:
    """The folder of revision files, for a host app's ``version_locations``."""
    return str(script_location() / "versions")


def resolve_url(url: str | URL | None = None) -> str | URL:
    """The database URL: the one given, else ``$WORKFLOW_PERSISTENCE_URL``, else SQLite."""
    if url:
        return url
    return os.environ.get(URL_ENV_VAR) or DEFAULT_URL


def include_name(
    name: str | None, type_: str, parent_names: MutableMapping[Any, str | None]
) -> bool:
    """Alembic ``include_name`` hook: a host app's autogenerate skips our tables.

    Use it when ``workflow_persistence.metadata`` is not part of the host's
    ``target_metadata``, so autogenerate never proposes to drop our table.
    """
    if type_ == "table":
        return name not in _OUR_TABLES
    return parent_names.get("table_name") not in _OUR_TABLES


def include_object(
    obj: Any,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
) -> bool:
    """Alembic ``include_object`` hook: skips our tables whether reflected or declared."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table not in _OUR_TABLES


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Alembic ``render_item`` hook: revisions using our column types import them.

    Autogenerate writes a column built on ``WorkflowInterruptMixin`` as
    ``workflow_persistence.types.WorkflowIdType(...)`` but adds no import for it, so the
    revision fails with a NameError. This adds the import and keeps Alembic's rendering.
    """
    if type_ == "type":
        module = type(obj).__module__
        if module == _TYPES_MODULE and autogen_context.imports is not None:
            autogen_context.imports.add(f"import {module}")
    return False


def process_revision_directives(
    context: MigrationContext, revision: Any, directives: Sequence[MigrationScript]
) -> None:
    """Alembic hook: a host app's new revision goes on its own branch, in its own folder.

    With our folder in ``version_locations``, a plain ``alembic revision`` builds on our
    head and Alembic writes it next to that head, into the installed package (gone with
    the next upgrade of the library), or stops at "Multiple heads" once the host has a
    branch of its own. With this hook a revision given no ``--head`` builds on the host's
    own head (a new root when it has none yet) and lands in the host's versions folder.
    """
    script_dir = context.script
    if script_dir is None:
        return
    ours = Path(versions_dir()).resolve()
    own_locations = [p for p in _version_locations(script_dir) if not p.is_relative_to(ours)]
    for script in directives:
        if script.head in (None, "head"):  # the command line passes None, the API "head"
            _base_on_own_head(script, script_dir, ours)
        if len(own_locations) == 1 and _would_land_in(script, script_dir, ours):
            script.version_path = str(own_locations[0])


def _version_locations(script_dir: ScriptDirectory) -> list[Path]:
    from alembic.util import coerce_resource_to_filename

    if not script_dir.version_locations:
        return [Path(script_dir.dir, "versions").resolve()]
    return [Path(coerce_resource_to_filename(p)).resolve() for p in script_dir.version_locations]


def _revision_folder(script_dir: ScriptDirectory, revision: str) -> Path:
    script = script_dir.get_revision(revision)
    assert script is not None
    return Path(script.path).resolve().parent


def _base_on_own_head(script: MigrationScript, script_dir: ScriptDirectory, ours: Path) -> None:
    """Replace the default ``head`` by the host's one head, or ``base`` when it has none."""
    own_heads = [
        head
        for head in script_dir.get_heads()
        if not _revision_folder(script_dir, head).is_relative_to(ours)
    ]
    if len(own_heads) == 1:
        script.head = own_heads[0]
    elif not own_heads:
        script.head = "base"
    # Several: the host picks one (--head=app@head) or merges, as Alembic asks.


def _would_land_in(script: MigrationScript, script_dir: ScriptDirectory, ours: Path) -> bool:
    """Whether Alembic would write the revision into our folder, or ask where to put it."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    if script.version_path is not None:
        return False
    head = "head" if script.head is None else script.head
    if head == "base":
        return True
    try:
        heads = script_dir.get_revisions(head)
    except (CommandError, RevisionError):  # unknown or ambiguous: Alembic says so itself
        return False
    folders = [Path(h.path).resolve().parent for h in heads if h is not None]
    return not folders or folders[0].is_relative_to(ours)


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic ``Config`` for the packaged environment."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    resolved = resolve_url(url)
    config.attributes["url"] = resolved
    return config


def upgrade(
    bind: str | URL | Engine | Connection | None = None,
    revision: str = "heads",
    *,
    direction: Literal["upgrade", "downgrade"] = "upgrade",
) -> None:
    """Run the packaged migrations against ``bind`` (a URL, Engine or Connection)."""
    from alembic import command

    config = alembic_config(None if isinstance(bind, Engine | Connection) else bind)
    run = command.upgrade if direction == "upgrade" else command.downgrade
    if isinstance(bind, Connection):
        config.attributes["connection"] = bind
        run(config, revision)
    elif isinstance(bind, Engine):
        with bind.begin() as connection:
            config.attributes["connection"] = connection
            run(config, revision)
    else:
        run(config, revision)


def current_revision(connection: Connection) -> str | None:
    """The revision the standalone environment has recorded, or None."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


# -- revision wfp_0002: the queryable columns ------------------------------------------------

#: The columns revision ``wfp_0002`` added, copied from each snapshot on save so a list
#: never decodes ``data``.
RUN_COLUMNS = ("status", "workflow_name", "current_node", "interrupt", "run_metadata", "expires_at")
_NAME_LENGTH = 255  # workflow_name and current_node: VARCHAR(255), like ids


def require_run_columns(connection: Connection | Engine, table: sa.Table) -> None:
    """Raise a clear error if ``table`` predates revision ``wfp_0002`` or ``wfp_0003``
    (columns this version writes are missing).

    Such a table is not upgraded behind the app's back: filling the new columns reads
    every record, which is for ``migrate`` (or the app's Alembic) to do, once.
    """
    found = {column["name"] for column in sa.inspect(connection).get_columns(
        table.name, schema=table.schema
    )}
    for revision, columns in (("wfp_0002", RUN_COLUMNS), ("wfp_0003", (DEADLINE_COLUMN,))):
        _require(table, revision, [n for n in columns if n in table.c and n not in found])


def _require(table: sa.Table, revision: str, missing: list[str]) -> None:
    if missing:
        raise PersistenceError(
            f"the table {table.name!r} predates revision {revision} (it lacks the column"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}): upgrade it once with"
            " `workflow-persistence migrate`, or `alembic upgrade heads` in an app whose"
            " Alembic lists the library's migrations"
        )


def fill_run_columns(
    connection: Connection, table_name: str = TABLE_NAME, *, schema: str | None = None,
    batch_size: int = 1000,
) -> int:
    """Fill the queryable columns of every stored record from its ``data``; return the count.

    What revision ``wfp_0002`` runs after adding the columns (a host app that added them
    to a table of its own in its own revision calls it the same way, with
    ``op.get_bind()``). It works in the caller's transaction, ``batch_size`` records at a
    time (keyset on ``workflow_id``), so memory holds one batch, never the table. Records
    are decoded with stand-ins for every class, so no stored class is ever imported; one
    that cannot be decoded (a signed pickle, damage) gets status ``"unknown"`` until its
    next save.
    """
    serializer = JsonSerializer(unknown_classes="stand-in")
    write = _batch_writer(connection, table_name, schema)
    done = 0
    for rows in _stored_batches(connection, table_name, schema, batch_size):
        write([_column_values(serializer, *row) for row in rows])
        done += len(rows)
    return done


def _stored_batches(
    connection: Connection,
    table_name: str,
    schema: str | None,
    batch_size: int,
    status: str | None = None,
) -> Iterator[list[Any]]:
    """``(workflow_id, data)`` of the stored records (of ``status``, if given), a batch
    at a time, by keyset on ``workflow_id``: memory holds one batch, never the table."""
    columns: list[Any] = [sa.column("workflow_id"), sa.column("data"), sa.column("status")]
    table = sa.table(table_name, *columns, schema=schema)
    page = sa.select(table.c.workflow_id, table.c.data).order_by(table.c.workflow_id)
    if status is not None:
        page = page.where(table.c.status == status)
    after: Any = None
    while True:
        query = page if after is None else page.where(table.c.workflow_id > after)
        rows = list(connection.execute(query.limit(batch_size)).all())
        if not rows:
            return
        after = rows[-1][0]
        yield rows


def _batch_writer(
    connection: Connection, table_name: str, schema: str | None
) -> Callable[[list[dict[str, Any]]], None]:
    """How a batch of filled columns is written: one statement per batch where it pays.

    PostgreSQL and MySQL/MariaDB join the table to the batch's values in one UPDATE (a
    statement per row costs a round trip each: 2.6x slower on MariaDB); SQLite, in
    process, runs the per-row UPDATE for each.
    """
    dialect = connection.dialect
    quoted = dialect.identifier_preparer.format_table(sa.table(table_name, schema=schema))
    if dialect.name == "postgresql":
        return lambda batch: _update_from_values(connection, quoted, batch)
    if dialect.name in ("mysql", "mariadb"):

        def joined(batch: list[dict[str, Any]]) -> None:
            for part in _within_packet(batch):
                _update_joined(connection, quoted, part)

        return joined
    update = _fill_statement(table_name, schema)

    def each_row(batch: list[dict[str, Any]]) -> None:
        connection.execute(update, batch)

    return each_row


_FIELDS = ("b_workflow_id", *(f"b_{name}" for name in RUN_COLUMNS))


#: Most JSON text one MySQL/MariaDB statement carries: far below the smallest usual
#: ``max_allowed_packet`` (16 MiB; 4 MiB before MySQL 8), which a batch of large questions
#: would pass, and the server then drops the connection.
MYSQL_STATEMENT_TEXT = 2 << 20


def _within_packet(batch: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``batch`` in consecutive parts whose JSON texts stay under MYSQL_STATEMENT_TEXT."""
    part: list[dict[str, Any]] = []
    size = 0
    for values in batch:
        weight = len(values["b_interrupt"] or "") + len(values["b_run_metadata"]) + 1024
        if part and size + weight > MYSQL_STATEMENT_TEXT:
            yield part
            part, size = [], 0
        part.append(values)
        size += weight
    if part:
        yield part


def _update_from_values(connection: Connection, table: str, batch: list[dict[str, Any]]) -> None:
    """One UPDATE joined to the batch, passed as one array per column (seven parameters)."""
    columns = {field: [values[field] for values in batch] for field in _FIELDS}
    connection.execute(
        sa.text(
            f"UPDATE {table} AS t SET status = v.status, workflow_name = v.workflow_name,"
            " current_node = v.current_node, interrupt = CAST(v.interrupt AS JSONB),"
            " run_metadata = CAST(v.run_metadata AS JSONB), expires_at = v.expires_at"
            " FROM unnest(CAST(:b_workflow_id AS TEXT[]), CAST(:b_status AS TEXT[]),"
            " CAST(:b_workflow_name AS TEXT[]), CAST(:b_current_node AS TEXT[]),"
            " CAST(:b_interrupt AS TEXT[]), CAST(:b_run_metadata AS TEXT[]),"
            " CAST(:b_expires_at AS TIMESTAMPTZ[]))"
            " AS v(workflow_id, status, workflow_name, current_node, interrupt, run_metadata,"
            " expires_at) WHERE t.workflow_id = v.workflow_id"
        ),
        columns,
    )


def _update_joined(connection: Connection, table: str, batch: list[dict[str, Any]]) -> None:
    """One UPDATE joined to the batch's rows (a UNION ALL of SELECTs: MySQL and MariaDB
    spell a VALUES table differently), sent as the driver's own SQL: thousands of
    parameters are too many to build SQLAlchemy binds for."""
    params: list[Any] = []
    for values in batch:
        stamp = values["b_expires_at"]
        if stamp is not None:  # DATETIME(6) holds naive UTC
            values = {**values, "b_expires_at": stamp.astimezone(UTC).replace(tzinfo=None)}
        params.extend(values[field] for field in _FIELDS)
    placeholders = ", ".join(["%s"] * len(_FIELDS))
    first = ", ".join(f"%s AS {column}" for column in ("workflow_id", *RUN_COLUMNS))
    rows = " UNION ALL ".join([f"SELECT {first}", *[f"SELECT {placeholders}"] * (len(batch) - 1)])
    collation = mysql_binary_collation(connection.dialect)
    connection.exec_driver_sql(
        f"UPDATE {table} AS t JOIN ({rows}) AS v"
        f" ON t.workflow_id = v.workflow_id COLLATE {collation}"
        " SET t.status = v.status, t.workflow_name = v.workflow_name,"
        " t.current_node = v.current_node, t.interrupt = v.interrupt,"
        " t.run_metadata = v.run_metadata, t.expires_at = v.expires_at",
        tuple(params),
    )


def _fill_statement(table_name: str, schema: str | None) -> Any:
    """``UPDATE ... SET <the columns> WHERE workflow_id = ?``, JSON bound as text (SQLite)."""
    table = sa.table(
        table_name, *(sa.column(name) for name in ("workflow_id", *RUN_COLUMNS)), schema=schema
    )
    return (
        sa.update(table)
        .where(table.c.workflow_id == sa.bindparam("b_workflow_id"))
        .values(
            status=sa.bindparam("b_status", type_=sa.String()),
            workflow_name=sa.bindparam("b_workflow_name", type_=sa.String()),
            current_node=sa.bindparam("b_current_node", type_=sa.String()),
            interrupt=sa.bindparam("b_interrupt", type_=sa.Text()),
            run_metadata=sa.bindparam("b_run_metadata", type_=sa.Text()),
            expires_at=sa.bindparam("b_expires_at", type_=UTCDateTime()),
        )
    )


def _column_values(serializer: Any, workflow_id: Any, data: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "b_workflow_id": workflow_id,
        "b_status": UNKNOWN_STATUS,
        "b_workflow_name": None,
        "b_current_node": None,
        "b_interrupt": None,
        "b_run_metadata": "{}",
        "b_expires_at": None,
    }
    try:
        if not isinstance(data, bytes | bytearray | memoryview):
            return values  # a damaged column (SQLite stores any type anywhere)
        columns = columns_of(serializer.loads(bytes(data)))
    except Exception:  # one unreadable record must not stop the migration
        return values
    status = columns.status
    values.update(
        b_status=status if status in SNAPSHOT_STATUSES else UNKNOWN_STATUS,
        b_workflow_name=_fitting_name(columns.workflow_name),
        b_current_node=_fitting_name(columns.current_node),
        b_interrupt=columns.interrupt,
        b_run_metadata=columns.run_metadata,
        b_expires_at=columns.expires_at,
    )
    return values


# -- revision wfp_0003: the deadline of the pending question ------------------------------

#: The column revision ``wfp_0003`` added: when a waiting run's question is due for its
#: default answer (``interrupt(..., timeout=...)``), so overdue runs are one indexed query.
DEADLINE_COLUMN = "deadline"


def fill_deadlines(
    connection: Connection, table_name: str = TABLE_NAME, *, schema: str | None = None,
    batch_size: int = 1000,
) -> int:
    """Fill ``deadline`` of every waiting run from its ``data``; return how many got one.

    What revision ``wfp_0003`` runs after adding the column (a host app calls it the same
    way for a table of its own). Only interrupted records can have one; records are
    decoded with stand-ins, so no stored class is imported, and one that cannot be
    decoded keeps no deadline until its next save.
    """
    serializer = JsonSerializer(unknown_classes="stand-in")
    table = sa.table(
        table_name, sa.column("workflow_id"), sa.column(DEADLINE_COLUMN), schema=schema
    )
    update = (
        sa.update(table)
        .where(table.c.workflow_id == sa.bindparam("b_workflow_id"))
        .values(deadline=sa.bindparam("b_deadline", type_=UTCDateTime()))
    )
    done = 0
    for rows in _stored_batches(connection, table_name, schema, batch_size, "interrupted"):
        values = []
        for workflow_id, data in rows:
            deadline = _readable_deadline(serializer, data)
            if deadline is not None:
                values.append({"b_workflow_id": workflow_id, "b_deadline": deadline})
        if values:
            connection.execute(update, values)
            done += len(values)
    return done


def _readable_deadline(serializer: JsonSerializer, data: Any) -> datetime | None:
    try:
        return pending_deadline(serializer.loads(bytes(data)))
    except Exception:  # one unreadable record must not stop the migration
        return None


def _fitting_name(name: str | None) -> str | None:
    """``name`` if its VARCHAR(255) column takes it on every database, else None."""
    if name is None or len(name) > _NAME_LENGTH or "\x00" in name:
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name
