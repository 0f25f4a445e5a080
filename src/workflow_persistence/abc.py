"""The persistence interface: what every backend implements."""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._serializers import Serializer
    from ._snapshot import StoredSnapshotInfo, WorkflowSnapshot

__all__ = ["Persistence"]


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
    def list(
        self, *, updated_before: datetime | None = None, limit: int | None = None
    ) -> builtins.list[StoredSnapshotInfo]:
        """Stored records, most recently updated first, without decoding their data.

        ``updated_before`` keeps records last updated strictly before it, so the
        ``updated_at`` of the last entry of one page is the cursor of the next.
        """

    @abstractmethod
    def prune(self, older_than: timedelta | datetime) -> int:
        """Delete records not updated since ``older_than`` (an age, or an aware datetime).

        Returns how many records were removed.
        """
