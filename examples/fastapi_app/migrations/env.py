"""The app's Alembic environment, on the app's own async engine.

The library's revisions ship inside its package; their folder is added here because
alembic.ini cannot ask Python where a package is installed. ``include_name`` keeps the
library's tables out of the app's autogenerate (and ``alembic check``).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from db import Base, engine
from sqlalchemy import Connection

from workflow_persistence import migrations as wfp

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Before Alembic reads any revision: our folder, then the library's.
script = context.script
if wfp.versions_dir() not in script.version_locations:
    script.version_locations = [*script.version_locations, wfp.versions_dir()]


def migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=wfp.include_name,  # the library's tables are not ours to diff
        render_item=wfp.render_item,
        process_revision_directives=wfp.process_revision_directives,
    )
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    async with engine.connect() as connection:
        await connection.run_sync(migrate)
    await engine.dispose()


asyncio.run(main())
