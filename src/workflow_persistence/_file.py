"""FilePersistence: one file per workflow, replaced atomically.

Each file is ``<header line>\\n<encoded snapshot>``; the header (JSON) carries the id,
version and timestamps so ``list`` never decodes a snapshot. File names are derived from
a SHA-256 of the id, never from the id itself: no id can name a path outside the
directory, and ids that differ only in case stay apart on case-insensitive file systems.

Writers take an exclusive lock on ``<directory>/.lock`` (``flock``, so threads and
processes alike), which makes version checks atomic across processes; readers take no
lock, because a rename replaces a file in one step.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ._base import Record, RecordPersistence, version_conflict
from ._serializers import Serializer
from ._snapshot import StoredSnapshotInfo, utc_now
from .errors import CorruptSnapshotError, PayloadTooLargeError, StorageUnavailableError

__all__ = ["FilePersistence"]

_SUFFIX = ".wfp"
_TEMP_PREFIX = ".tmp-"
_LOCK_NAME = ".lock"
_MAGIC = b"wfp-file 1 "
#: Longest header line read; a valid one (255 escaped 4-byte characters) is ~3.2 KiB.
_MAX_HEADER = 64 * 1024
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]+")

try:  # POSIX
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _lock_fd(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]

    def _unlock_fd(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


def file_name(workflow_id: str) -> str:
    """The file a workflow is stored in: a readable slug plus the id's SHA-256."""
    digest = hashlib.sha256(workflow_id.encode("utf-8")).hexdigest()
    slug = _SLUG_UNSAFE.sub("-", workflow_id.lower()).strip("-")[:48]
    return f"{slug}~{digest}{_SUFFIX}" if slug else f"{digest}{_SUFFIX}"


