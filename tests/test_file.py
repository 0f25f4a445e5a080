"""FilePersistence specifics: paths, file names, modes, atomic replace, processes, damage.

The generic contract (test_contract.py) already runs on the file backend; these tests
cover what only a directory of files can get wrong.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import threading
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import pytest

from workflow_persistence import (
    ConflictError,
    CorruptSnapshotError,
    FilePersistence,
    InvalidWorkflowIdError,
    JsonSerializer,
    PayloadTooLargeError,
    PickleSerializer,
    SerializationError,
    StorageUnavailableError,
    StoredSnapshotInfo,
    WorkflowNotFoundError,
    WorkflowSnapshot,
)
from workflow_persistence._storage.file import _LOCK_NAME, _SUFFIX, _TEMP_PREFIX, file_name

SPAWN: SpawnContext = multiprocessing.get_context("spawn")
PROCESSES = 6

WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{prefix}{n}" for prefix in ("com", "lpt") for n in range(10)
}
WINDOWS_INVALID_CHARS = set('<>:"/\\|?*') | {chr(c) for c in range(32)}


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(directory: Path) -> FilePersistence:
    return FilePersistence(directory)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Modes must come from the code, not from a friendly umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def snapshot_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX) and n[0] != ".")


def temp_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(_TEMP_PREFIX))


def everything_under(root: Path) -> set[Path]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(Path(dirpath) / name)
    return found


def assert_portable_name(name: str) -> None:
    """A name every common file system accepts, and means the same thing by."""
    assert len(name.encode("utf-8")) <= 255
    assert name.isascii()
    assert not set(name) & WINDOWS_INVALID_CHARS, name
    assert not name.endswith((" ", ".")), name
    assert not name.startswith("."), name  # hidden names are the lock's and temp files'
    assert name.split(".")[0].lower() not in WINDOWS_RESERVED, name


# -- paths and names ------------------------------------------------------------------------

ODD_IDS = [
    "../x",
    "../../../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "a/b/c",
    "..",
    ".",
    "./",
    "/",
    "\\",
    "..\\..\\windows\\system32",
    "C:\\Windows\\win.ini",
    "C:",
    "\\\\server\\share\\x",
    "~",
    "~root/.ssh/authorized_keys",
    "$HOME",
    "%2e%2e%2f",
    "CON",
    "nul",
    "aux.txt",
    "COM1",
    "lpt9.wfp",
    "con.",
    "trailing dot.",
    "trailing space ",
    " ",
    "...",
    "x:y",
    'a*b?c<d>e|f"g',
    "\t\n\r\x0b\x0c",
    "\x7f\x01",
    "\u202egnp.exe",
    _LOCK_NAME,
    f"{_TEMP_PREFIX}1-x{_SUFFIX}",
    f"x{_SUFFIX}",
    "-" * 255,
    "a" * 255,
]


@pytest.mark.parametrize("workflow_id", ODD_IDS, ids=repr)
def test_no_id_names_a_path_outside_the_directory(tmp_path: Path, workflow_id: str) -> None:
    directory = tmp_path / "store"
    store = FilePersistence(directory)
    assert store.save(WorkflowSnapshot(workflow_id, state={"id": workflow_id})) == 1

    created = everything_under(tmp_path)
    assert all(path.parent == directory for path in created - {directory}), created
    assert all(path.is_file() for path in created - {directory})
    [name] = snapshot_files(directory)
    assert name == file_name(workflow_id)
    assert_portable_name(name)

    loaded = store.load(workflow_id)
    assert loaded.workflow_id == workflow_id
    assert loaded.state == {"id": workflow_id}
    assert [i.workflow_id for i in store.list()] == [workflow_id]
    assert store.delete(workflow_id) is True
    assert snapshot_files(directory) == []
    assert everything_under(tmp_path) == {directory, directory / _LOCK_NAME}


def test_all_odd_ids_live_side_by_side(store: FilePersistence, directory: Path) -> None:
    for workflow_id in ODD_IDS:
        store.save(WorkflowSnapshot(workflow_id, state={"id": workflow_id}))
    assert len(snapshot_files(directory)) == len(ODD_IDS)
    for workflow_id in ODD_IDS:
        assert store.load(workflow_id).state == {"id": workflow_id}
    assert sorted(i.workflow_id for i in store.list()) == sorted(ODD_IDS)


def test_lone_surrogate_id_is_refused_before_touching_files(store: FilePersistence) -> None:
    # Not valid Unicode text, so no backend could store it alike.
    for call in (store.exists, store.delete, store.load):
        with pytest.raises(InvalidWorkflowIdError):
            call("\ud800")
    assert snapshot_files(store.directory) == []


NEAR_TWINS = [
    "a",
    "A",
    "a ",
    " a",
    "a\t",
    "a.",
    "a-",
    "a_",
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "ß",
    "ss",
    "SS",
    "ẞ",
    "İ",
    "i\u0307",
    "ﬁ",
    "fi",
    "K",  # KELVIN SIGN, case-folds to "k"
    "k",
]


def test_ids_that_differ_only_in_case_space_or_normalization_get_their_own_files(
    store: FilePersistence, directory: Path
) -> None:
    assert len(set(NEAR_TWINS)) == len(NEAR_TWINS)
    for workflow_id in NEAR_TWINS:
        store.save(WorkflowSnapshot(workflow_id, state={"id": workflow_id}))

    names = snapshot_files(directory)
    assert len(names) == len(NEAR_TWINS)
    # Still apart on case-insensitive (NTFS, APFS) and normalizing (HFS+) file systems.
    assert len({n.casefold() for n in names}) == len(NEAR_TWINS)
    assert len({unicodedata.normalize("NFD", n) for n in names}) == len(NEAR_TWINS)
    for workflow_id in NEAR_TWINS:
        loaded = store.load(workflow_id)
        assert loaded.workflow_id == workflow_id
        assert loaded.state == {"id": workflow_id}
        assert store.load(workflow_id).version == 1


def test_long_ids_of_four_byte_characters_fit_in_a_file_name(
    store: FilePersistence, directory: Path
) -> None:
    ids = ["🚀" * 255, "😀" * 255, "🚀" * 254 + "😀", "a" * 254 + "🚀", "a" * 254 + "😀"]
    assert all(len(i) == 255 and len(i.encode("utf-8")) > 255 for i in ids[:3])
    for n, workflow_id in enumerate(ids):
        store.save(WorkflowSnapshot(workflow_id, state={"n": n}))
    names = snapshot_files(directory)
    assert len(names) == len(ids)
    for name in names:
        assert_portable_name(name)
    for n, workflow_id in enumerate(ids):
        assert store.load(workflow_id).state == {"n": n}
    assert {i.workflow_id for i in store.list()} == set(ids)


# -- the directory and its modes --------------------------------------------------------------


@pytest.mark.usefixtures("no_umask")
def test_nested_directory_is_created_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "c"
    store = FilePersistence(directory)
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    store.save(WorkflowSnapshot("w", state={"secret": "s3cr3t"}))
    store.save(WorkflowSnapshot("w", state={"secret": "rotated"}))  # a replaced file, too
    store.save(WorkflowSnapshot("other"))
    for name in os.listdir(directory):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_existing_directory_is_used_as_it_is(directory: Path) -> None:
    directory.mkdir()
    (directory / "README").write_text("not a snapshot")
    store = FilePersistence(directory)
    store.save(WorkflowSnapshot("w"))
    assert (directory / "README").read_text() == "not a snapshot"
    assert [i.workflow_id for i in store.list()] == ["w"]


def test_a_directory_that_cannot_be_created_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_bytes(b"")
    with pytest.raises(StorageUnavailableError, match="cannot create"):
        FilePersistence(tmp_path / "plain-file" / "store")


def test_a_vanished_directory_is_storage_unavailable(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w"))
    for name in os.listdir(directory):
        os.unlink(directory / name)
    directory.rmdir()
    with pytest.raises(StorageUnavailableError):
        store.save(WorkflowSnapshot("w"))
    with pytest.raises(StorageUnavailableError):
        store.list()
    with pytest.raises(WorkflowNotFoundError):
        store.load("w")


# -- atomic replace -----------------------------------------------------------------------------


def test_many_saves_leave_no_temp_files(store: FilePersistence, directory: Path) -> None:
    def work(n: int) -> None:
        for i in range(25):
            store.save(WorkflowSnapshot(f"w{n % 3}", state={"i": i}))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert temp_files(directory) == []
    assert sorted(os.listdir(directory)) == sorted([_LOCK_NAME, *snapshot_files(directory)])
    assert sorted(i.version for i in store.list()) == [50, 50, 50]


def test_leftover_temp_files_are_swept_when_the_directory_is_opened(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": "committed"}))
    torn = directory / f"{_TEMP_PREFIX}999999-{file_name('w')}"
    torn.write_bytes(b"wfp-file 1 {\"id\": \"w\", \"vers")  # a writer died mid-write
    other = directory / f"{_TEMP_PREFIX}4242-{file_name('never-committed')}"
    other.write_bytes(b"")
    unrelated = directory / "notes.txt"
    unrelated.write_text("mine")
    blocked = directory / f"{_TEMP_PREFIX}7-not-a-file"
    blocked.mkdir()

    # Readers ignore temp files while they exist.
    assert store.load("w").state == {"v": "committed"}
    assert [i.workflow_id for i in store.list()] == ["w"]

    reopened = FilePersistence(directory)
    assert not torn.exists()
    assert not other.exists()
    assert unrelated.read_text() == "mine"  # only the module's own temp files go
    assert blocked.is_dir()  # not a file it wrote: left alone, and opening did not fail
    assert reopened.load("w").state == {"v": "committed"}
    assert reopened.save(WorkflowSnapshot("w", state={"v": "next"})) == 2


def test_serializer_failure_leaves_the_previous_snapshot(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    before = (directory / file_name("w")).read_bytes()
    with pytest.raises(SerializationError):
        store.save(WorkflowSnapshot("w", state={"callback": lambda: None}))
    assert (directory / file_name("w")).read_bytes() == before
    loaded = store.load("w")
    assert (loaded.version, loaded.state) == (1, {"v": 1})
    assert temp_files(directory) == []


def test_unwritable_temp_file_leaves_the_previous_snapshot(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    before = (directory / file_name("w")).read_bytes()
    # Works as root, where a read-only directory would not stop the writer.
    (directory / f"{_TEMP_PREFIX}{os.getpid()}-{file_name('w')}").mkdir()
    with pytest.raises(StorageUnavailableError):
        store.save(WorkflowSnapshot("w", state={"v": 2}))
    assert (directory / file_name("w")).read_bytes() == before
    assert store.load("w").state == {"v": 1}
    assert store.save(WorkflowSnapshot("w2")) == 1  # other ids are unaffected


_WRITE_LIMITED = textwrap.dedent(
    """
    import os, resource, signal, sys
    from workflow_persistence import FilePersistence, PayloadTooLargeError, WorkflowSnapshot

    store = FilePersistence(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        store.save(WorkflowSnapshot("w", state={"blob": os.urandom(1024 * 1024)}))
    except PayloadTooLargeError as exc:
        print("PayloadTooLargeError", exc.__cause__.errno)
    """
)


def test_write_that_fails_midway_leaves_the_previous_snapshot(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    before = (directory / file_name("w")).read_bytes()
    # The child may write only 64 KiB per file: the 1 MiB snapshot is cut off mid-write.
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_LIMITED, str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PayloadTooLargeError", "27"]  # EFBIG
    assert (directory / file_name("w")).read_bytes() == before
    loaded = store.load("w")
    assert (loaded.version, loaded.state) == (1, {"v": 1})
    assert temp_files(directory) == []


_DIES_BEFORE_RENAME = textwrap.dedent(
    """
    import os, sys
    from workflow_persistence import FilePersistence, WorkflowSnapshot

    store = FilePersistence(sys.argv[1])
    os.replace = lambda *args, **kwargs: os._exit(17)  # the power goes out here
    store.save(WorkflowSnapshot("w", state={"v": 2}))
    """
)


def test_writer_dying_before_the_rename_leaves_the_previous_snapshot(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    done = subprocess.run(
        [sys.executable, "-c", _DIES_BEFORE_RENAME, str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 17, done.stderr
    [leftover] = temp_files(directory)
    assert leftover.endswith(file_name("w"))
    loaded = store.load("w")
    assert (loaded.version, loaded.state) == (1, {"v": 1})
    assert [i.version for i in store.list()] == [1]

    reopened = FilePersistence(directory)
    assert temp_files(directory) == []
    assert reopened.save(WorkflowSnapshot("w", state={"v": 3}), expected_version=1) == 2
    assert reopened.load("w").state == {"v": 3}


# -- several processes ----------------------------------------------------------------------


def _conditional_save(directory: str, expected: int, n: int, barrier: Any, results: Any) -> None:
    store = FilePersistence(directory)
    barrier.wait(timeout=60)
    try:
        version = store.save(WorkflowSnapshot("w", state={"by": n}), expected_version=expected)
    except ConflictError:
        results.put(("conflict", n, None))
    else:
        results.put(("won", n, version))


def _plain_saves(directory: str, count: int, n: int, barrier: Any, results: Any) -> None:
    store = FilePersistence(directory)
    barrier.wait(timeout=60)
    results.put([store.save(WorkflowSnapshot("w", state={"by": n})) for _ in range(count)])


def _run_processes(target: Any, args: tuple[Any, ...], expected_messages: int) -> list[Any]:
    barrier = SPAWN.Barrier(PROCESSES)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=target, args=(*args, n, barrier, results)) for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        messages = [results.get(timeout=120) for _ in range(expected_messages)]
    finally:
        for process in processes:
            process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    return messages


@pytest.mark.slow
@pytest.mark.parametrize("expected", [0, 1])
def test_expected_version_is_atomic_across_processes(
    store: FilePersistence, directory: Path, expected: int
) -> None:
    if expected:
        store.save(WorkflowSnapshot("w", state={"by": "parent"}))
    outcomes = _run_processes(_conditional_save, (str(directory), expected), PROCESSES)

    winners = [o for o in outcomes if o[0] == "won"]
    assert len(winners) == 1, outcomes
    assert sum(o[0] == "conflict" for o in outcomes) == PROCESSES - 1
    _, winner, version = winners[0]
    assert version == expected + 1
    loaded = store.load("w")
    assert (loaded.version, loaded.state) == (expected + 1, {"by": winner})


@pytest.mark.slow
def test_concurrent_plain_saves_lose_no_version(store: FilePersistence, directory: Path) -> None:
    per_process = 20
    returned = _run_processes(_plain_saves, (str(directory), per_process), PROCESSES)
    versions = sorted(v for batch in returned for v in batch)
    assert versions == list(range(1, PROCESSES * per_process + 1))
    assert store.load("w").version == PROCESSES * per_process
    assert temp_files(directory) == []


# -- listing without decoding, and damage ---------------------------------------------------


class RefusesToDecode(JsonSerializer):
    def loads(self, data: bytes) -> WorkflowSnapshot:
        raise AssertionError("list() must not decode snapshots")


def test_list_reads_headers_only(directory: Path) -> None:
    writer = FilePersistence(directory)
    writer.save(WorkflowSnapshot("a"))
    writer.save(WorkflowSnapshot("b"))
    writer.save(WorkflowSnapshot("a"))
    lister = FilePersistence(directory, serializer=RefusesToDecode())
    infos = lister.list()
    assert [(i.workflow_id, i.version) for i in infos] == [("a", 2), ("b", 1)]
    assert lister.prune(older_than=infos[0].updated_at) == 1  # prune reads headers only, too
    assert [i.workflow_id for i in lister.list()] == ["a"]


def test_garbage_body_still_lists_but_does_not_load(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    path = directory / file_name("w")
    header, columns, _ = path.read_bytes().split(b"\n", 2)  # what list reads: kept
    path.write_bytes(header + b"\n" + columns + b"\n" + b"\x00garbage, not a snapshot\xff" * 10)

    [info] = store.list()
    assert (info.workflow_id, info.version) == ("w", 1)
    assert store.exists("w")
    with pytest.raises(CorruptSnapshotError):
        store.load("w")
    assert store.save(WorkflowSnapshot("w", state={"v": 2})) == 2  # a fresh save repairs it
    assert store.load("w").state == {"v": 2}


def _damage(path: Path, how: str) -> None:
    header, body = path.read_bytes().split(b"\n", 1)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "no magic":
        path.write_bytes(b"hello world\n" + body)
    elif how == "bad json":
        path.write_bytes(header[:-7] + b"\n" + body)
    elif how == "missing field":
        path.write_bytes(header.replace(b'"version"', b'"versoin"') + b"\n" + body)
    elif how == "naive timestamp":
        path.write_bytes(header.replace(b"+00:00", b"") + b"\n" + body)
    elif how == "version zero":
        path.write_bytes(header.replace(b'"version": 1', b'"version": 0') + b"\n" + body)
    elif how == "id not a string":
        path.write_bytes(header.replace(b'"id": "w"', b'"id": 7') + b"\n" + body)
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["empty", "no magic", "bad json", "missing field", "naive timestamp",
     "version zero", "id not a string"],
)
def test_damaged_header_is_skipped_by_list_and_fails_load(
    store: FilePersistence, directory: Path, how: str
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    store.save(WorkflowSnapshot("intact"))
    path = directory / file_name("w")
    before = path.read_bytes()
    _damage(path, how)
    assert path.read_bytes() != before

    assert [i.workflow_id for i in store.list()] == ["intact"]
    assert store.prune(older_than=datetime.now(UTC) + timedelta(days=1)) == 1  # "intact"
    assert path.exists()  # its age is unknown: prune keeps it
    with pytest.raises(CorruptSnapshotError):
        store.load("w")
    assert store.exists("w")  # something is stored there...
    with pytest.raises(CorruptSnapshotError, match="delete"):  # ...and a save won't guess
        store.save(WorkflowSnapshot("w"))
    assert store.delete("w") is True  # the way out
    with pytest.raises(WorkflowNotFoundError):
        store.load("w")
    assert store.save(WorkflowSnapshot("w")) == 1


def test_file_copied_under_another_name_is_not_listed(
    store: FilePersistence, directory: Path
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    (directory / file_name("copy")).write_bytes((directory / file_name("w")).read_bytes())
    assert [i.workflow_id for i in store.list()] == ["w"]
    with pytest.raises(WorkflowNotFoundError):
        store.load("copy")
    assert not store.exists("copy")


def test_list_skips_what_is_not_a_snapshot_file(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store = FilePersistence(directory)
    store.save(WorkflowSnapshot("kept"))
    (directory / "nested.wfp").mkdir()  # a directory named like a snapshot file
    (directory / "junk.wfp").write_bytes(b"wfp-file 1 " + b"[" * 100_000 + b"\n")
    assert [info.workflow_id for info in store.list()] == ["kept"]
    assert store.prune(timedelta(0)) == 1


def _save_in_child(directory: str, result: Any) -> None:
    store = _forked_store[0]  # the parent's object, inherited by the fork
    assert str(store.directory) == directory
    store.save(WorkflowSnapshot("child"))
    result.put("saved")


_forked_store: list[FilePersistence] = []


def test_a_fork_while_another_thread_holds_the_lock_does_not_deadlock(tmp_path: Path) -> None:
    import multiprocessing as mp

    store = FilePersistence(tmp_path / "store")
    _forked_store[:] = [store]
    context = mp.get_context("fork")
    result = context.SimpleQueue()
    with store._thread_lock:  # as if another thread were in the middle of a save
        child = context.Process(target=_save_in_child, args=(str(store.directory), result))
        child.start()
        child.join(timeout=30)
    assert child.exitcode == 0
    assert result.get() == "saved"
    assert store.exists("child")


# -- the columns line, and files written before it existed -------------------------------

#: Written by the release before the columns line (format 1, envelope 1): the run
#: "refund-7" at version 2, interrupted at "approve", asking about a ``__main__.Quote``
#: (a class no reader has), metadata {"tenant": "acme", "user": "ana"}.
FORMAT_1_JSON = base64.b64decode(
    """
d2ZwLWZpbGUgMSB7ImlkIjogInJlZnVuZC03IiwgInZlcnNpb24iOiAyLCAiY3JlYXRlZF9hdCI6ICIyMDI2LTEx
LTI3VDE1OjMyOjU2LjQwMTc4NiswMDowMCIsICJ1cGRhdGVkX2F0IjogIjIwMjYtMTEtMjdUMTU6MzI6NTYuNDMx
MzYwKzAwOjAwIn0Kd2ZwOm1zZ3BhY2s6ODdhY2VkYTgKnwGocmVmdW5kLTeraW50ZXJydXB0ZWSBpmFtb3VudB6n
YXBwcm92ZcCQg6hxdWVzdGlvbqhBcHByb3ZlP6VxdW90Zcc3DJOuX19tYWluX186UXVvdGWpZGF0YWNsYXNzgqZh
bW91bnTHBQoxMi41MKhjdXJyZW5jeaNFVVKlYXNrZWTHCgUH6gMBCR4AAAAAkIDAgqZ0ZW5hbnSkYWNtZaR1c2Vy
o2FuYccKBQfqCxsPIDgGIXrHCgUH6gsbDyA4BiF6AQ=="""
)
#: The same release's file of "signed", saved with PickleSerializer(secret_key=b"k" * 32).
FORMAT_1_PICKLE = base64.b64decode(
    """
d2ZwLWZpbGUgMSB7ImlkIjogInNpZ25lZCIsICJ2ZXJzaW9uIjogMSwgImNyZWF0ZWRfYXQiOiAiMjAyNi0xMS0y
N1QxNTozMzowMC42Mzc2MjArMDA6MDAiLCAidXBkYXRlZF9hdCI6ICIyMDI2LTExLTI3VDE1OjMzOjAwLjYzNzYy
MCswMDowMCJ9CndmcDpwaWNrbGU6YzI2M2QxYmFmMmM1YWJlZjA3YTUwNzMyMzFjMDM3ZjQ2YWUyYTMwZTkwNzdm
MWJiN2RmM2VjZmY2MDg0MTcxZAqABZV9AQAAAAAAAIwed29ya2Zsb3dfcGVyc2lzdGVuY2UuX3NuYXBzaG90lIwQ
V29ya2Zsb3dTbmFwc2hvdJSTlCmBlH2UKIwLd29ya2Zsb3dfaWSUjAZzaWduZWSUjAZzdGF0dXOUjAZmYWlsZWSU
jAVzdGF0ZZR9lIwMY3VycmVudF9ub2RllE6MBWV2ZW50lE6MD2NvbXBsZXRlZF9ub2Rlc5RdlIwJaW50ZXJydXB0
lE6MB2hpc3RvcnmUXZSMCGF0dGVtcHRzlH2UjAVlcnJvcpROjAhtZXRhZGF0YZR9lIwGdGVuYW50lIwEYWNtZZRz
jApjcmVhdGVkX2F0lIwIZGF0ZXRpbWWUjAhkYXRldGltZZSTlEMKB+oLGw8hAAm6C5RoGowIdGltZXpvbmWUk5Ro
GowJdGltZWRlbHRhlJOUSwBLAEsAh5RSlIWUUpSGlFKUjAp1cGRhdGVkX2F0lGgcQwoH6gsbDyEACboPlGglhpRS
lIwHdmVyc2lvbpRLAHViLg=="""
)
FORMAT_1_CREATED = datetime(2026, 11, 27, 15, 32, 56, 401786, tzinfo=UTC)
FORMAT_1_UPDATED = datetime(2026, 11, 27, 15, 32, 56, 431360, tzinfo=UTC)


def test_a_format_1_file_lists_its_columns_without_importing_its_classes(
    directory: Path,
) -> None:
    directory.mkdir()
    (directory / file_name("refund-7")).write_bytes(FORMAT_1_JSON)
    lister = FilePersistence(directory, serializer=RefusesToDecode())
    modules_before = set(sys.modules)

    [info] = lister.list(status="interrupted", metadata={"tenant": "acme"})
    assert info == StoredSnapshotInfo(
        "refund-7",
        FORMAT_1_CREATED,
        FORMAT_1_UPDATED,
        2,
        status="interrupted",
        workflow_name=None,
        current_node="approve",
        interrupt={
            "question": "Approve?",
            "quote": {"amount": "12.50", "currency": "EUR"},
            "asked": "2026-03-01T09:30:00+00:00",
        },
        metadata={"tenant": "acme", "user": "ana"},
        expires_at=None,
    )
    assert lister.list(status="failed") == []
    assert lister.prune(FORMAT_1_UPDATED, status="interrupted") == 0
    assert set(sys.modules) == modules_before


def test_a_format_1_file_loads_and_its_next_save_writes_the_columns(directory: Path) -> None:
    directory.mkdir()
    path = directory / file_name("refund-7")
    path.write_bytes(FORMAT_1_JSON)
    store = FilePersistence(directory, serializer=JsonSerializer(unknown_classes="stand-in"))
    assert store.exists("refund-7")
    loaded = store.load("refund-7")
    assert (loaded.version, loaded.created_at, loaded.updated_at) == (
        2,
        FORMAT_1_CREATED,
        FORMAT_1_UPDATED,
    )
    assert loaded.metadata == {"tenant": "acme", "user": "ana"}

    loaded.status = "failed"
    assert store.save(loaded, expected_version=2) == 3
    assert path.read_bytes().startswith(b"wfp-file 2 ")
    lister = FilePersistence(directory, serializer=RefusesToDecode())
    [info] = lister.list(status="failed")
    assert (info.version, info.created_at, info.current_node) == (3, FORMAT_1_CREATED, "approve")


def test_a_format_1_file_that_cannot_be_decoded_lists_as_unknown(directory: Path) -> None:
    directory.mkdir()
    (directory / file_name("signed")).write_bytes(FORMAT_1_PICKLE)
    damaged = bytearray(FORMAT_1_JSON)
    damaged[-3] ^= 0xFF  # the checksum fails
    (directory / file_name("refund-7")).write_bytes(bytes(damaged))
    store = FilePersistence(directory)

    infos = store.list(status="unknown")
    assert sorted(ids_of(infos)) == ["refund-7", "signed"]
    assert all((i.metadata, i.interrupt, i.current_node) == ({}, None, None) for i in infos)
    assert store.list(status=["failed", "interrupted"]) == []
    signed = FilePersistence(directory, serializer=PickleSerializer(secret_key=b"k" * 32))
    assert signed.load("signed").metadata == {"tenant": "acme"}  # its data is whole
    assert store.prune(timedelta(0), status="unknown") == 2
    assert store.list() == []


_LIST_UNDER_A_MEMORY_LIMIT = textwrap.dedent(
    """
    import json, resource, sys
    from workflow_persistence import FilePersistence

    store = FilePersistence(sys.argv[1])
    limit = 1 << 30  # address space: a third of the file
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps([[i.workflow_id, i.version, i.status] for i in store.list()]))
    """
)


@pytest.mark.timeout(120)
def test_a_big_format_1_file_lists_as_unknown_without_being_read(directory: Path) -> None:
    directory.mkdir()
    path = directory / file_name("refund-7")
    path.write_bytes(FORMAT_1_JSON)
    with open(path, "r+b") as f:
        f.truncate(3 << 30)  # sparse: a 3 GiB body behind a valid header
    done = subprocess.run(
        [sys.executable, "-c", _LIST_UNDER_A_MEMORY_LIMIT, str(directory)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["refund-7", 2, "unknown"]]


def ids_of(infos: list[StoredSnapshotInfo]) -> list[str]:
    return [info.workflow_id for info in infos]


def test_list_and_prune_read_the_columns_line_only(directory: Path) -> None:
    writer = FilePersistence(directory)
    writer.save(WorkflowSnapshot("a", status="failed", metadata={"tenant": "acme"}))
    writer.save(WorkflowSnapshot("b", workflow_name="refunds", interrupt={"q": "?"}))
    lister = FilePersistence(directory, serializer=RefusesToDecode())
    assert ids_of(lister.list(metadata={"tenant": "acme"})) == ["a"]
    [b] = lister.list(workflow_name="refunds", status="interrupted")
    assert (b.workflow_id, b.interrupt) == ("b", {"q": "?"})
    assert lister.prune(timedelta(0), status="failed") == 1
    assert ids_of(lister.list()) == ["b"]


def test_columns_keep_any_text_exactly(store: FilePersistence) -> None:
    odd = "line\nbreak \u2028 \x00 \"quoted\" \\ \r\t end"
    store.save(
        WorkflowSnapshot(
            "w",
            workflow_name=odd,
            current_node=odd,
            interrupt={odd: odd, "n": 1},
            metadata={"tenant\n": "a\nb", "x": "\u2029"},
        )
    )
    [info] = store.list(workflow_name=odd)
    assert info.workflow_name == odd and info.current_node == odd
    assert info.metadata == {"tenant\n": "a\nb", "x": "\u2029"}
    assert info.interrupt == {odd.replace("\x00", "\ufffd"): odd.replace("\x00", "\ufffd"), "n": 1}
    assert store.load("w").workflow_name == odd


def test_expiry_is_kept_in_utc_in_the_header(store: FilePersistence, directory: Path) -> None:
    expires_at = datetime(2099, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    store.save(WorkflowSnapshot("w", expires_at=expires_at))
    header = (directory / file_name("w")).read_bytes().split(b"\n", 1)[0]
    assert b'"expires_at": "2099-01-02T01:04:05.000006+00:00"' in header
    [info] = store.list()
    assert info.expires_at == expires_at and info.expires_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "how", ["longer", "shorter", "zero", "huge", "not json", "no status", "status not text"]
)
def test_a_damaged_columns_line_is_not_listed(
    store: FilePersistence, directory: Path, how: str
) -> None:
    store.save(WorkflowSnapshot("w", state={"v": 1}))
    store.save(WorkflowSnapshot("intact"))
    path = directory / file_name("w")
    header, columns, data = path.read_bytes().split(b"\n", 2)
    size = f'"columns": {len(columns) + 1}'.encode()
    if how == "not json":
        columns = b"[" + columns[1:]
    elif how == "no status":
        columns = columns.replace(b'"status"', b'"statvs"')
    elif how == "status not text":
        columns = columns.replace(b'"status": "interrupted"', b'"status": 1234567890123')
    else:
        new_size = {"longer": len(columns) + 2, "shorter": len(columns), "zero": 0}.get(
            how, 1 << 30
        )
        header = header.replace(size, f'"columns": {new_size}'.encode())
    path.write_bytes(header + b"\n" + columns + b"\n" + data)

    assert ids_of(store.list()) == ["intact"]
    if how in ("not json", "no status", "status not text"):  # load reads header and data
        assert store.load("w").state == {"v": 1}
    else:
        with pytest.raises(CorruptSnapshotError, match="damaged header"):
            store.load("w")
    assert store.delete("w") is True


def test_names_too_long_to_list_are_refused(store: FilePersistence, directory: Path) -> None:
    with pytest.raises(PayloadTooLargeError, match="workflow_name"):
        store.save(WorkflowSnapshot("w", workflow_name="n" * (1 << 20)))
    assert snapshot_files(directory) == []
