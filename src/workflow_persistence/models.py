"""The ``workflow_interrupts`` table as a declarative model, and a mixin for host apps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from .types import BinaryData, UTCDateTime, WorkflowIdType

__all__ = ["Base", "WorkflowInterrupt", "WorkflowInterruptMixin", "metadata"]

TABLE_NAME = "workflow_interrupts"


def updated_at_index(table_name: str) -> Index:
    """The index on ``updated_at``, named explicitly so any naming convention agrees."""
    return Index(f"ix_{table_name}_updated_at", "updated_at")


class WorkflowInterruptMixin:
    """The columns and index of the snapshot table, for a host app's own ``Base``.

    ::

        class Interrupt(WorkflowInterruptMixin, Base):
            __tablename__ = "interrupts"

    To add table options such as a schema, keep the index::

        __table_args__ = WorkflowInterruptMixin.table_args("interrupts", schema="app")
    """

    workflow_id: Mapped[str] = mapped_column(WorkflowIdType(), primary_key=True)
    data: Mapped[bytes] = mapped_column(BinaryData, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> Any:
        return (updated_at_index(cls.__tablename__),)  # type: ignore[attr-defined]

    @staticmethod
    def table_args(table_name: str, **options: Any) -> tuple[Any, ...]:
        """``__table_args__`` with the ``updated_at`` index plus table ``options``."""
        return (updated_at_index(table_name), options)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} workflow_id={self.workflow_id!r} version={self.version}"
            f" updated_at={self.updated_at}>"
        )


class Base(DeclarativeBase):
    """The library's own declarative base; its metadata holds only our table."""

    metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})


class WorkflowInterrupt(WorkflowInterruptMixin, Base):
    """One stored workflow snapshot: encoded ``data`` plus its version and timestamps."""

    __tablename__ = TABLE_NAME


#: The MetaData holding ``workflow_interrupts``, for a host app's ``target_metadata``.
metadata = Base.metadata
