"""A host application with its own declarative Base and its own Alembic environment.

The host (``tests/hostapp/models.py``) has its ``users`` table and snapshot tables of its
own built on ``WorkflowInterruptMixin``. Its Alembic environment, generated in a temporary
folder, adds the library's ``versions_dir()`` to ``version_locations`` (with
``path_separator = newline``) and runs ``upgrade heads`` on each real database; its own
revisions carry the branch label ``app``, as the README shows.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Session

import workflow_persistence
from workflow_persistence import (
    DatabasePersistence,
    WorkflowInterruptMixin,
    WorkflowInterruptRepository,
    WorkflowSnapshot,
    migrations,
)
from workflow_persistence._storage.database import make_engine

from .conftest import DATABASES
from .hostapp.models import HostBase, HostInterrupt
from .hostapp.support import (
    REPO_ROOT,
    TABLE,
    alembic,
    connected,
    run,
    schema_diff,
    table_names,
    url_text,
    version_rows,
)

REVISION = "wfp_0003"  # the library's head
FIRST = "wfp_0001"  # the library's base
OUR_REVISION_FILES = [
    "wfp_0001_create_workflow_interrupts.py",
    "wfp_0002_queryable_columns.py",
    "wfp_0003_interrupt_deadline.py",
]
#: The console script installed next to the interpreter running the tests.
CLI = Path(sys.executable).with_name("workflow-persistence")
HOST_VERSION_TABLE = "alembic_version"
HOST_BRANCH = "app"
HOST_TABLES = {"users", "host_interrupts", "host_archived_interrupts"}

HOST_ENV = '''\
"""The host app's Alembic environment: its own models, its own version table."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool

import workflow_persistence
from workflow_persistence import migrations as wfp_migrations
from tests.hostapp.models import HostBase

config = context.config
options = context.get_x_argument(as_dictionary=True)
url = options.get("url") or config.attributes["url"]
target = options.get("target", "hook")

hooks: dict[str, Any] = {
    "render_item": wfp_migrations.render_item,
    "process_revision_directives": wfp_migrations.process_revision_directives,
}
target_metadata: Any = HostBase.metadata
if target == "hook":  # the README's way: the library's tables are not the host's business
    hooks["include_name"] = wfp_migrations.include_name
elif target == "list":  # or: the library's metadata is part of the target
    target_metadata = [HostBase.metadata, workflow_persistence.metadata]
else:
    assert target == "bare", target  # neither: the pitfall

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=target_metadata, compare_type=True, **hooks
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

HOST_SCRIPT_MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


def host_ini(root: Path, *, version_locations: bool = True) -> Path:
    """The host's alembic.ini: its versions folder and the library's, one per line."""
    lines = [
        "[alembic]",
        "script_location = %(here)s/migrations",
        f"prepend_sys_path = {REPO_ROOT}",
        "path_separator = newline",
        # env.py runs for every `alembic revision`, so its hooks apply without --autogenerate.
        "revision_environment = true",
    ]
    if version_locations:
        lines += [
            "version_locations =",
            "    %(here)s/migrations/versions",
            f"    {migrations.versions_dir()}",
        ]
    ini = root / "alembic.ini"
    ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ini


def make_host_project(root: Path, *, version_locations: bool = True) -> Path:
    """Lay out a host app's Alembic environment under ``root``; return its alembic.ini."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(HOST_ENV, encoding="utf-8")
    (root / "migrations" / "script.py.mako").write_text(HOST_SCRIPT_MAKO, encoding="utf-8")
    return host_ini(root, version_locations=version_locations)


def our_revision_files() -> list[str]:
    return sorted(p for p in os.listdir(migrations.versions_dir()) if p.endswith(".py"))


@pytest.fixture
def our_folder_untouched() -> Iterator[list[str]]:
    """The library's revision files; any a test wrongly writes there are removed after it."""
    before = our_revision_files()
    yield before
    for stray in set(our_revision_files()) - set(before):
        (Path(migrations.versions_dir()) / stray).unlink()


def function_source(path: Path, name: str) -> str:
    """The source of one top-level function of a revision file."""
    text = path.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise AssertionError(f"{path} has no {name}()")


