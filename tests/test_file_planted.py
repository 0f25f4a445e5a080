"""FilePersistence and what others plant in its directory.

A FIFO, a symlink, a device, a socket or a directory under a snapshot's file name or the
lock's, or a file far larger than any snapshot: reads raise CorruptSnapshotError, writes
StorageUnavailableError, at once; ``list`` and ``prune`` pass such entries by; ``delete``
unlinks the entry itself, never what it points to. Nothing is followed and nothing special
is opened. Without the fix these tests fail rather than hang: each call is timed and each
test has a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from workflow_persistence import (
    CorruptSnapshotError,
    FilePersistence,
    InvalidArgumentError,
    PayloadTooLargeError,
    StorageUnavailableError,
    WorkflowSnapshot,
)
from workflow_persistence._storage.file import _LOCK_NAME, file_name

#: Far longer than any of these calls takes, far shorter than "for ever".
AT_ONCE = 2.0
T = TypeVar("T")
Plant = Callable[[Path, Path], None]


def at_once(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(...)``, failing the test if it takes longer than AT_ONCE (or raises late)."""
    start = time.monotonic()
    try:
        return call(*args, **kwargs)
    finally:
        elapsed = time.monotonic() - start
        assert elapsed < AT_ONCE, f"{getattr(call, '__name__', call)} took {elapsed:.1f} s"


