"""The persistence interface: what every backend implements."""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict, Unpack

if TYPE_CHECKING:
    from workflow_persistence._serialization.serializers import Serializer

    from ._snapshot import StoredSnapshotInfo, WorkflowSnapshot

__all__ = ["AsyncPersistence", "ListFilters", "Persistence"]


class ListFilters(TypedDict, total=False):
    """The keyword arguments of ``list``, on every backend, sync or async."""

    status: str | Collection[str] | None
    workflow_name: str | Collection[str] | None
    metadata: Mapping[str, str | int | bool] | None
    updated_before: datetime | None
    updated_after: datetime | None
    deadline_before: datetime | None
    limit: int | None
    cursor: StoredSnapshotInfo | None


class Persistence(ABC):
    """Stores workflow snapshots by workflow id. Implementations are thread-safe.

    ``save`` is an upsert that returns the new version (1 for a new record, +1 on each
    save); with ``expected_version=N`` it writes only if the stored version is N (N == 0:
    only if nothing is stored), atomically, else raises ConflictError and changes nothing.
    """

    serializer: Serializer

    @abstractmethod
    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        """Create or replace the snapshot's record; return its new version."""

    @abstractmethod
    def load(self, workflow_id: str) -> WorkflowSnapshot:
        """Return the stored snapshot; WorkflowNotFoundError if there is none."""

    @abstractmethod
    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        """Remove the record; True if there was one.

        With ``expected_version=N`` it deletes only if the stored version is N (0: only if
        nothing is stored, which deletes nothing), atomically, else raises ConflictError
        and changes nothing.
        """

    @abstractmethod
    def exists(self, workflow_id: str) -> bool:
        """True if a record is stored under ``workflow_id``."""

    @abstractmethod
    def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        """Stored records, most recently updated first, without decoding their data.

        ``status`` and ``workflow_name`` take one value or several; ``metadata`` keeps
        records whose metadata has all the given top-level keys with exactly these
        values (str, int or bool). ``updated_before``/``updated_after`` are strict bounds.
        ``deadline_before`` keeps the runs whose pending question has a deadline before
        it (given now: the overdue ones).
        Records that have expired are never listed. To page, pass the last record of a
        page as ``cursor`` to get the next one: records sharing an ``updated_at`` are
        neither skipped nor repeated.
        """

    @abstractmethod
    def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        """Delete every expired record and, when ``older_than`` is given (an age or an
        aware datetime), the records not updated since then, only those whose status is
        in ``status`` when that is given.

        Returns how many records were removed.
        """


class AsyncPersistence(ABC):
    """The six methods of :class:`Persistence` as coroutines, for code on an event loop.

    The promises are those of :class:`Persistence`; the sync and async backends of one
    kind read and write the same records. Implementations are safe to share between
    tasks (and, where the backend allows, between event loops in different threads).
    """

    serializer: Serializer

    @abstractmethod
    async def save(
        self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None
    ) -> int:
        """Create or replace the snapshot's record; return its new version."""

    @abstractmethod
    async def load(self, workflow_id: str) -> WorkflowSnapshot:
        """Return the stored snapshot; WorkflowNotFoundError if there is none."""

    @abstractmethod
    async def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        """Remove the record; True if there was one (see :meth:`Persistence.delete`)."""

    @abstractmethod
    async def exists(self, workflow_id: str) -> bool:
        """True if a record is stored under ``workflow_id``."""

    @abstractmethod
    async def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        """Stored records, most recently updated first (see :meth:`Persistence.list`)."""

    @abstractmethod
    async def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        """Delete expired and old records (see :meth:`Persistence.prune`); return the count."""
