"""The host app's own models: its ``users`` table, and a snapshot table of its own.

``HostInterrupt`` is built on ``WorkflowInterruptMixin`` under the host's own table name
and naming convention, next to the library's ``workflow_interrupts`` (which the host's
Alembic environment leaves to the library's migrations). ``HostArchivedInterrupt`` gives
its own ``__table_args__`` dict, which must not cost it the mixin's index.
"""

from __future__ import annotations

from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workflow_persistence import WorkflowInterruptMixin

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class HostBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(HostBase):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(100), index=True)


class HostInterrupt(WorkflowInterruptMixin, HostBase):
    """The host's own snapshot table, under its own name."""

    __tablename__ = "host_interrupts"


class HostArchivedInterrupt(WorkflowInterruptMixin, HostBase):
    """Table options of the host's own; the ``updated_at`` index stays."""

    __tablename__ = "host_archived_interrupts"
    __table_args__ = {"comment": "finished runs kept for audit"}  # noqa: RUF012