def contents(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory``: a file's bytes, a link's target."""
    found: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = os.readlink(path)
        elif path.is_dir():
            found[key] = "a directory"
        else:
            found[key] = path.read_bytes()
    return found


def identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_ino, st.st_mode


# -- what can be planted --------------------------------------------------------------------


def plant_fifo(path: Path, outside: Path) -> None:
    os.mkfifo(path, 0o600)


def plant_link_to_a_snapshot_outside(path: Path, outside: Path) -> None:
    """A genuine snapshot of the same id, stored outside the directory, linked in."""
    target = outside / "elsewhere"
    FilePersistence(target).save(WorkflowSnapshot("w", state={"from": "outside"}))
    os.symlink(target / file_name("w"), path)


def plant_link_to_a_file_outside(path: Path, outside: Path) -> None:
    (outside / "victim").write_bytes(b"someone else's file")
    os.symlink(outside / "victim", path)


def plant_dangling_link(path: Path, outside: Path) -> None:
    os.symlink(outside / "created-through-the-link", path)


def plant_device(path: Path, outside: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:  # pragma: no cover - only without CAP_MKNOD
        pytest.skip("creating a device node needs CAP_MKNOD")


def plant_socket(path: Path, outside: Path) -> None:
    # A socket's path is limited to about 100 bytes: bind it by its name, from its directory.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path.name)
    finally:
        os.chdir(cwd)


def plant_directory(path: Path, outside: Path) -> None:
    path.mkdir()
    (path / "inside").write_bytes(b"kept")


UNDER_A_SNAPSHOT_NAME: list[Plant] = [
    plant_fifo,
    plant_link_to_a_snapshot_outside,
    plant_dangling_link,
    plant_device,
    plant_socket,
    plant_directory,
]

AS_THE_LOCK: list[Plant] = [
    plant_fifo,
    plant_link_to_a_file_outside,
    plant_dangling_link,
    plant_device,
    plant_directory,
]


def _name(plant: Plant) -> str:
    return plant.__name__.removeprefix("plant_")


def remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()


# -- under a snapshot's file name -----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("plant", UNDER_A_SNAPSHOT_NAME, ids=_name)
def test_an_entry_planted_under_a_snapshot_name_is_never_followed_nor_opened(
    tmp_path: Path, plant: Plant
) -> None:
    directory, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    store = FilePersistence(directory)
    store.save(WorkflowSnapshot("intact"))
    path = directory / file_name("w")
    plant(path, outside)
    planted, outside_before = identity(path), contents(outside)
    not_a_file = "not a regular file|symbolic link"

    # Reads: CorruptSnapshotError that names what is there and what to do.
    with pytest.raises(CorruptSnapshotError, match=not_a_file):
        at_once(store.load, "w")
    with pytest.raises(CorruptSnapshotError, match=not_a_file):
        at_once(store.exists, "w")
    assert [i.workflow_id for i in at_once(store.list)] == ["intact"]

    # Writes: StorageUnavailableError, and the lock is not kept by the failed writer.
    with pytest.raises(StorageUnavailableError, match=not_a_file):
        at_once(store.save, WorkflowSnapshot("w"))
    with pytest.raises(StorageUnavailableError, match=not_a_file):
        at_once(store.delete, "w", expected_version=1)
    another_writer = FilePersistence(directory)
    assert at_once(another_writer.save, WorkflowSnapshot("intact")) == 2
    assert at_once(store.prune, datetime.now(UTC) + timedelta(days=1)) == 1  # "intact"

    assert identity(path) == planted
    assert contents(outside) == outside_before

    # The way out: delete() unlinks the entry itself, never what a link points to.
    if plant is plant_directory:
        with pytest.raises(StorageUnavailableError, match="by hand"):
            at_once(store.delete, "w")
        assert identity(path) == planted
        remove_entry(path)
    else:
        assert at_once(store.delete, "w") is True
        assert not os.path.lexists(path)
    assert contents(outside) == outside_before
    assert store.save(WorkflowSnapshot("w", state={"v": "mine"})) == 1
    assert store.load("w").state == {"v": "mine"}
    assert path.is_file() and not path.is_symlink()


@pytest.mark.timeout(60)
def test_a_directory_given_as_a_symlink_is_used_but_links_inside_it_are_not(
    tmp_path: Path,
) -> None:
    real, outside = tmp_path / "real", tmp_path / "outside"
    real.mkdir()
    outside.mkdir()
    (tmp_path / "configured").symlink_to(real)
    store = FilePersistence(tmp_path / "configured")  # the user's choice: followed
    assert store.save(WorkflowSnapshot("mine")) == 1
    assert (real / file_name("mine")).is_file()

    plant_link_to_a_snapshot_outside(real / file_name("w"), outside)
    with pytest.raises(CorruptSnapshotError, match="symbolic link"):
        at_once(store.load, "w")
    assert [i.workflow_id for i in store.list()] == ["mine"]


# -- as the lock --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("plant", AS_THE_LOCK, ids=_name)
def test_an_entry_planted_as_the_lock_stops_writers_at_once_and_is_never_followed(
    tmp_path: Path, plant: Plant
) -> None:
    directory, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    store = FilePersistence(directory)
    store.save(WorkflowSnapshot("w"))
    lock = directory / _LOCK_NAME
    lock.unlink()
    plant(lock, outside)
    planted, outside_before = identity(lock), contents(outside)

    refused = "lock.*(not a regular file|symbolic link)"
    with pytest.raises(StorageUnavailableError, match=refused):
        at_once(store.save, WorkflowSnapshot("w"))
    with pytest.raises(StorageUnavailableError, match=refused):
        at_once(store.delete, "w")
    with pytest.raises(StorageUnavailableError, match=refused):
        at_once(store.prune, timedelta(0))
    with pytest.raises(StorageUnavailableError, match=refused):
        at_once(FilePersistence, directory)  # opening sweeps temp files, under the lock

    # Readers take no lock.
    assert at_once(store.load, "w").version == 1
    assert at_once(store.exists, "w") is True
    assert [i.workflow_id for i in at_once(store.list)] == ["w"]

    assert identity(lock) == planted
    assert contents(outside) == outside_before  # a dangling link's target is not created
    remove_entry(lock)
    assert store.save(WorkflowSnapshot("w")) == 2
    assert stat.S_ISREG(os.lstat(lock).st_mode)


# -- size -----------------------------------------------------------------------------------

_HUGE_FILE = textwrap.dedent(
    """
    import json, resource, sys, time
    from workflow_persistence import FilePersistence, WorkflowSnapshot

    store = FilePersistence(sys.argv[1])
    limit = 1 << 30  # address space: a third of the file
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    calls = [
        ("load", lambda: store.load("big")),
        ("exists", lambda: store.exists("big")),
        ("list", lambda: [(i.workflow_id, i.version) for i in store.list()]),
        ("save", lambda: store.save(WorkflowSnapshot("big"))),
    ]
    before = peak_kib()
    outcomes = {}
    for name, call in calls:
        start = time.monotonic()
        try:
            outcome = repr(call())
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        outcomes[name] = [outcome, time.monotonic() - start]
    print(json.dumps({"outcomes": outcomes, "peak_growth_kib": peak_kib() - before}))
    """
)


@pytest.mark.timeout(120)
def test_a_huge_file_is_refused_without_being_read(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store = FilePersistence(directory)
    store.save(WorkflowSnapshot("big"))
    with open(directory / file_name("big"), "r+b") as f:
        f.truncate(3 << 30)  # 3 GiB behind a valid header; sparse, so no disk is used

    done = subprocess.run(
        [sys.executable, "-c", _HUGE_FILE, str(directory)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    outcomes = {name: outcome for name, (outcome, _) in report["outcomes"].items()}
    assert outcomes["load"].startswith("CorruptSnapshotError"), outcomes
    assert "max_size" in outcomes["load"]
    # Only the header line is read for the others: the file is listed and replaceable.
    assert outcomes["exists"] == "True"
    assert outcomes["list"] == "[('big', 1)]"
    assert outcomes["save"] == "2"
    assert all(seconds < AT_ONCE for _, seconds in report["outcomes"].values()), report
    assert report["peak_growth_kib"] < 16 * 1024, report
    assert os.path.getsize(directory / file_name("big")) < 4096


def test_max_size_caps_the_files_written_and_read(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    capped = FilePersistence(directory, max_size=4096)
    assert capped.max_size == 4096
    assert capped.save(WorkflowSnapshot("w", state={"blob": "x" * 100})) == 1
    before = (directory / file_name("w")).read_bytes()

    with pytest.raises(PayloadTooLargeError, match="max_size") as too_large:
        capped.save(WorkflowSnapshot("w", state={"blob": os.urandom(8000)}))
    assert too_large.value.limit == 4096
    assert too_large.value.size is not None and too_large.value.size > 4096
    assert (directory / file_name("w")).read_bytes() == before
    assert sorted(os.listdir(directory)) == sorted([_LOCK_NAME, file_name("w")])  # no temp

    roomy = FilePersistence(directory)  # the default cap: 1 GiB
    assert roomy.max_size == 1 << 30
    assert roomy.save(WorkflowSnapshot("w", state={"blob": os.urandom(8000)})) == 2
    with pytest.raises(CorruptSnapshotError, match="max_size"):
        capped.load("w")
    assert capped.exists("w")
    assert [(i.workflow_id, i.version) for i in capped.list()] == [("w", 2)]
    assert len(roomy.load("w").state["blob"]) == 8000


@pytest.mark.parametrize("max_size", [0, -1, True, 1.5, "1024", None])
def test_max_size_must_be_a_positive_int(tmp_path: Path, max_size: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="max_size"):
        FilePersistence(tmp_path / "store", max_size=max_size)
    assert not (tmp_path / "store").exists()
