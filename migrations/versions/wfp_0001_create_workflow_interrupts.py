"""Create the workflow_interrupts table.

Revision ID: wfp_0001
Revises:
Create Date: 2026-11-24

The table may already exist when this runs (made by DatabasePersistence through another
Alembic environment, or by the host app): then it is left as it is and only recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from workflow_persistence.types import BinaryData, UTCDateTime, WorkflowIdType

revision: str = "wfp_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("workflow_persistence",)
depends_on: str | Sequence[str] | None = None

TABLE = "workflow_interrupts"


def upgrade() -> None:
    if not context.is_offline_mode() and sa.inspect(op.get_bind()).has_table(TABLE):
        return
    op.create_table(
        TABLE,
        sa.Column("workflow_id", WorkflowIdType(), nullable=False),
        sa.Column("data", BinaryData, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", name="pk_workflow_interrupts"),
    )
    # A plain CREATE INDEX: it runs inside the migration's transaction on every database.
    op.create_index("ix_workflow_interrupts_updated_at", TABLE, ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_interrupts_updated_at", table_name=TABLE)
    op.drop_table(TABLE)
