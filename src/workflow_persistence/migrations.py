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
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from .models import TABLE_NAME, VERSION_TABLE
from .types import WorkflowIdType

if TYPE_CHECKING:
    from alembic.operations.ops import MigrationScript
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

__all__ = [
    "BRANCH",
    "DEFAULT_URL",
    "URL_ENV_VAR",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "include_name",
    "include_object",
    "process_revision_directives",
    "render_item",
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
