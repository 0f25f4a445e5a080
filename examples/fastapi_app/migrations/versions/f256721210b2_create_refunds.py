"""create refunds

Revision ID: f256721210b2
Revises:
Create Date: 2026-11-27 18:14:43.898685

Made with ``alembic revision --autogenerate -m "create refunds" --head=base
--branch-label=app --version-path=migrations/versions``: the first revision of the app's
own branch, beside the library's.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f256721210b2"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("app",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("customer", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", name="uq_refunds_order_id"),
    )


def downgrade() -> None:
    op.drop_table("refunds")