def hook_only_for_ours(name: str | None, type_: str, parents: Any) -> bool:
    """An include_name that keeps only the library's table (to compare just that)."""
    if type_ == "schema":
        return True
    if type_ == "table":
        return name == TABLE
    return bool(parents.get("table_name") == TABLE)


# -- one host project per database, migrated the documented way --------------------------


@dataclass
class HostProject:
    kind: str
    url: URL
    root: Path
    ini: Path
    heads_before: str
    tables_after_library: set[str]
    versions_after_library: list[str]
    ours_before: list[str]
    ours_after: list[str]
    revision_file: Path
    tables_after_host: set[str]

    def alembic(self, *args: str, expect_ok: bool = True) -> Any:
        return alembic(
            "-x", f"url={url_text(self.url)}", *args,
            cwd=self.root, config=self.ini, expect_ok=expect_ok,
        )


@pytest.fixture(scope="module", params=DATABASES)
def host(
    request: pytest.FixtureRequest,
    new_database_url: Callable[[str], URL],
    tmp_path_factory: pytest.TempPathFactory,
) -> HostProject:
    """A host app's Alembic project, driven through the real command line:

    ``upgrade heads`` (only the library's branch exists yet), then the host's first
    revision with ``--autogenerate --head=base --branch-label=app
    --version-path=<its folder>``, then ``upgrade heads`` again.
    """
    kind = str(request.param)
    url = new_database_url(kind)
    root = tmp_path_factory.mktemp(f"host-{kind}")
    ini = make_host_project(root)

    def cli(*args: str) -> Any:
        return alembic("-x", f"url={url_text(url)}", *args, cwd=root, config=ini)

    heads_before = cli("heads").stdout
    cli("upgrade", "heads")
    tables_after_library = table_names(url)
    versions_after_library = version_rows(url, HOST_VERSION_TABLE)
    host_versions = root / "migrations" / "versions"
    ours_before = our_revision_files()
    cli(
        "revision", "--autogenerate", "-m", "create users",
        "--head=base", f"--branch-label={HOST_BRANCH}", f"--version-path={host_versions}",
    )
    ours_after = our_revision_files()
    made = sorted(host_versions.glob("*.py"))
    assert len(made) == 1, made
    cli("upgrade", "heads")
    return HostProject(
        kind=kind,
        url=url,
        root=root,
        ini=ini,
        heads_before=heads_before,
        tables_after_library=tables_after_library,
        versions_after_library=versions_after_library,
        ours_before=ours_before,
        ours_after=ours_after,
        revision_file=made[0],
        tables_after_host=table_names(url),
    )


def test_the_library_heads_are_found_through_version_locations(host: HostProject) -> None:
    # path_separator = newline: an entry is never cut apart, the library's head is there.
    assert host.heads_before.split() == [REVISION, f"({migrations.BRANCH})", "(head)"]
    assert host.tables_after_library == {TABLE, HOST_VERSION_TABLE}
    assert host.versions_after_library == [REVISION]


def test_upgrade_heads_creates_both_tables(host: HostProject) -> None:
    assert host.tables_after_host == {*HOST_TABLES, TABLE, HOST_VERSION_TABLE}
    # The host's version table tracks both branches; the standalone one is never made.
    script = ScriptDirectory.from_config(Config(str(host.ini)))
    (host_revision,) = set(script.get_heads()) - {REVISION}
    assert sorted(version_rows(host.url, HOST_VERSION_TABLE)) == sorted([REVISION, host_revision])
    assert migrations.VERSION_TABLE not in host.tables_after_host
    current = host.alembic("current").stdout.split()
    assert REVISION in current
    assert host_revision in current
    # The library works on the table the host's migrations made.
    with DatabasePersistence(host.url, create_table=False) as persistence:
        persistence.save(WorkflowSnapshot(f"host-{host.kind}", state={"n": 1}))
        assert persistence.load(f"host-{host.kind}").state == {"n": 1}
        persistence.delete(f"host-{host.kind}")
    assert migrations.VERSION_TABLE not in table_names(host.url)


