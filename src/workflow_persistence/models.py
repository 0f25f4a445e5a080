"""The ``workflow_interrupts`` table as a declarative model, and a mixin for host apps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, MetaData, String, Table, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column

from workflow_persistence._sql.autogenerate import leave_version_table_alone

from .types import BinaryData, JsonData, UTCDateTime, WorkflowIdType

__all__ = ["Base", "WorkflowInterrupt", "WorkflowInterruptMixin", "metadata"]

TABLE_NAME = "workflow_interrupts"
#: Where ``workflow-persistence migrate`` and ``DatabasePersistence`` record the revision.
VERSION_TABLE = "workflow_persistence_alembic_version"


def updated_at_index(table_name: str) -> Index:
    """The index on ``updated_at``, named explicitly so any naming convention agrees."""
    return Index(f"ix_{table_name}_updated_at", "updated_at")


#: The indexes every snapshot table carries: name suffix and columns. Named explicitly
#: (``ix_<table>_<suffix>``) so model and migrations agree under any naming convention.
INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("updated_at", ("updated_at",)),
    ("status_updated_at", ("status", "updated_at")),  # "what waits", newest first
    ("expires_at", ("expires_at",)),  # prune of expired records
    ("deadline", ("deadline",)),  # the overdue questions, for expire_due
)


class WorkflowInterruptMixin:
    """The columns and index of the snapshot table, for a host app's own ``Base``.

    ::

        class Interrupt(WorkflowInterruptMixin, Base):
            __tablename__ = "interrupts"
            __table_args__ = {"schema": "app"}   # optional, the index stays

    The ``updated_at`` index (``ix_<table>_updated_at``) is added to the mapped table,
    whatever ``__table_args__`` the host gives, unless the table already indexes
    ``updated_at`` on its own.
    """

    workflow_id: Mapped[str] = mapped_column(WorkflowIdType(), primary_key=True)
    data: Mapped[bytes] = mapped_column(BinaryData, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # Queryable copies of what the snapshot in ``data`` holds (revision wfp_0002).
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    # Compared by exact code points, like ids (a binary collation on MySQL/MariaDB).
    workflow_name: Mapped[str | None] = mapped_column(WorkflowIdType(), nullable=True)
    current_node: Mapped[str | None] = mapped_column(WorkflowIdType(), nullable=True)
    interrupt: Mapped[Any] = mapped_column(JsonData(), nullable=True)
    run_metadata: Mapped[Any] = mapped_column(JsonData(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When the pending question is due for its default answer (revision wfp_0003).
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @staticmethod
    def table_args(table_name: str, **options: Any) -> tuple[Any, ...]:
        """``__table_args__`` with the ``updated_at`` index plus table ``options``.

        Kept for existing models; a plain dict of options does the same now.
        """
        return (updated_at_index(table_name), options)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} workflow_id={self.workflow_id!r} version={self.version}"
            f" updated_at={self.updated_at}>"
        )


def _has_index_on(table: Table, columns: tuple[str, ...]) -> bool:
    """Whether the table already has an index on exactly ``columns`` (any name)."""
    wanted = [table.c[name] for name in columns]
    return any(list(index.expressions) == wanted for index in table.indexes)


@event.listens_for(WorkflowInterruptMixin, "after_mapper_constructed", propagate=True)
def _add_indexes(mapper: Mapper[Any], _class: type[Any]) -> None:
    """Add the snapshot table's indexes to every table mapped on the mixin.

    They cannot live in the mixin's ``__table_args__``: a host's own ``__table_args__``
    (``{"schema": "app"}``) replaces them, indexes and all. The table exists once the
    mapper does, so the indexes are attached to it here instead.
    """
    table = mapper.local_table
    if not isinstance(table, Table) or "updated_at" not in table.c:
        return  # mapped to a join or select, or a subclass table of joined inheritance
    for suffix, columns in INDEXES:
        if all(name in table.c for name in columns) and not _has_index_on(table, columns):
            Index(f"ix_{table.name}_{suffix}", *(table.c[name] for name in columns))


class Base(DeclarativeBase):
    """The library's own declarative base; its metadata holds only our table."""

    metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})


class WorkflowInterrupt(WorkflowInterruptMixin, Base):
    """One stored workflow snapshot: encoded ``data`` plus its version and timestamps."""

    __tablename__ = TABLE_NAME


#: The MetaData holding ``workflow_interrupts``, for a host app's ``target_metadata``.
metadata = Base.metadata
# A host listing it also owns our version table, as far as its autogenerate is concerned.
leave_version_table_alone(metadata, VERSION_TABLE)
