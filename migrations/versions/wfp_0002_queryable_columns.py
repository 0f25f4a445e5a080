"""TEMP stand-in for the queryable columns (dropped at merge for the real wfp_0002).

Revision ID: wfp_0002
Revises: wfp_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from workflow_persistence.types import JsonData, UTCDateTime, WorkflowIdType

revision: str = "wfp_0002"
down_revision: str | None = "wfp_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "workflow_interrupts"


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="unknown"))
        batch.add_column(sa.Column("workflow_name", WorkflowIdType(), nullable=True))
        batch.add_column(sa.Column("current_node", WorkflowIdType(), nullable=True))
        batch.add_column(sa.Column("interrupt", JsonData, nullable=True))
        batch.add_column(sa.Column("run_metadata", JsonData, nullable=True))
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table(TABLE) as batch:
        batch.alter_column("status", server_default=None, existing_type=sa.String(16))
    op.create_index("ix_workflow_interrupts_status_updated_at", TABLE, ["status", "updated_at"])
    op.create_index("ix_workflow_interrupts_expires_at", TABLE, ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_interrupts_expires_at", table_name=TABLE)
    op.drop_index("ix_workflow_interrupts_status_updated_at", table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        for name in ("expires_at", "run_metadata", "interrupt", "current_node", "workflow_name", "status"):
            batch.drop_column(name)