class FilePersistence(RecordPersistence):
    """Stores each snapshot in its own file under ``directory`` (created if missing).

    Writes go to a temporary file that is fsynced and renamed over the old one, so a
    crash leaves the old or the new snapshot, never a torn one. Files and the directory
    are readable by the owner only.
    """

    def __init__(self, directory: str | os.PathLike[str], *, serializer: Serializer | None = None):
        super().__init__(serializer)
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot create the snapshot directory {str(self.directory)!r}: {exc}"
            ) from exc
        self._thread_lock = threading.Lock()
        with self._locked():
            self._sweep_temp_files()

    def _after_fork(self) -> None:
        self._thread_lock = threading.Lock()

    # -- locking ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive against every writer of this directory, in any thread or process."""
        with self._thread_lock:  # flock is per open file; this keeps threads orderly too
            try:
                fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StorageUnavailableError(
                    f"cannot lock the snapshot directory {str(self.directory)!r}: {exc}"
                ) from exc
            try:
                _lock_fd(fd)
                try:
                    yield
                finally:
                    _unlock_fd(fd)
            finally:
                os.close(fd)

    def _sweep_temp_files(self) -> None:
        # Writers hold the lock from creating a temp file to renaming it, so under the
        # lock every temp file is a leftover of a writer that died.
        for entry in _entries(self.directory):
            if entry.name.startswith(_TEMP_PREFIX):
                with contextlib.suppress(OSError):  # e.g. a directory of that name: not ours
                    os.unlink(entry.path)

    # -- records ------------------------------------------------------------------------

    def _path(self, workflow_id: str) -> Path:
        return self.directory / file_name(workflow_id)

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None
    ) -> tuple[int, datetime]:
        path = self._path(workflow_id)
        with self._locked():
            now = utc_now()
            try:
                current = _read_header(path, workflow_id)
            except CorruptSnapshotError as exc:
                raise CorruptSnapshotError(
                    f"cannot save {workflow_id!r} over a damaged snapshot file ({exc});"
                    " delete() removes it"
                ) from exc
            stored_version = 0 if current is None else current[0]
            if expected_version is not None and expected_version != stored_version:
                raise version_conflict(workflow_id, expected_version, stored_version)
            created_at = now if current is None else current[1]
            version = stored_version + 1
            header = _encode_header(workflow_id, version, created_at, now)
            self._replace(path, header, data)
            return version, now

    def _replace(self, path: Path, header: bytes, data: bytes) -> None:
        temp = path.with_name(f"{_TEMP_PREFIX}{os.getpid()}-{path.name}")
        try:
            # A leftover of that name (a dead writer with our pid) is removed, and the new
            # file is created exclusively: it is ours, 0o600, and never a symlink's target.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with open(fd, "wb", closefd=False) as out:
                    out.write(header)
                    out.write(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise PayloadTooLargeError(
                    f"no room to write the snapshot ({len(data)} bytes) to"
                    f" {str(self.directory)!r}: {exc.strerror}",
                    size=len(data),
                ) from exc
            raise StorageUnavailableError(f"cannot write {str(path)!r}: {exc}") from exc
        _fsync_directory(self.directory)

    def _read(self, workflow_id: str) -> Record | None:
        path = self._path(workflow_id)
        try:
            with open(path, "rb") as f:
                line = f.readline(_MAX_HEADER)
                stored_id, version, created_at, updated_at = _decode_header(line, path)
                if stored_id != workflow_id:  # a SHA-256 collision, or a file copied by hand
                    return None
                return f.read(), version, created_at, updated_at
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailableError(f"cannot read {str(path)!r}: {exc}") from exc

    def _remove(self, workflow_id: str, expected_version: int | None) -> bool:
        path = self._path(workflow_id)
        with self._locked():
            try:
                current = _read_header(path, workflow_id)
                damaged = False
            except CorruptSnapshotError:
                if expected_version is not None:
                    raise
                current, damaged = None, True  # deleting a damaged file is the way out
            if expected_version is not None:
                stored_version = 0 if current is None else current[0]
                if stored_version != expected_version:
                    raise version_conflict(workflow_id, expected_version, stored_version)
            if current is None and not damaged:
                return False
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StorageUnavailableError(f"cannot delete {str(path)!r}: {exc}") from exc
        _fsync_directory(self.directory)
        return True

    def _contains(self, workflow_id: str) -> bool:
        try:
            return _read_header(self._path(workflow_id), workflow_id) is not None
        except CorruptSnapshotError:
            return True  # something is stored under this id; load() reports the damage

    def _scan(self) -> Iterator[tuple[Path, StoredSnapshotInfo]]:
        for entry in _entries(self.directory):
            if not entry.name.endswith(_SUFFIX) or entry.name.startswith("."):
                continue
            info = _read_info(Path(entry.path))
            if info is not None:
                yield Path(entry.path), info

    def _infos(
        self, updated_before: datetime | None, limit: int | None
    ) -> builtins.list[StoredSnapshotInfo]:
        infos = [
            info
            for _, info in self._scan()
            if updated_before is None or info.updated_at < updated_before
        ]
        infos.sort(key=lambda i: (i.updated_at, i.workflow_id), reverse=True)
        return infos if limit is None else infos[:limit]

    def _remove_older_than(self, cutoff: datetime) -> int:
        removed = 0
        with self._locked():
            for path, info in list(self._scan()):
                if info.updated_at < cutoff:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise StorageUnavailableError(
                            f"cannot delete {str(path)!r}: {exc}"
                        ) from exc
                    removed += 1
        if removed:
            _fsync_directory(self.directory)
        return removed


# -- the file format ----------------------------------------------------------------------


def _encode_header(workflow_id: str, version: int, created: datetime, updated: datetime) -> bytes:
    fields = {
        "id": workflow_id,
        "version": version,
        "created_at": created.isoformat(),
        "updated_at": updated.isoformat(),
    }
    return _MAGIC + json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n"


def _decode_header(line: bytes, path: Path) -> tuple[str, int, datetime, datetime]:
    if not line.startswith(_MAGIC):
        raise CorruptSnapshotError(f"{str(path)!r} is not a snapshot file of this library")
    try:
        fields = json.loads(line[len(_MAGIC) :])
        stored_id = fields["id"]
        version = fields["version"]
        created = datetime.fromisoformat(fields["created_at"])
        updated = datetime.fromisoformat(fields["updated_at"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptSnapshotError(f"damaged header in {str(path)!r}: {exc}") from exc
    if (
        not isinstance(stored_id, str)
        or type(version) is not int
        or version < 1
        or created.utcoffset() is None
        or updated.utcoffset() is None
    ):
        raise CorruptSnapshotError(f"damaged header in {str(path)!r}: unexpected field values")
    return stored_id, version, created, updated


def _first_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.readline(_MAX_HEADER)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageUnavailableError(f"cannot read {str(path)!r}: {exc}") from exc


def _read_header(path: Path, workflow_id: str) -> tuple[int, datetime] | None:
    line = _first_line(path)
    if line is None:
        return None
    stored_id, version, created, _ = _decode_header(line, path)
    return (version, created) if stored_id == workflow_id else None


def _read_info(path: Path) -> StoredSnapshotInfo | None:
    try:
        line = _first_line(path)
    except StorageUnavailableError:
        return None  # not a readable file (a directory named like one, say): skip it
    if line is None:
        return None
    try:
        stored_id, version, created, updated = _decode_header(line, path)
    except CorruptSnapshotError:
        return None  # list what can be listed; load() reports the damage
    if path.name != file_name(stored_id):
        return None  # copied or renamed by hand: load() would not find it under that id
    return StoredSnapshotInfo(stored_id, created, updated, version)


def _entries(directory: Path) -> builtins.list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return builtins.list(entries)
    except OSError as exc:
        raise StorageUnavailableError(
            f"cannot read the snapshot directory {str(directory)!r}: {exc}"
        ) from exc


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink durable; a no-op where directories cannot be synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise StorageUnavailableError(
                f"cannot make the change in {str(directory)!r} durable: {exc}"
            ) from exc
    finally:
        os.close(fd)
