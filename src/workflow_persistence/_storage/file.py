"""FilePersistence: one file per workflow, replaced atomically.

Each file is ``<header line>\\n<columns line>\\n<encoded snapshot>``. The header (JSON)
carries the id, version, timestamps, expiry and the columns line's length: all that
``load``, ``exists`` and a writer need. The columns line (JSON) carries what ``list``
shows and filters on: status, workflow name, node, question and metadata, rendered as
plain JSON. So ``list`` never decodes a snapshot. Files written before the columns line
existed (format 1: header and snapshot only) are still read; ``list`` decodes those small
enough to be cheap, with stand-ins for classes, and lists the others as ``"unknown"``,
until their next save writes the current format. File names are derived from
a SHA-256 of the id, never from the id itself: no id can name a path outside the
directory, and ids that differ only in case stay apart on case-insensitive file systems.

Writers take an exclusive lock on ``<directory>/.lock`` (``flock``, so threads and
processes alike), which makes version checks atomic across processes; readers take no
lock, because a rename replaces a file in one step.

Others may write to the directory too, so nothing in it is trusted: every call opens the
directory once and works relative to that descriptor, never follows a symbolic link,
never opens a FIFO, device or socket (each would block, or act on something elsewhere),
and never reads a file larger than ``max_size``.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from workflow_persistence._serialization.columns import SnapshotColumns, columns_of
from workflow_persistence._serialization.serializers import JsonSerializer, Serializer
from workflow_persistence._snapshot import UNKNOWN_STATUS, StoredSnapshotInfo, utc_now
from workflow_persistence.errors import (
    CorruptSnapshotError,
    InvalidArgumentError,
    PayloadTooLargeError,
    StorageUnavailableError,
)

from .base import (
    ListQuery,
    PruneQuery,
    Record,
    RecordPersistence,
    is_expired,
    version_conflict,
)

__all__ = ["FilePersistence"]

_SUFFIX = ".wfp"
_TEMP_PREFIX = ".tmp-"
_LOCK_NAME = ".lock"
_MAGIC = b"wfp-file 2 "
#: Files written before the columns line existed: header and snapshot only.
_MAGIC_V1 = b"wfp-file 1 "
#: Longest header line read; a valid one (255 escaped 4-byte characters) is ~3.3 KiB.
_MAX_HEADER = 64 * 1024
#: Longest columns line: far more than its two JSON texts (64 Ki characters each) and
#: two names take, so a damaged or planted length never makes ``list`` read much.
_MAX_COLUMNS = 1 << 20
#: Largest format-1 file whose snapshot ``list`` decodes to learn its columns.
_MAX_V1_DECODED = 1 << 20
#: What is read first for a header: every valid header fits, and so does a small file.
_HEADER_PROBE = 4096
#: The largest file read or written by default: what PostgreSQL's bytea holds, and
#: JsonSerializer's default max_decoded_size, so no snapshot another backend takes is
#: refused here, while a file of gigabytes planted in the directory is never read.
DEFAULT_MAX_SIZE = 1 << 30
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]+")

if sys.platform != "win32":  # what the guarantees rest on: openat(2), O_NOFOLLOW, flock
    import fcntl

    _OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    # O_NOFOLLOW: a link is refused, never followed. O_NONBLOCK: a FIFO swapped in after
    # the look before opening returns at once instead of waiting for a writer; it changes
    # nothing for regular files. O_NOCTTY: a terminal never becomes ours.
    _OPEN_FILE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    _OPEN_READ = os.O_RDONLY | _OPEN_FILE
    _OPEN_LOCK = os.O_RDWR | os.O_CREAT | _OPEN_FILE
    _CREATE_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    #: What opening with O_NOFOLLOW | O_NONBLOCK says when the entry is not a regular file
    #: (a link: ELOOP, EMLINK on the BSDs; a socket: ENXIO), as the file type it means.
    _REFUSED_BY_OPEN = {
        errno.ELOOP: stat.S_IFLNK,
        errno.EMLINK: stat.S_IFLNK,
        errno.ENXIO: stat.S_IFSOCK,
    }


def file_name(workflow_id: str) -> str:
    """The file a workflow is stored in: a readable slug plus the id's SHA-256."""
    digest = hashlib.sha256(workflow_id.encode("utf-8")).hexdigest()
    slug = _SLUG_UNSAFE.sub("-", workflow_id.lower()).strip("-")[:48]
    return f"{slug}~{digest}{_SUFFIX}" if slug else f"{digest}{_SUFFIX}"