def test_the_host_first_revision_lands_in_the_host_folder(host: HostProject) -> None:
    assert host.revision_file.parent == host.root / "migrations" / "versions"
    assert host.ours_after == host.ours_before == OUR_REVISION_FILES
    script = ScriptDirectory.from_config(Config(str(host.ini)))
    # Two independent branches: the library's (wfp_0001 -> head) and the host's one revision.
    assert sorted(script.get_bases()) == sorted({*script.get_heads(), FIRST} - {REVISION})
    assert len(script.get_heads()) == 2
    assert REVISION in script.get_heads()
    host_head = script.get_revision(f"{HOST_BRANCH}@head")
    assert host_head is not None
    assert Path(host_head.path) == host.revision_file
    text = host.revision_file.read_text(encoding="utf-8")
    assert "down_revision = None" in text
    assert f"branch_labels = ('{HOST_BRANCH}',)" in text
    upgrade = function_source(host.revision_file, "upgrade")
    assert "op.create_table('users'" in upgrade
    assert "op.create_table('host_interrupts'" in upgrade
    assert "drop_" not in upgrade
    # The mixin's table names the library's public types, and imports them.
    assert "import workflow_persistence.types\n" in text
    assert "workflow_persistence.types.WorkflowIdType(length=255)" in upgrade
    assert "workflow_persistence.types.UTCDateTime(timezone=True)" in upgrade
    assert "workflow_persistence._" not in text  # no private module
    # The queryable columns and their indexes reach the host's tables too.
    for column in ("workflow_name", "current_node"):
        assert f"sa.Column('{column}', workflow_persistence.types.WorkflowIdType(length=255)," \
            " nullable=True)" in upgrade
    assert "sa.Column('status', sa.String(length=16), nullable=False)" in upgrade
    for column in ("interrupt", "run_metadata"):
        assert (
            f"sa.Column('{column}', workflow_persistence.types.JsonData(), nullable=True)"
        ) in upgrade
    assert "sa.Column('expires_at', workflow_persistence.types.UTCDateTime(timezone=True)," \
        " nullable=True)" in upgrade
    for table in ("host_interrupts", "host_archived_interrupts"):
        for suffix, columns in (("status_updated_at", "['status', 'updated_at']"),
                                ("expires_at", "['expires_at']"),
                                ("deadline", "['deadline']")):
            assert (
                f"op.create_index('ix_{table}_{suffix}', '{table}', {columns}, unique=False)"
            ) in upgrade
    # A table given its own __table_args__ dict keeps the mixin's index.
    assert "op.create_table('host_archived_interrupts'" in upgrade
    assert (
        "op.create_index('ix_host_archived_interrupts_updated_at', 'host_archived_interrupts',"
        " ['updated_at'], unique=False)"
    ) in upgrade
    assert TABLE not in text
    assert migrations.VERSION_TABLE not in text


def test_autogenerate_proposes_nothing_with_the_hook_or_the_list(host: HostProject) -> None:
    for target in ("hook", "list"):
        done = host.alembic("-x", f"target={target}", "check")
        assert "No new upgrade operations detected" in done.stdout + done.stderr, target
    with connected(host.url) as connection:
        hooked = schema_diff(
            connection,
            HostBase.metadata,
            version_table=HOST_VERSION_TABLE,
            include_name=migrations.include_name,
        )
        assert hooked == []
        filtered = schema_diff(
            connection,
            HostBase.metadata,
            version_table=HOST_VERSION_TABLE,
            include_object=migrations.include_object,
        )
        assert filtered == []
        both = [HostBase.metadata, workflow_persistence.metadata]
        assert schema_diff(connection, both, version_table=HOST_VERSION_TABLE) == []
        # Our table, as the host's migrations left it, matches the library's model.
        ours = schema_diff(
            connection,
            workflow_persistence.metadata,
            version_table=HOST_VERSION_TABLE,
            include_name=hook_only_for_ours,
        )
        assert ours == []


def test_without_the_hook_autogenerate_would_drop_our_table(host: HostProject) -> None:
    """The pitfall the hook exists for, shown on the same database."""
    done = host.alembic("-x", "target=bare", "check", expect_ok=False)
    assert done.returncode != 0
    assert "remove_table" in done.stdout + done.stderr
    assert TABLE in done.stdout + done.stderr
    with connected(host.url) as connection:
        diff = schema_diff(connection, HostBase.metadata, version_table=HOST_VERSION_TABLE)
    # Only our table is concerned; some databases also list its index on its own.
    assert ("remove_table", TABLE) in [(d[0], d[1].name) for d in diff]
    assert {(d[0], d[1].table.name) for d in diff if d[0] != "remove_table"} <= {
        ("remove_index", TABLE)
    }


