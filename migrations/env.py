"""Alembic environment of workflow-persistence.

The URL comes from ``-x url=...``, else ``$WORKFLOW_PERSISTENCE_URL``, else a local
SQLite file. The revision is recorded in ``workflow_persistence_alembic_version``.
Offline (``--sql``) the SQL is written for the URL's dialect: give a ``mariadb://`` URL
for MariaDB, whose id collation differs from MySQL's.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from workflow_persistence._storage.database import make_engine
from workflow_persistence.migrations import VERSION_TABLE, render_item, resolve_url
from workflow_persistence.models import metadata

config = context.config

if config.config_file_name is not None:  # the alembic command line, with alembic.ini
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str | URL:
    # A URL object stays one: str(URL) masks its password as "***".
    given = context.get_x_argument(as_dictionary=True).get("url")
    return given or config.attributes.get("url") or resolve_url()


def _configure(connection: Connection | None = None) -> None:
    context.configure(
        connection=connection,
        url=None if connection is not None else _url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        render_item=render_item,
        render_as_batch=connection is not None and connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    _configure()
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over by workflow_persistence.migrations.upgrade
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
