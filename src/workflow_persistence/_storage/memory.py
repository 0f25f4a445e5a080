"""InMemoryPersistence: encoded records in a dict, for tests and single-process use."""

from __future__ import annotations

import builtins
import json
import threading
from dataclasses import dataclass
from datetime import datetime

from workflow_persistence._serialization.columns import SnapshotColumns
from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo, utc_now

from .base import ListQuery, PruneQuery, Record, RecordPersistence, is_expired, version_conflict

__all__ = ["InMemoryPersistence"]


@dataclass(frozen=True, slots=True)
class _Stored:
    record: Record
    columns: SnapshotColumns

    def info(self, workflow_id: str) -> StoredSnapshotInfo:
        _, version, created_at, updated_at, expires_at = self.record
        c = self.columns
        return StoredSnapshotInfo(
            workflow_id,
            created_at,
            updated_at,
            version,
            status=c.status,
            workflow_name=c.workflow_name,
            current_node=c.current_node,
            interrupt=None if c.interrupt is None else json.loads(c.interrupt),
            metadata=json.loads(c.run_metadata),
            expires_at=expires_at,
            deadline=c.deadline,
        )


class InMemoryPersistence(RecordPersistence):
    """Keeps encoded snapshots in memory, so a loaded snapshot is always a fresh copy.

    Thread-safe; nothing survives the process.
    """

    _backend_name = "memory"

    def __init__(self, *, serializer: Serializer | None = None) -> None:
        super().__init__(serializer)
        self._records: dict[str, _Stored] = {}
        self._lock = threading.Lock()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
    def _live(self, workflow_id: str, now: datetime) -> _Stored | None:
        stored = self._records.get(workflow_id)
        if stored is None or is_expired(stored.record[4], now):
            return None
        return stored

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None, columns: SnapshotColumns
    ) -> tuple[int, datetime]:
        with self._lock:
            now = utc_now()
            current = self._live(workflow_id, now)
            stored_version = 0 if current is None else current.record[1]
            if expected_version is not None and expected_version != stored_version:
                raise version_conflict(workflow_id, expected_version, stored_version)
            created_at = now if current is None else current.record[2]
            record = (data, stored_version + 1, created_at, now, columns.expires_at)
            self._records[workflow_id] = _Stored(record, columns)
            return stored_version + 1, now

    def _read(self, workflow_id: str) -> Record | None:
        stored = self._records.get(workflow_id)
        return None if stored is None else stored.record

    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        with self._lock:
            current = self._live(workflow_id, now)
            if expected_version is not None:
                stored_version = 0 if current is None else current.record[1]
                if stored_version != expected_version:
                    raise version_conflict(workflow_id, expected_version, stored_version)
            if current is None:
                return False
            del self._records[workflow_id]
            return True

    def _contains(self, workflow_id: str, now: datetime) -> bool:
        return self._live(workflow_id, now) is not None

    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        with self._lock:
            items = list(self._records.items())
        return query.select([stored.info(wid) for wid, stored in items])

    def _prune(self, query: PruneQuery) -> int:
        with self._lock:
            doomed = [
                wid
                for wid, stored in self._records.items()
                if query.matches(stored.record[3], stored.columns.status, stored.record[4])
            ]
            for wid in doomed:
                del self._records[wid]
            return len(doomed)
