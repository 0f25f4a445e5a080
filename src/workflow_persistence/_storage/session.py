"""Persistence inside the caller's Session and transaction, sync and async.

A save here commits or rolls back with the app's own rows ("create the refund and start
its approval" in one transaction). Both classes are the repository's code: the async one
runs the sync one through ``AsyncSession.run_sync``, so there is one copy of the logic.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session

from workflow_persistence._serialization.columns import SnapshotColumns
from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo
from workflow_persistence._telemetry import database_attributes
from workflow_persistence.models import WorkflowInterrupt, WorkflowInterruptMixin
from workflow_persistence.repository import WorkflowInterruptRepository, run_synced

from .base import ListQuery, PruneQuery, Record, RecordPersistence
from .offloaded import _Offloaded

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AsyncSessionPersistence", "SessionPersistence"]

T = TypeVar("T")


class SessionPersistence(RecordPersistence):
    """A :class:`Persistence` that works inside ``session``'s current transaction.

    It never commits or rolls back: what it writes becomes visible to others when the
    caller commits, and vanishes if the caller rolls back. Concurrency rests on the
    database: of two transactions that save the same run with the same
    ``expected_version``, the second waits on the first's row lock (on SQLite, on the
    database's write lock, up to its busy timeout) and gets ConflictError once the first
    commits, or StorageUnavailableError if the wait outlasts the database's lock timeout.

    A failed statement raises the library's errors (StorageUnavailableError for a lost
    connection, the driver's error as ``__cause__``). On PostgreSQL the caller's
    transaction is then aborted and must be rolled back; a ConflictError is no failed
    statement and leaves it usable. Like its Session, use it from one thread at a time.
    ``model`` may be a host app's class built on ``WorkflowInterruptMixin``.
    """

    def __init__(
        self, session: Session, *, serializer: Serializer | None = None,
        model: type[WorkflowInterruptMixin] = WorkflowInterrupt,
    ) -> None:
        super().__init__(serializer)
        self.session = session
        self.repository: WorkflowInterruptRepository[Any] = WorkflowInterruptRepository(
            session, model
        )

    def _telemetry_attributes(self) -> dict[str, str]:
        return database_attributes(self.session.get_bind().dialect, self.repository._table)

    def __repr__(self) -> str:
        return f"<SessionPersistence {self.session!r} table={self.repository._table.name!r}>"

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None, columns: SnapshotColumns
    ) -> tuple[int, datetime]:
        return self.repository._save(workflow_id, data, expected_version, columns)

    def _read(self, workflow_id: str) -> Record | None:
        return self.repository._record(workflow_id)

    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        return self.repository.delete(workflow_id, expected_version=expected_version)

    def _contains(self, workflow_id: str, now: datetime) -> bool:
        return self.repository.exists(workflow_id)

    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        return self.repository._infos(query)

    def _prune(self, query: PruneQuery) -> int:
        return self.repository._prune(query)


class AsyncSessionPersistence(_Offloaded):
    """:class:`SessionPersistence` for an ``AsyncSession``: the six methods as coroutines,
    inside the session's current transaction, never committing.

    Works on SQLAlchemy's async drivers (``postgresql+psycopg``, ``mysql+aiomysql``,
    ``sqlite+aiosqlite``); records are those the sync backends read and write. ``.sync``
    is the :class:`SessionPersistence` on the session's ``sync_session`` that does the
    work. Like its AsyncSession, use it from one task at a time.
    """

    sync: SessionPersistence

    def __init__(
        self, async_session: AsyncSession, *, serializer: Serializer | None = None,
        model: type[WorkflowInterruptMixin] = WorkflowInterrupt,
    ) -> None:
        self.async_session = async_session
        super().__init__(
            SessionPersistence(async_session.sync_session, serializer=serializer, model=model)
        )

    async def _call(self, call: Callable[[], T]) -> T:
        return await run_synced(self.async_session, call)
