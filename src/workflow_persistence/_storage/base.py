"""What the three backends share: argument checks and serialization around byte records.

A backend subclasses :class:`RecordPersistence` and stores only bytes plus the record's
version and timestamps; every check that can fail happens here, before any I/O.
"""

from __future__ import annotations

import builtins
import os
import re
import weakref
from abc import abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Unpack

from workflow_persistence import _telemetry as telemetry
from workflow_persistence._ids import check_workflow_id
from workflow_persistence._serialization.columns import SnapshotColumns, columns_of
from workflow_persistence._serialization.serializers import JsonSerializer, Serializer
from workflow_persistence._snapshot import (
    SNAPSHOT_STATUSES,
    UNKNOWN_STATUS,
    StoredSnapshotInfo,
    WorkflowSnapshot,
    utc_now,
)
from workflow_persistence.abc import ListFilters, Persistence
from workflow_persistence.errors import (
    ConflictError,
    CorruptSnapshotError,
    InvalidArgumentError,
    WorkflowNotFoundError,
)

#: ``(data, version, created_at, updated_at, expires_at)`` of one stored record.
Record = tuple[bytes, int, datetime, datetime, datetime | None]
#: Metadata keys a list may filter on: never spliced into SQL, and checked all the same.
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Statuses a list or prune may ask for.
LISTED_STATUSES = SNAPSHOT_STATUSES | {UNKNOWN_STATUS}
MetadataValue = str | int | bool


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What ``list`` asked for, checked; every backend filters by exactly this.

    Records are listed newest first, ties by ``workflow_id`` descending; ``cursor`` is
    the ``(updated_at, workflow_id)`` of the last record of the previous page. Records
    whose ``expires_at`` is at or before ``now`` are never listed.
    """

    statuses: tuple[str, ...] | None
    workflow_names: tuple[str, ...] | None
    metadata: tuple[tuple[str, MetadataValue], ...]
    updated_before: datetime | None
    updated_after: datetime | None
    deadline_before: datetime | None
    cursor: tuple[datetime, str] | None
    limit: int | None
    now: datetime

    @classmethod
    def checked(
        cls,
        *,
        status: object = None,
        workflow_name: object = None,
        metadata: object = None,
        updated_before: object = None,
        updated_after: object = None,
        deadline_before: object = None,
        limit: object = None,
        cursor: object = None,
    ) -> ListQuery:
        """The query of ``list``'s arguments, each checked before any I/O."""
        return cls(
            statuses=check_names(status, "status", LISTED_STATUSES),
            workflow_names=check_names(workflow_name, "workflow_name"),
            metadata=check_metadata_filter(metadata),
            updated_before=None
            if updated_before is None
            else check_aware(updated_before, "updated_before"),
            updated_after=None
            if updated_after is None
            else check_aware(updated_after, "updated_after"),
            deadline_before=None
            if deadline_before is None
            else check_aware(deadline_before, "deadline_before"),
            cursor=check_cursor(cursor),
            limit=check_limit(limit),
            now=utc_now(),
        )

    def matches(self, info: StoredSnapshotInfo) -> bool:
        """Whether ``info`` is listed (for backends that filter in Python)."""
        if info.expires_at is not None and info.expires_at <= self.now:
            return False
        if self.statuses is not None and info.status not in self.statuses:
            return False
        if self.workflow_names is not None and info.workflow_name not in self.workflow_names:
            return False
        if self.updated_before is not None and not info.updated_at < self.updated_before:
            return False
        if self.updated_after is not None and not info.updated_at > self.updated_after:
            return False
        if self.cursor is not None and not (info.updated_at, info.workflow_id) < self.cursor:
            return False
        if self.deadline_before is not None and not (
            info.deadline is not None and info.deadline < self.deadline_before
        ):
            return False
        return metadata_matches(info.metadata, self.metadata)

    def select(self, infos: builtins.list[StoredSnapshotInfo]) -> builtins.list[StoredSnapshotInfo]:
        """The matching ``infos``, newest first, cut to ``limit``."""
        kept = [info for info in infos if self.matches(info)]
        kept.sort(key=lambda i: (i.updated_at, i.workflow_id), reverse=True)
        return kept if self.limit is None else kept[: self.limit]


@dataclass(frozen=True, slots=True)
class PruneQuery:
    """What ``prune`` deletes: every expired record, and those not updated since
    ``cutoff`` (when given) whose status is in ``statuses`` (when given)."""

    cutoff: datetime | None
    statuses: tuple[str, ...] | None
    now: datetime

    def matches(self, updated_at: datetime, status: str, expires_at: datetime | None) -> bool:
        if expires_at is not None and expires_at <= self.now:
            return True
        if self.cutoff is None or not updated_at < self.cutoff:
            return False
        return self.statuses is None or status in self.statuses


def metadata_matches(
    metadata: Mapping[str, Any], wanted: Iterable[tuple[str, MetadataValue]]
) -> bool:
    """Whether ``metadata`` has every wanted key with exactly that value: True is not 1,
    and text compares by code points."""
    for key, value in wanted:
        if key not in metadata:
            return False
        found = metadata[key]
        if type(found) is not type(value) or found != value:
            return False
    return True


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


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


def check_names(
    value: object, name: str, allowed: Collection[str] | None = None
) -> tuple[str, ...] | None:
    """A str or a collection of str, as a tuple; None stays None (no filter)."""
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Collection) or isinstance(items, Mapping | bytes):
        raise InvalidArgumentError(f"{name} must be a str or a collection of str, not {value!r}")
    names = tuple(items)
    for item in names:
        if type(item) is not str:
            raise InvalidArgumentError(f"{name} must hold str values, not {item!r}")
        if allowed is not None and item not in allowed:
            raise InvalidArgumentError(
                f"{name} {item!r} is not one of {', '.join(sorted(allowed))}"
            )
    return names