def test_the_host_table_from_its_own_revision_works(host: HostProject) -> None:
    engine = make_engine(host.url)
    try:
        with Session(engine) as session, session.begin():
            repository = WorkflowInterruptRepository(session, model=HostInterrupt)
            for workflow_id in ("a", "A", "a "):
                assert repository.upsert(workflow_id, workflow_id.encode()) == 1
        with Session(engine) as session:
            repository = WorkflowInterruptRepository(session, model=HostInterrupt)
            assert sorted(i.workflow_id for i in repository.list()) == ["A", "a", "a "]
            row = repository.get("a ")
            assert row is not None
            assert row.data == b"a "
        with engine.begin() as connection:
            connection.execute(sa.delete(HostInterrupt))
    finally:
        engine.dispose()


# -- the library made its tables first: `migrate` or a first use, then the host's Alembic ---


@dataclass
class LibraryFirst:
    kind: str
    how: str
    url: URL
    root: Path
    ini: Path
    tables_before_host: set[str]

    def alembic(self, *args: str, expect_ok: bool = True) -> Any:
        return alembic(
            "-x", f"url={url_text(self.url)}", *args,
            cwd=self.root, config=self.ini, expect_ok=expect_ok,
        )


LIBRARY_FIRST = [(kind, how) for kind in DATABASES for how in ("migrate", "first-use")]


@pytest.fixture(scope="module", params=LIBRARY_FIRST, ids=["-".join(p) for p in LIBRARY_FIRST])
def library_first(
    request: pytest.FixtureRequest,
    new_database_url: Callable[[str], URL],
    tmp_path_factory: pytest.TempPathFactory,
) -> LibraryFirst:
    """The library's tables exist before the host's Alembic first runs.

    ``migrate``: ``workflow-persistence migrate`` keeps the library's tables, the host's
    version_locations hold only its own folder. ``first-use``: ``DatabasePersistence`` made
    them, and the host, set up as the README shows, adopts the library's branch with
    ``stamp workflow_persistence@head``. Either way the host then makes its first revision
    and runs ``upgrade heads``.
    """
    kind, how = request.param
    url = new_database_url(kind)
    root = tmp_path_factory.mktemp(f"library-first-{kind}-{how}")
    tracks_ours = how == "first-use"
    ini = make_host_project(root, version_locations=tracks_ours)
    if how == "migrate":
        run([CLI, "migrate", "--url", url_text(url)], cwd=root)
    else:
        with DatabasePersistence(url) as persistence:
            persistence.save(WorkflowSnapshot(f"first-{kind}", state={"n": 1}))
    project = LibraryFirst(kind, how, url, root, ini, table_names(url))
    if tracks_ours:
        project.alembic("stamp", f"{migrations.BRANCH}@head")
    project.alembic(
        "revision", "--autogenerate", "-m", "create users",
        "--head=base", f"--branch-label={HOST_BRANCH}",
        f"--version-path={root / 'migrations' / 'versions'}",
    )
    project.alembic("upgrade", "heads")
    return project


@pytest.mark.parametrize("target", ["list", "hook"])
def test_alembic_check_after_the_library_made_its_tables(
    library_first: LibraryFirst, target: str
) -> None:
    # Both library tables are there, its version table included, next to the host's.
    assert library_first.tables_before_host == {TABLE, migrations.VERSION_TABLE}
    assert table_names(library_first.url) == {
        *HOST_TABLES, TABLE, migrations.VERSION_TABLE, HOST_VERSION_TABLE
    }
    done = library_first.alembic("-x", f"target={target}", "check")
    assert "No new upgrade operations detected" in done.stdout + done.stderr


