"""InMemoryPersistence: encoded records in a dict, for tests and single-process use."""

from __future__ import annotations

import builtins
import threading
from datetime import datetime

from ._base import Record, RecordPersistence, version_conflict
from ._serializers import Serializer
from ._snapshot import StoredSnapshotInfo, utc_now

__all__ = ["InMemoryPersistence"]


class InMemoryPersistence(RecordPersistence):
    """Keeps encoded snapshots in memory, so a loaded snapshot is always a fresh copy.

    Thread-safe; nothing survives the process.
    """

    def __init__(self, *, serializer: Serializer | None = None) -> None:
        super().__init__(serializer)
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None
    ) -> tuple[int, datetime]:
        with self._lock:
            now = utc_now()
            current = self._records.get(workflow_id)
            stored_version = 0 if current is None else current[1]
            if expected_version is not None and expected_version != stored_version:
                raise version_conflict(workflow_id, expected_version, stored_version)
            created_at = now if current is None else current[2]
            self._records[workflow_id] = (data, stored_version + 1, created_at, now)
            return stored_version + 1, now

    def _read(self, workflow_id: str) -> Record | None:
        return self._records.get(workflow_id)

    def _remove(self, workflow_id: str, expected_version: int | None) -> bool:
        with self._lock:
            if expected_version is not None:
                current = self._records.get(workflow_id)
                stored_version = 0 if current is None else current[1]
                if stored_version != expected_version:
                    raise version_conflict(workflow_id, expected_version, stored_version)
            return self._records.pop(workflow_id, None) is not None

    def _contains(self, workflow_id: str) -> bool:
        return workflow_id in self._records

    def _infos(
        self, updated_before: datetime | None, limit: int | None
    ) -> builtins.list[StoredSnapshotInfo]:
        with self._lock:
            items = list(self._records.items())
        infos = [
            StoredSnapshotInfo(wid, created, updated, version)
            for wid, (_, version, created, updated) in items
            if updated_before is None or updated < updated_before
        ]
        infos.sort(key=lambda i: (i.updated_at, i.workflow_id), reverse=True)
        return infos if limit is None else infos[:limit]

    def _remove_older_than(self, cutoff: datetime) -> int:
        with self._lock:
            old = [wid for wid, record in self._records.items() if record[3] < cutoff]
            for wid in old:
                del self._records[wid]
            return len(old)