def check_metadata_filter(metadata: object) -> tuple[tuple[str, MetadataValue], ...]:
    if metadata is None:
        return ()
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a dict, not {type(metadata).__name__}")
    pairs: builtins.list[tuple[str, MetadataValue]] = []
    for key, value in metadata.items():
        if type(key) is not str or not METADATA_KEY.fullmatch(key):
            raise InvalidArgumentError(
                f"metadata key {key!r} is not allowed: keys are 1 to 64 letters, digits,"
                " '_', '.' or '-'"
            )
        if type(value) not in (str, int, bool):
            raise InvalidArgumentError(
                f"metadata[{key!r}] must be a str, int or bool to filter on, not"
                f" {type(value).__name__}"
            )
        pairs.append((key, value))
    return tuple(pairs)


def check_cursor(cursor: object) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    if not isinstance(cursor, StoredSnapshotInfo):
        raise InvalidArgumentError(
            "cursor must be the last StoredSnapshotInfo of the previous page, not"
            f" {type(cursor).__name__}"
        )
    return cursor.updated_at, cursor.workflow_id


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
        self, workflow_id: str, data: bytes, expected_version: int | None, columns: SnapshotColumns
    ) -> tuple[int, datetime]:
        """Store ``data`` and ``columns`` atomically; return ``(new version, updated_at)``.

        Raise ConflictError on a failed compare-and-set. An expired record counts as
        absent: writing over it starts again at version 1 with a new ``created_at``.
        ``updated_at`` is taken when the write happens: under the lock for the file and
        memory backends, so a later version never carries an earlier time there; from the
        caller's clock just before the statement for the database (concurrent writers on
        several machines may disagree by their clocks' skew).
        """

    @abstractmethod
    def _read(self, workflow_id: str) -> Record | None: ...

    @abstractmethod
    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        """Delete the record (only at ``expected_version``, if given; else ConflictError).

        An expired record counts as absent: it is left for ``prune`` and False returned.
        """

    @abstractmethod
    def _contains(self, workflow_id: str, now: datetime) -> bool:
        """Whether a record that has not expired by ``now`` is stored."""

    @abstractmethod
    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        """The records ``query`` selects, most recently updated first."""

    @abstractmethod
    def _prune(self, query: PruneQuery) -> int:
        """Delete what ``query`` matches; return how many records were removed."""

    # -- the interface ------------------------------------------------------------------

    #: How spans and metrics name the backend (``workflow_persistence.backend``).
    _backend_name: ClassVar[str | None] = None

    def _telemetry_attributes(self) -> dict[str, str]:
        """What this backend's spans and metrics say of it (``workflow_persistence.backend``
        and, for a database, OpenTelemetry's ``db.*`` attributes)."""
        return {telemetry.BACKEND: self._backend_name or type(self).__name__}

    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        workflow_id = check_workflow_id(snapshot.workflow_id)
        expected = check_expected_version(expected_version)
        with telemetry.storage_call(self, "save", workflow_id) as call:
            data = self.serializer.dumps(snapshot)
            version, updated_at = self._write(workflow_id, data, expected, columns_of(snapshot))
            snapshot.version = version
            snapshot.updated_at = updated_at
            if version == 1:
                snapshot.created_at = updated_at
            call.stored(snapshot, len(data))
            return version

    def load(self, workflow_id: str) -> WorkflowSnapshot:
        workflow_id = check_workflow_id(workflow_id)
        with telemetry.storage_call(self, "load", workflow_id) as call:
            record = self._read(workflow_id)
            if record is None:
                raise WorkflowNotFoundError(workflow_id)
            data, version, created_at, updated_at, expires_at = record
            if expires_at is not None and expires_at <= utc_now():
                raise WorkflowNotFoundError(workflow_id)
            snapshot = self.serializer.loads(data)
            if snapshot.workflow_id != workflow_id:
                raise CorruptSnapshotError(
                    f"the record stored under {workflow_id!r} holds the snapshot of"
                    f" {snapshot.workflow_id!r}"
                )
            snapshot.version = version
            snapshot.created_at = created_at
            snapshot.updated_at = updated_at
            call.stored(snapshot, len(data))
            return snapshot

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        expected = check_expected_version(expected_version)
        with telemetry.storage_call(self, "delete", workflow_id) as call:
            deleted = self._remove(workflow_id, expected, utc_now())
            call.counted(int(deleted))
            return deleted

    def exists(self, workflow_id: str) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        with telemetry.storage_call(self, "exists", workflow_id) as call:
            found = self._contains(workflow_id, utc_now())
            call.counted(int(found))
            return found

    def list(self, **filters: Unpack[ListFilters]) -> builtins.list[StoredSnapshotInfo]:
        query = ListQuery.checked(**filters)
        with telemetry.storage_call(self, "list") as call:
            infos = self._infos(query)
            call.counted(len(infos))
            return infos

    def prune(
        self,
        older_than: timedelta | datetime | None = None,
        *,
        status: str | Collection[str] | None = None,
    ) -> int:
        query = PruneQuery(
            cutoff=None if older_than is None else prune_cutoff(older_than),
            statuses=check_names(status, "status", LISTED_STATUSES),
            now=utc_now(),
        )
        with telemetry.storage_call(self, "prune") as call:
            removed = self._prune(query)
            call.counted(removed)
            return removed