def test_compare_metadata_after_the_library_made_its_tables(library_first: LibraryFirst) -> None:
    with connected(library_first.url) as connection:
        both = [HostBase.metadata, workflow_persistence.metadata]
        assert schema_diff(connection, both, version_table=HOST_VERSION_TABLE) == []
        hooked = schema_diff(
            connection,
            HostBase.metadata,
            version_table=HOST_VERSION_TABLE,
            include_name=migrations.include_name,
        )
        assert hooked == []
        # Only a host that lists the library's metadata owns its version table: one that
        # lists neither still hears about both tables, as about any table it doesn't know.
        bare = schema_diff(connection, HostBase.metadata, version_table=HOST_VERSION_TABLE)
        dropped = {d[1].name for d in bare if d[0] == "remove_table"}
        assert dropped == {TABLE, migrations.VERSION_TABLE}
    assert version_rows(library_first.url) == [REVISION]  # the library's own record stays


# -- where the host's next revisions go ------------------------------------------------------


def host_cli(url: URL, root: Path, ini: Path) -> Callable[..., Any]:
    def cli(*args: str) -> Any:
        return alembic("-x", f"url={url_text(url)}", *args, cwd=root, config=ini)

    return cli


def test_the_branch_label_keeps_every_host_revision_in_its_folder(
    new_database_url: Callable[[str], URL], tmp_path: Path, our_folder_untouched: list[str]
) -> None:
    """The README's steps: the first revision starts the ``app`` branch in the host's
    folder, later ones go on ``app@head``; even a plain ``alembic revision`` then does."""
    url = new_database_url("sqlite")
    ini = make_host_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    cli = host_cli(url, tmp_path, ini)
    cli("upgrade", "heads")
    cli(
        "revision", "--autogenerate", "-m", "create users",
        "--head=base", f"--branch-label={HOST_BRANCH}", f"--version-path={versions}",
    )
    cli("upgrade", "heads")
    cli("revision", "--autogenerate", "-m", "second", f"--head={HOST_BRANCH}@head")
    cli("upgrade", "heads")
    cli("revision", "--autogenerate", "-m", "third")  # no --head: not "Multiple heads"
    cli("revision", "-m", "fourth")  # nor without --autogenerate
    cli("upgrade", "heads")

    script = ScriptDirectory.from_config(Config(str(ini)))
    chain = list(script.iterate_revisions(f"{HOST_BRANCH}@head", "base"))
    assert [r.doc for r in chain] == ["fourth", "third", "second", "create users"]
    assert {Path(r.path).parent for r in chain} == {versions}
    assert sorted(script.get_heads()) == sorted([REVISION, chain[0].revision])
    assert our_revision_files() == our_folder_untouched
    current = cli("current").stdout.splitlines()
    assert sorted(current) == sorted([f"{REVISION} (head)", f"{chain[0].revision} (head)"])


def test_a_plain_first_revision_starts_the_host_branch_in_its_folder(
    new_database_url: Callable[[str], URL], tmp_path: Path, our_folder_untouched: list[str]
) -> None:
    """Without --head and --version-path, Alembic would build on ``wfp_0001`` and write
    next to it, into the library's folder; the hook starts a branch of the host's own."""
    url = new_database_url("sqlite")
    ini = make_host_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    cli = host_cli(url, tmp_path, ini)
    cli("upgrade", "heads")
    cli("revision", "--autogenerate", "-m", "create users")
    assert our_revision_files() == our_folder_untouched
    (made,) = versions.glob("*.py")
    assert "down_revision = None" in made.read_text(encoding="utf-8")
    cli("upgrade", "heads")
    assert table_names(url) == {*HOST_TABLES, TABLE, HOST_VERSION_TABLE}
    script = ScriptDirectory.from_config(Config(str(ini)))
    assert len(script.get_heads()) == 2
    assert set(script.get_bases()) == {*script.get_heads(), FIRST} - {REVISION}


# -- version_locations set in code --------------------------------------------------------


def test_version_locations_set_in_code(empty_database_url: URL, tmp_path: Path) -> None:
    ini = make_host_project(tmp_path, version_locations=False)
    config = Config(str(ini))
    config.set_main_option("path_separator", "newline")
    config.set_main_option(
        "version_locations",
        "\n".join([str(tmp_path / "migrations" / "versions"), migrations.versions_dir()]),
    )
    config.attributes["url"] = url_text(empty_database_url)
    assert ScriptDirectory.from_config(config).get_heads() == [REVISION]
    command.upgrade(config, "heads")
    assert table_names(empty_database_url) == {TABLE, HOST_VERSION_TABLE}
    assert version_rows(empty_database_url, HOST_VERSION_TABLE) == [REVISION]
    # Without it, the host's Alembic does not know the library's branch at all.
    bare = Config(str(ini))
    assert ScriptDirectory.from_config(bare).get_heads() == []


