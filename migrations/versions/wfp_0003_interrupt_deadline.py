"""The deadline of a waiting run's question: column ``deadline`` and its index.

Revision ID: wfp_0003
Revises: wfp_0002
Create Date: 2026-11-27

``interrupt(..., timeout=...)`` gives a question a deadline, after which
``Workflow.expire_due`` answers it with its default. The deadline is kept in its own
indexed column so the overdue runs are one indexed query (``list(deadline_before=now)``).
The upgrade fills it from every waiting record, inside the migration's transaction (offline,
``--sql``, nothing can be decoded: a waiting run gets its deadline at its next save). The
downgrade drops the index and the column and keeps every record as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from workflow_persistence.migrations import DEADLINE_COLUMN, fill_deadlines
from workflow_persistence.types import UTCDateTime

revision: str = "wfp_0003"
down_revision: str | None = "wfp_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "workflow_interrupts"
INDEX = "ix_workflow_interrupts_deadline"


def upgrade() -> None:
    offline = context.is_offline_mode()
    inspector = None if offline else sa.inspect(op.get_bind())
    # A table made by a newer model (``create_all``) already has it: it is only recorded.
    found = set() if inspector is None else {c["name"] for c in inspector.get_columns(TABLE)}
    if DEADLINE_COLUMN not in found:
        # Adding a nullable column needs no table copy, on SQLite either.
        op.add_column(TABLE, sa.Column(DEADLINE_COLUMN, UTCDateTime(), nullable=True))
        if not offline:
            fill_deadlines(op.get_bind(), TABLE)
    indexed = set() if inspector is None else {str(i["name"]) for i in inspector.get_indexes(TABLE)}
    if INDEX not in indexed:  # built after the fill, which then maintains no index
        op.create_index(INDEX, TABLE, [DEADLINE_COLUMN])


def downgrade() -> None:
    offline = context.is_offline_mode()
    inspector = None if offline else sa.inspect(op.get_bind())
    indexed = {INDEX} if inspector is None else {str(i["name"]) for i in inspector.get_indexes(TABLE)}
    if INDEX in indexed:
        op.drop_index(INDEX, table_name=TABLE)
    found = (
        {DEADLINE_COLUMN} if inspector is None else {c["name"] for c in inspector.get_columns(TABLE)}
    )
    if DEADLINE_COLUMN in found and offline:
        op.drop_column(TABLE, DEADLINE_COLUMN)
    elif DEADLINE_COLUMN in found:
        with op.batch_alter_table(TABLE) as table:  # SQLite drops a column by copying
            table.drop_column(DEADLINE_COLUMN)