class FilePersistence(RecordPersistence):
    """Stores each snapshot in its own file under ``directory`` (created if missing).

    Writes go to a temporary file that is fsynced and renamed over the old one, so a
    crash leaves the old or the new snapshot, never a torn one. Files and the directory
    are readable by the owner only. A symbolic link, FIFO, device, socket or directory
    under a snapshot's name or the lock's is never followed nor opened: reads raise
    CorruptSnapshotError, writes StorageUnavailableError, ``list`` and ``prune`` pass it
    by, and ``delete`` unlinks the entry itself. No file larger than ``max_size`` bytes
    (header included) is written or read.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        serializer: Serializer | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ):
        if sys.platform == "win32":  # pragma: no cover
            raise StorageUnavailableError(
                "FilePersistence needs a POSIX system (openat, O_NOFOLLOW, flock) to keep"
                " its directory safe; on Windows use DatabasePersistence with SQLite"
            )
        self.max_size = _check_max_size(max_size)
        super().__init__(serializer)
        self.directory = Path(directory)
        try:
            # A directory path that is a symbolic link is the caller's choice: followed.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot create the snapshot directory {str(self.directory)!r}: {exc}"
            ) from exc
        self._thread_lock = threading.Lock()
        with self._locked() as dir_fd:
            self._sweep_temp_files(dir_fd)

    _backend_name = "file"

    def _after_fork(self) -> None:
        self._thread_lock = threading.Lock()

    # -- the directory and its lock -----------------------------------------------------

    def _open_directory(self) -> int:
        """The directory's descriptor: every step of a call is taken relative to it, so a
        directory path swapped meanwhile cannot send one half of the call elsewhere."""
        try:
            return os.open(self.directory, _OPEN_DIRECTORY)
        except FileNotFoundError as exc:
            raise _DirectoryGone(
                f"the snapshot directory {str(self.directory)!r} was removed; create it"
                f" again (a new FilePersistence does): {exc}"
            ) from exc
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot open the snapshot directory {str(self.directory)!r}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def _opened_directory(self) -> Iterator[int]:
        dir_fd = self._open_directory()
        try:
            yield dir_fd
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Exclusive against every writer of this directory, in any thread or process;
        yields the directory's descriptor."""
        # flock is per open file; the thread lock keeps threads orderly too.
        with self._thread_lock, self._opened_directory() as dir_fd:
            lock_fd = self._open_lock(dir_fd)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    yield dir_fd
                finally:
                    # Explicitly: a child forked meanwhile shares this open file.
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(lock_fd)

    def _open_lock(self, dir_fd: int) -> int:
        try:
            lock_fd, _ = _open_regular(dir_fd, _LOCK_NAME, _OPEN_LOCK)
        except _NotAFile as planted:
            raise StorageUnavailableError(
                "cannot lock the snapshot directory: "
                + planted.explain(self.directory / _LOCK_NAME, None)
            ) from planted.__cause__
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot lock the snapshot directory {str(self.directory)!r}: {exc}"
            ) from exc
        return lock_fd

    def _sweep_temp_files(self, dir_fd: int) -> None:
        # Writers hold the lock from creating a temp file to renaming it, so under the
        # lock every temp file is a leftover of a writer that died. unlink never follows.
        for entry in _entries(dir_fd, self.directory):
            if entry.name.startswith(_TEMP_PREFIX):
                with contextlib.suppress(OSError):  # e.g. a directory of that name: not ours
                    os.unlink(entry.name, dir_fd=dir_fd)

    # -- records ------------------------------------------------------------------------

    def _write(
        self, workflow_id: str, data: bytes, expected_version: int | None, columns: SnapshotColumns
    ) -> tuple[int, datetime]:
        name = file_name(workflow_id)
        with self._locked() as dir_fd:
            now = utc_now()
            try:
                current = _live_header(dir_fd, self.directory, name, workflow_id, now)
            except CorruptSnapshotError as exc:
                raise CorruptSnapshotError(
                    f"cannot save {workflow_id!r} over a damaged snapshot file ({exc});"
                    " delete() removes it"
                ) from exc
            except _NotAFile as planted:
                raise StorageUnavailableError(
                    f"cannot save {workflow_id!r}: "
                    + planted.explain(self.directory / name, workflow_id)
                ) from planted.__cause__
            stored_version = 0 if current is None else current.version
            if expected_version is not None and expected_version != stored_version:
                raise version_conflict(workflow_id, expected_version, stored_version)
            created_at = now if current is None else current.created_at
            version = stored_version + 1
            header = _encode_header(workflow_id, version, created_at, now, columns)
            self._check_size(len(header) + len(data))
            self._replace(dir_fd, name, header, data)
            return version, now

    def _check_size(self, size: int) -> None:
        if size > self.max_size:
            raise PayloadTooLargeError(
                f"the snapshot file would be {size} bytes, more than max_size="
                f"{self.max_size}; nothing was written (raise FilePersistence's max_size"
                " to store it)",
                size=size,
                limit=self.max_size,
            )

    def _replace(self, dir_fd: int, name: str, header: bytes, data: bytes) -> None:
        temp = f"{_TEMP_PREFIX}{os.getpid()}-{name}"
        try:
            # A leftover of that name (a dead writer with our pid) is removed, and the new
            # file is created exclusively: it is ours, 0o600, and never a symlink's target.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            fd = os.open(temp, _CREATE_TEMP, 0o600, dir_fd=dir_fd)
            try:
                with open(fd, "wb", closefd=False) as out:
                    out.write(header)
                    out.write(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise PayloadTooLargeError(
                    f"no room to write the snapshot ({len(data)} bytes) to"
                    f" {str(self.directory)!r}: {exc.strerror}",
                    size=len(data),
                ) from exc
            raise StorageUnavailableError(
                f"cannot write {str(self.directory / name)!r}: {exc}"
            ) from exc
        _fsync_directory(dir_fd, self.directory)

    def _read(self, workflow_id: str) -> Record | None:
        name = file_name(workflow_id)
        try:
            dir_fd = self._open_directory()
        except _DirectoryGone:
            return None
        try:
            fd, size = _open_regular(dir_fd, name, _OPEN_READ)
            try:
                return self._read_record(fd, size, name, workflow_id)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except _NotAFile as planted:
            raise CorruptSnapshotError(
                planted.explain(self.directory / name, workflow_id)
            ) from planted.__cause__
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot read {str(self.directory / name)!r}: {exc}"
            ) from exc
        finally:
            os.close(dir_fd)

    def _read_record(self, fd: int, size: int, name: str, workflow_id: str) -> Record | None:
        if size > self.max_size:
            raise CorruptSnapshotError(
                f"{str(self.directory / name)!r} is {size} bytes, more than max_size="
                f"{self.max_size}, and was not read: if you stored it, raise"
                f" FilePersistence's max_size; else delete({workflow_id!r}) removes it"
            )
        head = os.pread(fd, _HEADER_PROBE, 0)
        header = _decode_header(_header_line(fd, head), self.directory, name)
        if header.workflow_id != workflow_id:  # a SHA-256 collision, or a file copied by hand
            return None
        start = header.data_offset
        small = len(head) == size  # then all of the file is in hand
        if header.columns_size is not None:
            line_end = head[start - 1 : start] if small else os.pread(fd, 1, start - 1)
            if line_end != b"\n":
                raise CorruptSnapshotError(
                    f"damaged header in {str(self.directory / name)!r}: the columns line"
                    f" does not end where the header says; delete({workflow_id!r}) removes it"
                )
        data = head[start:] if small else _pread_exactly(fd, size - start, start)
        return data, header.version, header.created_at, header.updated_at, header.expires_at

    def _remove(self, workflow_id: str, expected_version: int | None, now: datetime) -> bool:
        name = file_name(workflow_id)
        with self._locked() as dir_fd:
            try:
                # An expired record counts as absent: it is left for prune().
                current = _live_header(dir_fd, self.directory, name, workflow_id, now)
                damaged = False
            except CorruptSnapshotError:
                if expected_version is not None:
                    raise
                current, damaged = None, True  # deleting a damaged file is the way out
            except _NotAFile as planted:
                if expected_version is not None or planted.is_directory:
                    raise StorageUnavailableError(
                        f"cannot delete {workflow_id!r}: "
                        + planted.explain(self.directory / name, workflow_id)
                    ) from planted.__cause__
                current, damaged = None, True  # unlink removes the entry, follows nothing
            if expected_version is not None:
                stored_version = 0 if current is None else current.version
                if stored_version != expected_version:
                    raise version_conflict(workflow_id, expected_version, stored_version)
            if current is None and not damaged:
                return False
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StorageUnavailableError(
                    f"cannot delete {str(self.directory / name)!r}: {exc}"
                ) from exc
            _fsync_directory(dir_fd, self.directory)
        return True

    def _contains(self, workflow_id: str, now: datetime) -> bool:
        name = file_name(workflow_id)
        try:
            dir_fd = self._open_directory()
        except _DirectoryGone:
            return False
        try:
            return _live_header(dir_fd, self.directory, name, workflow_id, now) is not None
        except CorruptSnapshotError:
            return True  # something is stored under this id; load() reports the damage
        except _NotAFile as planted:
            raise CorruptSnapshotError(
                planted.explain(self.directory / name, workflow_id)
            ) from planted.__cause__
        finally:
            os.close(dir_fd)

    def _scan(self, dir_fd: int) -> Iterator[tuple[str, StoredSnapshotInfo]]:
        for entry in _entries(dir_fd, self.directory):
            if not entry.name.endswith(_SUFFIX) or entry.name.startswith("."):
                continue
            info = _read_info(dir_fd, self.directory, entry.name, self.max_size)
            if info is not None:
                yield entry.name, info

    def _infos(self, query: ListQuery) -> builtins.list[StoredSnapshotInfo]:
        with self._opened_directory() as dir_fd:
            return query.select([info for _, info in self._scan(dir_fd)])

    def _prune(self, query: PruneQuery) -> int:
        removed = 0
        with self._locked() as dir_fd:
            for name, info in list(self._scan(dir_fd)):
                if not query.matches(info.updated_at, info.status, info.expires_at):
                    continue
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageUnavailableError(
                        f"cannot delete {str(self.directory / name)!r}: {exc}"
                    ) from exc
                removed += 1
            if removed:
                _fsync_directory(dir_fd, self.directory)
        return removed


