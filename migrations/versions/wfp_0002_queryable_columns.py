"""Queryable columns: status, workflow_name, current_node, interrupt, run_metadata, expires_at.

Revision ID: wfp_0002
Revises: wfp_0001
Create Date: 2026-11-27

Copies of what each stored snapshot holds, so listing the runs that wait (for whom, asking
what) is one indexed query that never decodes ``data``. The upgrade fills them from every
record, a batch at a time, inside the migration's transaction; a record it cannot decode
(a signed pickle, damage) gets status ``"unknown"`` until its next save. Offline
(``--sql``) nothing can be decoded: every existing record is ``"unknown"`` until saved.
The downgrade drops the columns and their indexes and keeps every record as it was.

``status`` is added NOT NULL with a default (instant on PostgreSQL and MariaDB, no table
rewrite) and the default dropped once filled. SQLite cannot alter a column: it goes
through Alembic's batch mode, which copies the table once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
from alembic import context, op
from alembic.operations import BatchOperations

from workflow_persistence.migrations import RUN_COLUMNS, fill_run_columns
from workflow_persistence.types import (
    BinaryData,
    JsonData,
    UTCDateTime,
    WorkflowIdType,
)

revision: str = "wfp_0002"
down_revision: str | None = "wfp_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "workflow_interrupts"
#: name -> columns, as the model declares them.
INDEXES = {
    "ix_workflow_interrupts_status_updated_at": ["status", "updated_at"],
    "ix_workflow_interrupts_expires_at": ["expires_at"],
}
FILLING = "unknown"  # what status holds until the fill (and for records it can't read)


def new_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("status", sa.String(16), nullable=False, server_default=FILLING),
        sa.Column("workflow_name", WorkflowIdType(), nullable=True),
        sa.Column("current_node", WorkflowIdType(), nullable=True),
        sa.Column("interrupt", JsonData(), nullable=True),
        sa.Column("run_metadata", JsonData(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
    ]


def table_as_of(*, with_new_columns: bool) -> sa.Table:
    """The table's shape, for batch mode offline, where nothing can be reflected."""
    columns: list[sa.Column[object]] = [
        sa.Column("workflow_id", WorkflowIdType(), nullable=False),
        sa.Column("data", BinaryData, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    ]
    if with_new_columns:
        columns += new_columns()
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        *columns,
        sa.PrimaryKeyConstraint("workflow_id", name="pk_workflow_interrupts"),
    )
    sa.Index("ix_workflow_interrupts_updated_at", table.c.updated_at)
    return table


def batch(*, with_new_columns: bool) -> AbstractContextManager[BatchOperations]:
    offline = context.is_offline_mode()
    copy_from = table_as_of(with_new_columns=with_new_columns) if offline else None
    return op.batch_alter_table(TABLE, copy_from=copy_from)


def existing_columns() -> set[str] | None:
    """The table's columns, or None offline (then the table is taken to be at wfp_0001)."""
    if context.is_offline_mode():
        return None
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def existing_indexes() -> set[str]:
    if context.is_offline_mode():
        return set()
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    # A table made by a newer model (``create_all``) already has them: it is only recorded.
    found = existing_columns() or set()
    missing = [column for column in new_columns() if column.name not in found]
    if missing:
        with batch(with_new_columns=False) as table:
            for column in missing:
                table.add_column(column)
    if "status" not in found:
        if not context.is_offline_mode():
            fill_run_columns(op.get_bind(), TABLE)
        with batch(with_new_columns=True) as table:
            table.alter_column(
                "status",
                server_default=None,
                existing_type=sa.String(16),
                existing_nullable=False,
                existing_server_default=FILLING,
            )
    # Built after the fill, so the fill does not maintain them row by row.
    indexed = existing_indexes()
    for name, columns in INDEXES.items():
        if name not in indexed:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    indexed = existing_indexes() if not context.is_offline_mode() else set(INDEXES)
    for name in INDEXES:
        if name in indexed:
            op.drop_index(name, table_name=TABLE)
    found = existing_columns()
    with batch(with_new_columns=True) as table:
        for name in reversed(RUN_COLUMNS):
            if found is None or name in found:
                table.drop_column(name)
