"""What the three backends share: argument checks and serialization around byte records.

A backend subclasses :class:`RecordPersistence` and stores only bytes plus the record's
version and timestamps; every check that can fail happens here, before any I/O.
"""

from __future__ import annotations

import builtins
import os
import weakref
from abc import abstractmethod
from datetime import UTC, datetime, timedelta

from ._ids import check_workflow_id
from ._serializers import JsonSerializer, Serializer
from ._snapshot import StoredSnapshotInfo, WorkflowSnapshot, utc_now
from .abc import Persistence
from .errors import (
    ConflictError,
    CorruptSnapshotError,
    InvalidArgumentError,
    WorkflowNotFoundError,
)

#: ``(data, version, created_at, updated_at)`` of one stored record.
Record = tuple[bytes, int, datetime, datetime]


def check_expected_version(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if type(expected_version) is not int or expected_version < 0:
        raise InvalidArgumentError(
            "expected_version must be None or an int >= 0 (0: only if nothing is stored),"
            f" not {expected_version!r}"
        )
    return expected_version


def version_conflict(
    workflow_id: str, expected_version: int, stored_version: int | None
) -> ConflictError:
    """The ConflictError of a failed compare-and-set; ``stored_version`` None if unknown."""
    wanted = "no stored record" if expected_version == 0 else f"stored version {expected_version}"
    if stored_version is None:
        found = "the record has moved on or is missing"
    elif stored_version == 0:
        found = "nothing is stored"
    else:
        found = f"the stored version is {stored_version}"
    return ConflictError(
        f"workflow {workflow_id!r}: expected {wanted}, but {found}; nothing was written",
        workflow_id=workflow_id,
        expected_version=expected_version,
    )


def check_aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc)), not naive"
        )
    return value


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if type(limit) is not int or limit < 0:
        raise InvalidArgumentError(f"limit must be None or an int >= 0, not {limit!r}")
    return limit


def prune_cutoff(older_than: object) -> datetime:
    """The instant before which records are pruned."""
    if isinstance(older_than, timedelta):
        if older_than < timedelta(0):
            raise InvalidArgumentError("older_than must not be a negative age")
        try:
            return utc_now() - older_than
        except OverflowError:  # older than the calendar: nothing is that old
            return datetime(1, 1, 1, tzinfo=UTC)
    if isinstance(older_than, datetime):
        return check_aware(older_than, "older_than")
    raise InvalidArgumentError(
        f"older_than must be a timedelta or an aware datetime, not {type(older_than).__name__}"
    )


_forked_objects: weakref.WeakSet[RecordPersistence] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for persistence in list(_forked_objects):
        persistence._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RecordPersistence(Persistence):
    """A persistence that keeps each snapshot as one encoded record."""

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.serializer = JsonSerializer() if serializer is None else serializer
        _forked_objects.add(self)

    def _after_fork(self) -> None:
        """Renew in-process locks in a forked child: a lock another thread held at the
        moment of the fork would never be released there."""

    # -- what a backend implements ------------------------------------------------------

    @abstractmethod
    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None
    ) -> tuple[int, datetime]:
        """Store ``data`` atomically; return ``(new version, updated_at)``.

        Raise ConflictError on a failed compare-and-set. ``updated_at`` is taken when the
        write happens: under the lock for the file and memory backends, so a later version
        never carries an earlier time there; from the caller's clock just before the
        statement for the database (concurrent writers on several machines may disagree by
        their clocks' skew).
        """

    @abstractmethod
    def _read(self, workflow_id: str) -> Record | None: ...

    @abstractmethod
    def _remove(self, workflow_id: str, expected_version: int | None) -> bool:
        """Delete the record (only at ``expected_version``, if given; else ConflictError)."""

    @abstractmethod
    def _contains(self, workflow_id: str) -> bool: ...

    @abstractmethod
    def _infos(
        self, updated_before: datetime | None, limit: int | None
    ) -> builtins.list[StoredSnapshotInfo]:
        """Records, most recently updated first."""

    @abstractmethod
    def _remove_older_than(self, cutoff: datetime) -> int: ...

    # -- the interface ------------------------------------------------------------------

    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        workflow_id = check_workflow_id(snapshot.workflow_id)
        expected = check_expected_version(expected_version)
        data = self.serializer.dumps(snapshot)
        version, updated_at = self._write(workflow_id, data, expected)
        snapshot.version = version
        snapshot.updated_at = updated_at
        if version == 1:
            snapshot.created_at = updated_at
        return version

    def load(self, workflow_id: str) -> WorkflowSnapshot:
        workflow_id = check_workflow_id(workflow_id)
        record = self._read(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(workflow_id)
        data, version, created_at, updated_at = record
        snapshot = self.serializer.loads(data)
        if snapshot.workflow_id != workflow_id:
            raise CorruptSnapshotError(
                f"the record stored under {workflow_id!r} holds the snapshot of"
                f" {snapshot.workflow_id!r}"
            )
        snapshot.version = version
        snapshot.created_at = created_at
        snapshot.updated_at = updated_at
        return snapshot

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        return self._remove(workflow_id, check_expected_version(expected_version))

    def exists(self, workflow_id: str) -> bool:
        return self._contains(check_workflow_id(workflow_id))

    def list(
        self, *, updated_before: datetime | None = None, limit: int | None = None
    ) -> builtins.list[StoredSnapshotInfo]:
        before = None if updated_before is None else check_aware(updated_before, "updated_before")
        return self._infos(before, check_limit(limit))

    def prune(self, older_than: timedelta | datetime) -> int:
        return self._remove_older_than(prune_cutoff(older_than))