# -- the mixin on the host's own Base -------------------------------------------------------


def test_a_host_model_on_the_mixin_round_trips(empty_database_url: URL) -> None:
    engine = make_engine(empty_database_url)
    try:
        HostBase.metadata.create_all(engine, tables=[HostInterrupt.__table__])  # type: ignore[list-item]
        assert table_names(empty_database_url) == {"host_interrupts"}
        before = datetime.now(UTC)
        with Session(engine) as session, session.begin():
            repository = WorkflowInterruptRepository(session, model=HostInterrupt)
            assert repository.upsert("run-1", b"\x00first") == 1
            assert repository.upsert("run-1", b"\x00second\xff") == 2
        with Session(engine) as session:
            row = WorkflowInterruptRepository(session, model=HostInterrupt).get("run-1")
            assert isinstance(row, HostInterrupt)
            assert row.data == b"\x00second\xff"
            assert row.version == 2
            assert row.updated_at.tzinfo is UTC
            assert before <= row.created_at <= row.updated_at <= datetime.now(UTC)
        # The library's own table is not involved.
        assert table_names(empty_database_url) == {"host_interrupts"}
    finally:
        engine.dispose()


@pytest.fixture
def schema_name(
    db_kind: str,
    empty_database_url: URL,
    new_database_url: Callable[[str], URL],
    tmp_path: Path,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A schema besides the default one, and the engine options that make it visible."""
    options: dict[str, Any] = {}
    if db_kind == "postgresql":
        with connected(empty_database_url) as connection:
            connection.exec_driver_sql("CREATE SCHEMA hostapp")
            connection.commit()
        yield "hostapp", options
    elif db_kind == "mariadb":  # a schema is a database there
        other = new_database_url("mariadb").database
        assert other is not None
        yield other, options
    else:
        attached = tmp_path / "hostapp.db"

        def attach(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"ATTACH DATABASE '{attached}' AS hostapp")

        options["attach"] = attach
        yield "hostapp", options


def only_the_scoped_table(schema: str) -> Callable[[str | None, str, Any], bool]:
    """An include_name that compares ``scoped_interrupts`` in ``schema`` and nothing else."""

    def include(name: str | None, type_: str, parents: Any) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name == "scoped_interrupts"
        return bool(parents.get("table_name") == "scoped_interrupts")

    return include


@pytest.mark.parametrize("style", ["dict", "table_args"])
def test_mixin_table_args_keep_the_index_in_a_schema(
    empty_database_url: URL, schema_name: tuple[str, dict[str, Any]], style: str
) -> None:
    """``__table_args__ = {"schema": ...}`` (the host's own dict) or the helper: the
    ``updated_at`` index is there either way, in the model, the database and Alembic's eyes."""
    schema, options = schema_name
    table_options = {"schema": schema, "comment": "host snapshots"}

    class SchemaBase(DeclarativeBase):
        pass

    class Scoped(WorkflowInterruptMixin, SchemaBase):
        __tablename__ = "scoped_interrupts"
        __table_args__ = (
            table_options
            if style == "dict"
            else WorkflowInterruptMixin.table_args("scoped_interrupts", **table_options)
        )

    table = Scoped.__table__
    assert isinstance(table, sa.Table)
    assert table.schema == schema
    assert table.comment == "host snapshots"
    assert sorted((i.name, [c.name for c in i.columns]) for i in table.indexes) == (
        mixin_indexes("scoped_interrupts")
    )
    engine = make_engine(empty_database_url)
    if "attach" in options:
        event.listen(engine, "connect", options["attach"])
    try:
        SchemaBase.metadata.create_all(engine)
        inspector = sa.inspect(engine)
        assert "scoped_interrupts" in inspector.get_table_names(schema=schema)
        assert "scoped_interrupts" not in inspector.get_table_names()
        indexes = inspector.get_indexes("scoped_interrupts", schema=schema)
        assert sorted((i["name"], i["column_names"]) for i in indexes) == (
            mixin_indexes("scoped_interrupts")
        )
        with engine.connect() as connection:
            diff = schema_diff(
                connection,
                SchemaBase.metadata,
                version_table=HOST_VERSION_TABLE,
                include_schemas=True,
                include_name=only_the_scoped_table(schema),
            )
        assert diff == []
        with Session(engine) as session, session.begin():
            repository = WorkflowInterruptRepository(session, model=Scoped)
            assert repository.upsert("run-1", b"in a schema") == 1
            assert repository.upsert("run-1", b"in a schema, again") == 2
        with Session(engine) as session:
            row = WorkflowInterruptRepository(session, model=Scoped).get("run-1")
            assert row is not None
            assert (row.data, row.version) == (b"in a schema, again", 2)
    finally:
        engine.dispose()


def table_of(model: type[Any]) -> sa.Table:
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


def mixin_indexes(table_name: str) -> list[tuple[str | None, list[str]]]:
    """The indexes the mixin gives a table, sorted by name."""
    return sorted([
        (f"ix_{table_name}_updated_at", ["updated_at"]),
        (f"ix_{table_name}_status_updated_at", ["status", "updated_at"]),
        (f"ix_{table_name}_expires_at", ["expires_at"]),
        (f"ix_{table_name}_deadline", ["deadline"]),
    ])


def index_columns(model: type[Any]) -> list[tuple[str | None, list[str]]]:
    return sorted((i.name, [c.name for c in i.columns]) for i in table_of(model).indexes)


def test_the_mixin_index_survives_whatever_table_args_the_host_gives() -> None:
    class OwnBase(DeclarativeBase):
        pass

    class Plain(WorkflowInterruptMixin, OwnBase):
        __tablename__ = "plain"

    class AsDict(WorkflowInterruptMixin, OwnBase):
        __tablename__ = "as_dict"
        __table_args__ = {"schema": "app", "comment": "c"}  # noqa: RUF012

    class AsTuple(WorkflowInterruptMixin, OwnBase):
        __tablename__ = "as_tuple"
        __table_args__ = (sa.UniqueConstraint("version", "workflow_id"), {"schema": "app"})

    class ViaHelper(WorkflowInterruptMixin, OwnBase):
        __tablename__ = "via_helper"
        __table_args__ = WorkflowInterruptMixin.table_args("via_helper", schema="app")

    class OwnIndex(WorkflowInterruptMixin, OwnBase):
        """The host indexes updated_at itself: no second index on the same column."""

        __tablename__ = "own_index"
        __table_args__ = (sa.Index("recent_first", sa.text("updated_at DESC")),
                          sa.Index("by_update", "updated_at"))

    for model in (Plain, AsDict, AsTuple, ViaHelper):
        name = table_of(model).name
        assert index_columns(model) == mixin_indexes(name), name
    assert table_of(AsDict).schema == table_of(AsTuple).schema == "app"
    assert table_of(AsDict).comment == "c"
    unique = [c for c in table_of(AsTuple).constraints if isinstance(c, sa.UniqueConstraint)]
    assert [[c.name for c in u.columns] for u in unique] == [["version", "workflow_id"]]
    assert index_columns(OwnIndex) == [
        ("by_update", ["updated_at"]),
        ("ix_own_index_deadline", ["deadline"]),
        ("ix_own_index_expires_at", ["expires_at"]),
        ("ix_own_index_status_updated_at", ["status", "updated_at"]),
        ("recent_first", []),
    ]


def test_the_mixin_index_on_other_declarative_styles() -> None:
    legacy = sa.orm.declarative_base()
    registry = sa.orm.registry()

    class Legacy(WorkflowInterruptMixin, legacy):  # type: ignore[valid-type,misc]
        __tablename__ = "legacy"
        __table_args__ = {"schema": "app"}  # noqa: RUF012

    @registry.mapped
    class Decorated(WorkflowInterruptMixin):
        __tablename__ = "decorated"
        __table_args__ = {"schema": "app"}  # noqa: RUF012

    class Single(Legacy):
        """Single-table inheritance shares the parent's table and index."""

    assert index_columns(Legacy) == mixin_indexes("legacy")
    assert index_columns(Decorated) == mixin_indexes("decorated")
    assert table_of(Single) is table_of(Legacy)
    assert index_columns(Single) == mixin_indexes("legacy")


# -- the column types are public ------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_column_types_are_public() -> None:
    from workflow_persistence import _types, types

    assert set(types.__all__) == {"BinaryData", "JsonData", "UTCDateTime", "WorkflowIdType"}
    for name in set(types.__all__) - {"JsonData"}:  # older revisions import the old module
        assert getattr(_types, name) is getattr(types, name)
    assert types.WorkflowIdType.__module__ == types.UTCDateTime.__module__ == types.__name__
    columns = workflow_persistence.WorkflowInterrupt.__table__.c
    assert isinstance(columns.workflow_id.type, types.WorkflowIdType)
    assert isinstance(columns.created_at.type, types.UTCDateTime)
    assert isinstance(columns.updated_at.type, types.UTCDateTime)
    assert repr(columns.data.type) == repr(types.BinaryData)
    assert isinstance(columns.interrupt.type, types.JsonData)
    assert isinstance(columns.run_metadata.type, types.JsonData)
    assert isinstance(columns.expires_at.type, types.UTCDateTime)
    assert isinstance(columns.workflow_name.type, types.WorkflowIdType)
    # The packaged revisions import public modules, never a private one.
    revisions = sorted(Path(migrations.versions_dir()).glob("*.py"))
    assert [r.name for r in revisions] == OUR_REVISION_FILES
    public = {"workflow_persistence.types", "workflow_persistence.migrations"}
    for revision in revisions:
        ours = {m for m in imported_modules(revision) if m.startswith("workflow_persistence")}
        assert "workflow_persistence.types" in ours, revision.name
        assert ours <= public, revision.name


# -- a host whose database is at wfp_0001 upgrades the library -------------------------------


@pytest.mark.parametrize("kind", DATABASES)
def test_upgrade_heads_brings_a_host_database_from_wfp_0001_with_runs(
    kind: str, new_database_url: Callable[[str], URL], tmp_path: Path
) -> None:
    """The host's own Alembic (no batch rendering, its own version table) takes our table
    from wfp_0001 to the head: the columns are filled from the stored runs, the schema
    matches the model, and the records are untouched."""
    from workflow_persistence import JsonSerializer, PickleSerializer

    url = new_database_url(kind)
    ini = make_host_project(tmp_path)
    cli = host_cli(url, tmp_path, ini)
    cli("upgrade", FIRST)
    waiting = WorkflowSnapshot(
        "waiting", status="interrupted", current_node="approve",
        interrupt={"question": "Approve?"}, metadata={"tenant": "acme"}, workflow_name="refunds",
    )
    records = {
        "waiting": JsonSerializer().dumps(waiting),
        "pickled": PickleSerializer(secret_key=b"k" * 32).dumps(WorkflowSnapshot("pickled")),
    }
    now = datetime.now(UTC)
    model = workflow_persistence.WorkflowInterrupt.__table__.c
    old = sa.Table(
        TABLE, sa.MetaData(),
        *(sa.Column(n, model[n].type) for n in ("workflow_id", "data", "version", "created_at",
                                                 "updated_at")),
    )
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(old), [
                {"workflow_id": k, "data": v, "version": 3, "created_at": now, "updated_at": now}
                for k, v in records.items()
            ])
        cli("upgrade", "heads")
        assert version_rows(url, HOST_VERSION_TABLE) == [REVISION]
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(model.workflow_id, model.data, model.version, model.status,
                          model.workflow_name, model.current_node, model.interrupt,
                          model.run_metadata)
            ).all()
            found = {row[0]: tuple(row[1:]) for row in rows}
            assert found == {
                "waiting": (records["waiting"], 3, "interrupted", "refunds", "approve",
                            {"question": "Approve?"}, {"tenant": "acme"}),
                "pickled": (records["pickled"], 3, "unknown", None, None, None, {}),
            }
            ours = schema_diff(
                connection,
                workflow_persistence.metadata,
                version_table=HOST_VERSION_TABLE,
                include_name=hook_only_for_ours,
            )
            assert ours == []
    finally:
        engine.dispose()
    assert migrations.VERSION_TABLE not in table_names(url)
