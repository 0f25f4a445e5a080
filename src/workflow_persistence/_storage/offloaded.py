"""Async twins of backends whose work is local: the sync backend does it, off the loop.

Memory and file backends have no network to wait on, so their async twins are the sync
backend's own code behind coroutines, not a second copy of it. Memory calls take
microseconds under a lock and run on the loop; file calls wait on the disk (fsync), so
they run in a worker thread and never block the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from os import PathLike
from typing import TypeVar, Unpack

from workflow_persistence._serialization.serializers import Serializer
from workflow_persistence._snapshot import StoredSnapshotInfo, WorkflowSnapshot
from workflow_persistence.abc import AsyncPersistence, ListFilters, Persistence

from .file import DEFAULT_MAX_SIZE, FilePersistence
from .memory import InMemoryPersistence

__all__ = ["AsyncFilePersistence", "AsyncInMemoryPersistence"]

T = TypeVar("T")


class _Offloaded(AsyncPersistence):
    """Runs each call on the wrapped sync backend, in a worker thread when ``in_thread``."""

    _in_thread: bool

    def __init__(self, sync: Persistence) -> None:
        self.sync = sync
        self.serializer = sync.serializer

    async def _call(self, call: Callable[[], T]) -> T:
        if self._in_thread:
            return await asyncio.to_thread(call)
        return call()

    async def save(
        self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None
    ) -> int:
        return await self._call(lambda: self.sync.save(snapshot, expected_version=expected_version))

    async def load(self, workflow_id: str) -> WorkflowSnapshot:
        return await self._call(lambda: self.sync.load(workflow_id))

    async def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return await self._call(
            lambda: self.sync.delete(workflow_id, expected_version=expected_version)
        )

    async def exists(self, workflow_id: str) -> bool:
        return await self._call(lambda: self.sync.exists(workflow_id))

    async def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        return await self._call(
            lambda: self.sync.list(**filters)
        )

    async def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        return await self._call(lambda: self.sync.prune(older_than, status=status))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sync!r})"


class AsyncInMemoryPersistence(_Offloaded):
    """:class:`InMemoryPersistence` as coroutines; ``.sync`` is the same store, sync."""

    _in_thread = False
    sync: InMemoryPersistence

    def __init__(self, *, serializer: Serializer | None = None) -> None:
        super().__init__(InMemoryPersistence(serializer=serializer))


class AsyncFilePersistence(_Offloaded):
    """:class:`FilePersistence` as coroutines, each call in a worker thread.

    It reads and writes the same files as a ``FilePersistence`` on the same directory,
    with the same atomic replace and inter-process locking.
    """

    _in_thread = True
    sync: FilePersistence

    def __init__(
        self,
        directory: str | PathLike[str],
        *,
        serializer: Serializer | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__(FilePersistence(directory, serializer=serializer, max_size=max_size))
