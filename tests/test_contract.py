"""The persistence contract (API.md section 2), run on all five backends."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from workflow_persistence import (
    ConflictError,
    CorruptSnapshotError,
    InvalidArgumentError,
    InvalidWorkflowIdError,
    Persistence,
    StoredSnapshotInfo,
    WorkflowNotFoundError,
    WorkflowSnapshot,
)

from .samples import assert_same_content, rich_snapshot, serializer


@pytest.fixture
def store(persistence_factory: Callable[..., Persistence]) -> Persistence:
    """The backend under test, with the sample types registered."""
    return persistence_factory(serializer())


def test_rich_snapshot_round_trips(store: Persistence) -> None:
    original = rich_snapshot()
    store.save(original)
    loaded = store.load("refund-42")
    assert_same_content(loaded, original)
    assert loaded.state["datetime_zone"].fold == 1
    assert type(loaded.state["int_enum"]) is type(original.state["int_enum"])
    assert type(loaded.state["tuple"]) is tuple
    assert loaded.state["bytearray"] == b"mutable"  # binary data comes back as bytes


def test_versions_count_up_from_one(store: Persistence) -> None:
    snapshot = WorkflowSnapshot("w")
    assert [store.save(snapshot) for _ in range(3)] == [1, 2, 3]
    assert snapshot.version == 3
    assert store.load("w").version == 3


def test_save_keeps_created_at_and_moves_updated_at(store: Persistence) -> None:
    snapshot = WorkflowSnapshot("w", state={"n": 1})
    store.save(snapshot)
    first = store.load("w")
    assert first.created_at == first.updated_at == snapshot.updated_at
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    snapshot.state["n"] = 2
    store.save(snapshot)
    second = store.load("w")
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.state == {"n": 2}


def test_timestamps_keep_microseconds(store: Persistence) -> None:
    snapshot = WorkflowSnapshot("w")
    store.save(snapshot)
    loaded = store.load("w")
    assert loaded.updated_at == snapshot.updated_at  # exact, microseconds included
    assert abs(loaded.updated_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_expected_version_zero_only_creates(store: Persistence) -> None:
    assert store.save(WorkflowSnapshot("w", state={"v": "first"}), expected_version=0) == 1
    with pytest.raises(ConflictError):
        store.save(WorkflowSnapshot("w", state={"v": "second"}), expected_version=0)
    loaded = store.load("w")
    assert loaded.version == 1 and loaded.state == {"v": "first"}


def test_expected_version_conflicts_change_nothing(store: Persistence) -> None:
    snapshot = WorkflowSnapshot("w", state={"v": 1})
    store.save(snapshot)
    store.save(snapshot)
    before = store.load("w")
    for wrong in (1, 3, 0):
        with pytest.raises(ConflictError) as caught:
            store.save(WorkflowSnapshot("w", state={"v": "stale"}), expected_version=wrong)
        assert caught.value.expected_version == wrong
    after = store.load("w")
    assert (after.version, after.state, after.updated_at) == (2, {"v": 1}, before.updated_at)
    assert store.save(WorkflowSnapshot("w", state={"v": 3}), expected_version=2) == 3
    assert store.load("w").state == {"v": 3}


def test_expected_version_on_missing_record_conflicts(store: Persistence) -> None:
    with pytest.raises(ConflictError):
        store.save(WorkflowSnapshot("w"), expected_version=1)
    assert not store.exists("w")


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1"])
def test_bad_expected_version_is_refused_before_io(store: Persistence, bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        store.save(WorkflowSnapshot("w"), expected_version=bad)  # type: ignore[arg-type]
    assert not store.exists("w")


def test_loaded_snapshots_are_copies_not_aliases(store: Persistence) -> None:
    snapshot = WorkflowSnapshot("w", state={"items": [1, 2]})
    store.save(snapshot)
    snapshot.state["items"].append(3)  # a change after saving is not stored
    first = store.load("w")
    first.state["items"].append(99)  # nor is a change to a loaded copy
    second = store.load("w")
    assert first is not second
    assert second.state == {"items": [1, 2]}


def test_load_of_unknown_id_raises_not_found(store: Persistence) -> None:
    with pytest.raises(WorkflowNotFoundError) as caught:
        store.load("missing")
    assert isinstance(caught.value, KeyError)
    assert "missing" in str(caught.value)


def test_delete_and_exists(store: Persistence) -> None:
    store.save(WorkflowSnapshot("w"))
    assert store.exists("w")
    assert store.delete("w") is True
    assert store.delete("w") is False
    assert not store.exists("w")
    with pytest.raises(WorkflowNotFoundError):
        store.load("w")
    assert store.save(WorkflowSnapshot("w")) == 1  # a new record starts again at 1


def _save_at(store: Persistence, workflow_id: str) -> datetime:
    snapshot = WorkflowSnapshot(workflow_id)
    store.save(snapshot)
    return snapshot.updated_at


def test_list_newest_first_without_decoding(store: Persistence) -> None:
    for wid in ("a", "b", "c"):
        _save_at(store, wid)
    store.save(WorkflowSnapshot("a"))  # "a" is now the most recent, at version 2
    infos = store.list()
    assert [i.workflow_id for i in infos] == ["a", "c", "b"]
    assert all(isinstance(i, StoredSnapshotInfo) for i in infos)
    assert infos[0].version == 2 and infos[0].created_at < infos[0].updated_at


def test_list_filters_and_limits(store: Persistence) -> None:
    times = {wid: _save_at(store, wid) for wid in ("a", "b", "c", "d")}
    assert [i.workflow_id for i in store.list(limit=2)] == ["d", "c"]
    older = store.list(updated_before=times["c"])
    assert [i.workflow_id for i in older] == ["b", "a"]
    page = store.list(updated_before=times["d"], limit=2)
    assert [i.workflow_id for i in page] == ["c", "b"]
    assert store.list(limit=0) == []


def test_list_refuses_naive_datetimes(store: Persistence) -> None:
    with pytest.raises(InvalidArgumentError):
        store.list(updated_before=datetime(2026, 1, 1))
    with pytest.raises(InvalidArgumentError):
        store.list(limit=-1)


def test_prune_by_age_and_by_datetime(store: Persistence) -> None:
    _save_at(store, "old-1")
    _save_at(store, "old-2")
    cutoff = datetime.now(UTC)
    _save_at(store, "new")
    assert store.prune(cutoff) == 2
    assert [i.workflow_id for i in store.list()] == ["new"]
    assert store.prune(timedelta(days=1)) == 0
    assert store.prune(timedelta(0)) == 1
    assert store.list() == []


def test_prune_refuses_bad_arguments(store: Persistence) -> None:
    with pytest.raises(InvalidArgumentError):
        store.prune(datetime(2026, 1, 1))
    with pytest.raises(InvalidArgumentError):
        store.prune(timedelta(days=-1))
    with pytest.raises(InvalidArgumentError):
        store.prune("7d")  # type: ignore[arg-type]


# -- workflow ids ---------------------------------------------------------------------------

BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 256, id="256-chars"),
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param("nul\x00inside", id="nul"),
    pytest.param("lone \ud800 surrogate", id="lone-surrogate"),
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_invalid_ids_are_refused_before_any_io(store: Persistence, bad_id: object) -> None:
    for call in (
        lambda: store.save(WorkflowSnapshot(bad_id)),  # type: ignore[arg-type]
        lambda: store.load(bad_id),  # type: ignore[arg-type]
        lambda: store.delete(bad_id),  # type: ignore[arg-type]
        lambda: store.exists(bad_id),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidWorkflowIdError) as caught:
            call()
        assert isinstance(caught.value, ValueError)
    assert store.list() == []


@pytest.mark.parametrize(
    "workflow_id",
    [
        "../../etc/passwd",
        "/absolute/path",
        "..",
        ".",
        "a/b\\c",
        "con",
        "nul.txt",
        "with\nnewline\tand\rcontrols",
        " leading and trailing ",
        "x" * 255,
        "🚀" * 255,
        "日本語の識別子",
    ],
)
def test_any_unicode_text_is_a_valid_id(store: Persistence, workflow_id: str) -> None:
    store.save(WorkflowSnapshot(workflow_id, state={"id": workflow_id}))
    assert store.load(workflow_id).state == {"id": workflow_id}
    assert [i.workflow_id for i in store.list()] == [workflow_id]
    assert store.delete(workflow_id)


def test_ids_compare_by_exact_code_points(store: Persistence) -> None:
    word = "Café"
    ids = [
        "a",
        "A",
        "a ",
        " a",
        unicodedata.normalize("NFC", word),
        unicodedata.normalize("NFD", word),
        "ß",
        "ss",
    ]
    assert len(set(ids)) == len(ids)
    for wid in ids:
        store.save(WorkflowSnapshot(wid, state={"id": wid}))
    for wid in ids:
        assert store.load(wid).state == {"id": wid}
    assert sorted(i.workflow_id for i in store.list()) == sorted(ids)


def test_corrupt_data_raises_corrupt_snapshot_error(store: Persistence) -> None:
    """A record whose data was damaged in storage loads as CorruptSnapshotError."""
    good = store.serializer.dumps(WorkflowSnapshot("w", state={"k": "value"}))

    class Damaging:
        def dumps(self, snapshot: WorkflowSnapshot) -> bytes:
            return good[:-3] + b"XYZ"

        def loads(self, data: bytes) -> WorkflowSnapshot:
            return store.serializer.loads(data)

    real = store.serializer
    store.serializer = Damaging()
    try:
        store.save(WorkflowSnapshot("w"))
    finally:
        store.serializer = real
    with pytest.raises(CorruptSnapshotError):
        store.load("w")


def test_prune_with_the_largest_age_prunes_nothing(store: Persistence) -> None:
    store.save(WorkflowSnapshot("w"))
    assert store.prune(timedelta.max) == 0
    assert store.exists("w")