def _check_max_size(max_size: object) -> int:
    if type(max_size) is not int or max_size < 1:
        raise InvalidArgumentError(
            f"max_size must be a number of bytes (an int >= 1), not {max_size!r}"
        )
    return max_size


class _DirectoryGone(StorageUnavailableError):
    """The directory was removed: writers cannot write, readers find nothing stored."""


class _NotAFile(Exception):
    """An entry under one of our names that is not a regular file: never followed or
    opened. Callers turn it into the error their kind of call promises."""

    def __init__(self, mode: int) -> None:
        super().__init__(mode)
        self.is_directory = stat.S_ISDIR(mode)
        self.kind = _KINDS.get(stat.S_IFMT(mode), "something else")

    def explain(self, path: Path, workflow_id: str | None) -> str:
        if self.is_directory:
            remedy = "move it away by hand"
        elif workflow_id is None:
            remedy = "remove it by hand"
        else:
            remedy = f"delete({workflow_id!r}) removes the entry itself, never its target"
        return (
            f"{str(path)!r} is {self.kind}, not a regular file; FilePersistence never"
            f" follows links nor opens special files: {remedy}"
        )


_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _open_regular(dir_fd: int, name: str, flags: int) -> tuple[int, int]:
    """Open ``name`` if it is a regular file: ``(fd, size)``. FileNotFoundError if absent
    (unless ``flags`` create it), _NotAFile if it is something else.

    The entry is looked at before it is opened, so a FIFO or a device is never opened;
    the flags and a look at what was opened cover one swapped in between the two.
    """
    try:
        _require_regular(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _REFUSED_BY_OPEN:
            raise _NotAFile(_REFUSED_BY_OPEN[exc.errno]) from exc
        raise
    try:
        st = os.fstat(fd)
        _require_regular(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise _NotAFile(mode)


def _header_line(fd: int, head: bytes) -> bytes:
    """The first line of the file whose first _HEADER_PROBE bytes are ``head``: at most
    _MAX_HEADER bytes, and nothing after it is read."""
    end = head.find(b"\n")
    if end < 0 and len(head) == _HEADER_PROBE:  # too long for any valid header: damaged
        head = os.pread(fd, _MAX_HEADER, 0)
        end = head.find(b"\n")
    return head if end < 0 else head[: end + 1]


def _pread_exactly(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes from ``offset``, fewer if the file is shorter (the serializer's
    checksum then fails); one read returns at most about 2 GiB."""
    parts = []
    while count > 0:
        part = os.pread(fd, count, offset)
        if not part:
            break
        parts.append(part)
        count -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- the file format ----------------------------------------------------------------------


class _Header(NamedTuple):
    """The header line of a snapshot file (a tuple: built on every load, so cheap)."""

    workflow_id: str
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    size: int  # bytes of the header line, its newline included
    columns_size: int | None  # bytes of the columns line; None in a format-1 file

    @property
    def data_offset(self) -> int:
        return self.size + (self.columns_size or 0)


#: ``(status, workflow_name, current_node, interrupt, metadata, deadline)`` as ``list``
#: shows them.
_Listed = tuple[str, str | None, str | None, Any, dict[str, Any], datetime | None]


def _encode_header(
    workflow_id: str,
    version: int,
    created: datetime,
    updated: datetime,
    columns: SnapshotColumns,
) -> bytes:
    """The header line and the columns line."""
    columns_line = _encode_columns(columns)
    expires_at = columns.expires_at
    fields = {
        "id": workflow_id,
        "version": version,
        "created_at": created.isoformat(),
        "updated_at": updated.isoformat(),
        "expires_at": None if expires_at is None else expires_at.astimezone(UTC).isoformat(),
        "columns": len(columns_line),
    }
    return _MAGIC + json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n" + columns_line


def _encode_columns(columns: SnapshotColumns) -> bytes:
    # Names may hold lone surrogates: escaped, so they come back as they were.
    names = json.dumps(
        {
            "status": columns.status,
            "workflow_name": columns.workflow_name,
            "current_node": columns.current_node,
        },
        ensure_ascii=True,
    )
    # The two renderings are JSON text already, valid UTF-8, with every newline escaped.
    interrupt = "null" if columns.interrupt is None else columns.interrupt
    deadline = "" if columns.deadline is None else (
        f', "deadline": "{columns.deadline.astimezone(UTC).isoformat()}"'
    )
    text = (
        f'{names[:-1]}, "interrupt": {interrupt}, "metadata": {columns.run_metadata}'
        f"{deadline}}}\n"
    )
    line = text.encode("utf-8")
    if len(line) > _MAX_COLUMNS:
        raise PayloadTooLargeError(
            f"the run's workflow_name and current_node take {len(line)} bytes, more than"
            f" the {_MAX_COLUMNS} a snapshot file lists; nothing was written (use names of"
            " at most 255 characters, as the databases require)",
            size=len(line),
            limit=_MAX_COLUMNS,
        )
    return line


def _decode_header(line: bytes, directory: Path, name: str) -> _Header:
    if line.startswith(_MAGIC):
        magic, has_columns = _MAGIC, True
    elif line.startswith(_MAGIC_V1):
        magic, has_columns = _MAGIC_V1, False
    else:
        raise CorruptSnapshotError(
            f"{str(directory / name)!r} is not a snapshot file of this library"
        )
    try:
        fields = json.loads(line[len(magic) :])
        stored_id = fields["id"]
        version = fields["version"]
        created = datetime.fromisoformat(fields["created_at"])
        updated = datetime.fromisoformat(fields["updated_at"])
        if has_columns:
            expires_text = fields["expires_at"]
            expires = None if expires_text is None else datetime.fromisoformat(expires_text)
            columns_size = fields["columns"]
        else:
            expires = columns_size = None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptSnapshotError(f"damaged header in {str(directory / name)!r}: {exc}") from exc
    if (
        not isinstance(stored_id, str)
        or type(version) is not int
        or version < 1
        or created.utcoffset() is None
        or updated.utcoffset() is None
        or (expires is not None and expires.utcoffset() is None)
        or (has_columns and not (type(columns_size) is int and 0 < columns_size <= _MAX_COLUMNS))
    ):
        raise CorruptSnapshotError(
            f"damaged header in {str(directory / name)!r}: unexpected field values"
        )
    return _Header(stored_id, version, created, updated, expires, len(line), columns_size)


def _header_fields(dir_fd: int, directory: Path, name: str) -> _Header | None:
    """The decoded header line of ``name``, read alone; None if there is no such entry."""
    try:
        fd, _ = _open_regular(dir_fd, name, _OPEN_READ)
        try:
            line = _header_line(fd, os.pread(fd, _HEADER_PROBE, 0))
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageUnavailableError(f"cannot read {str(directory / name)!r}: {exc}") from exc
    return _decode_header(line, directory, name)


def _live_header(
    dir_fd: int, directory: Path, name: str, workflow_id: str, now: datetime
) -> _Header | None:
    """The header of what is stored under ``workflow_id``; None if nothing is, or if it
    has expired by ``now`` (an expired record counts as gone)."""
    header = _header_fields(dir_fd, directory, name)
    if header is None or header.workflow_id != workflow_id:
        return None
    return None if is_expired(header.expires_at, now) else header


def _read_info(
    dir_fd: int, directory: Path, name: str, max_size: int
) -> StoredSnapshotInfo | None:
    """What ``list`` shows of one file, None for anything that is not a readable
    snapshot file of ours (list what can be listed; load() reports the damage)."""
    try:
        fd, size = _open_regular(dir_fd, name, _OPEN_READ)
    except (OSError, _NotAFile):
        return None
    try:
        return _info_of(fd, size, directory, name, max_size)
    except (OSError, CorruptSnapshotError):
        return None
    finally:
        os.close(fd)


def _info_of(
    fd: int, size: int, directory: Path, name: str, max_size: int
) -> StoredSnapshotInfo | None:
    head = os.pread(fd, _HEADER_PROBE, 0)
    header = _decode_header(_header_line(fd, head), directory, name)
    if name != file_name(header.workflow_id):
        return None  # copied or renamed by hand: load() would not find it so
    if header.columns_size is None:
        listed = _listed_of_format_1(fd, size, head, header, max_size)
    else:
        end = header.data_offset
        if end <= len(head):
            line = head[header.size : end]
        else:
            line = os.pread(fd, header.columns_size, header.size)
        listed = _decode_columns(line, directory, name)
    status, workflow_name, current_node, interrupt, metadata, deadline = listed
    return StoredSnapshotInfo(
        header.workflow_id,
        header.created_at,
        header.updated_at,
        header.version,
        status=status,
        workflow_name=workflow_name,
        current_node=current_node,
        interrupt=interrupt,
        metadata=metadata,
        expires_at=header.expires_at,
        deadline=deadline,
    )


def _decode_columns(line: bytes, directory: Path, name: str) -> _Listed:
    try:
        if not line.endswith(b"\n"):
            raise ValueError("the columns line is cut short")
        fields = json.loads(line)
        status = fields["status"]
        workflow_name = fields["workflow_name"]
        current_node = fields["current_node"]
        interrupt = fields["interrupt"]
        metadata = fields["metadata"]
        deadline_text = fields.get("deadline")  # absent in files written before deadlines
        deadline = None if deadline_text is None else datetime.fromisoformat(deadline_text)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptSnapshotError(f"damaged columns in {str(directory / name)!r}: {exc}") from exc
    if (
        type(status) is not str
        or not (workflow_name is None or type(workflow_name) is str)
        or not (current_node is None or type(current_node) is str)
        or (deadline is not None and deadline.utcoffset() is None)
    ):
        raise CorruptSnapshotError(
            f"damaged columns in {str(directory / name)!r}: unexpected field values"
        )
    if type(metadata) is not dict:  # a rendering too long to keep, cut to a JSON string
        metadata = {}
    return status, workflow_name, current_node, interrupt, metadata, deadline


#: Reads format-1 files for ``list``: classes it does not know become stand-ins, so no
#: class named in a file is ever imported.
_FORMAT_1_READER = JsonSerializer(unknown_classes="stand-in")


def _listed_of_format_1(
    fd: int, size: int, head: bytes, header: _Header, max_size: int
) -> _Listed:
    """What ``list`` shows of a file written before the columns line existed: its
    snapshot decoded when that is cheap, else status "unknown" (until its next save)."""
    if size > min(max_size, _MAX_V1_DECODED):
        return _unknown_listed()
    if len(head) == size:
        data = head[header.size :]
    else:
        data = _pread_exactly(fd, size - header.size, header.size)
    try:
        snapshot = _FORMAT_1_READER.loads(data)
    except Exception:  # signed pickle, damage, anything: listed, as "unknown"
        return _unknown_listed()
    if snapshot.workflow_id != header.workflow_id:
        return _unknown_listed()
    columns = columns_of(snapshot)
    interrupt = None if columns.interrupt is None else json.loads(columns.interrupt)
    metadata = json.loads(columns.run_metadata)
    return (
        columns.status,
        columns.workflow_name,
        columns.current_node,
        interrupt,
        metadata,
        columns.deadline,
    )


def _unknown_listed() -> _Listed:
    return UNKNOWN_STATUS, None, None, None, {}, None


def _entries(dir_fd: int, directory: Path) -> builtins.list[os.DirEntry[str]]:
    try:
        with os.scandir(dir_fd) as entries:
            return builtins.list(entries)
    except OSError as exc:
        raise StorageUnavailableError(
            f"cannot read the snapshot directory {str(directory)!r}: {exc}"
        ) from exc


def _fsync_directory(dir_fd: int, directory: Path) -> None:
    """Make a rename or unlink durable; a no-op where directories cannot be synced."""
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise StorageUnavailableError(
                f"cannot make the change in {str(directory)!r} durable: {exc}"
            ) from exc
