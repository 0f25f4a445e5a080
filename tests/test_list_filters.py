"""Listing what waits, and retention (README: "list what waits for a user"), on all five
backends: filters by status, workflow name and metadata, time bounds, limit and cursor
paging, the listed columns, expiry, and prune by age and status.

Timestamps that must tie, or lie in the past or the future, come from a frozen clock: the
library reads time through ``utc_now`` only, and the fixture replaces it wherever it was
imported, so every backend (the databases included) writes and compares the same instants.
"""

from __future__ import annotations

import sys
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from workflow_persistence import (
    ConflictError,
    InvalidArgumentError,
    Persistence,
    StoredSnapshotInfo,
    WorkflowNotFoundError,
    WorkflowSnapshot,
    _snapshot,
)

from .samples import Money, serializer


class Clock:
    """A stand-in for the library's clock that moves only when told."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta = timedelta(seconds=1)) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(datetime.now(UTC))
    real = _snapshot.utc_now
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("workflow_persistence") and getattr(module, "utc_now", None) is real:
            monkeypatch.setattr(module, "utc_now", clock)
            patched += 1
    assert patched > 1  # the snapshot module and at least one backend's
    return clock


def save(
    store: Persistence, workflow_id: str, *, expected_version: int | None = None, **fields: Any
) -> WorkflowSnapshot:
    snapshot = WorkflowSnapshot(workflow_id, **fields)
    store.save(snapshot, expected_version=expected_version)
    return snapshot


def ids(infos: list[StoredSnapshotInfo]) -> list[str]:
    return [info.workflow_id for info in infos]


def listed_ids(store: Persistence, **filters: Any) -> set[str]:
    return set(ids(store.list(**filters)))


# -- status and workflow name -----------------------------------------------------------------


def test_status_filter_takes_one_status_or_several(persistence: Persistence) -> None:
    save(persistence, "waits", status="interrupted")
    save(persistence, "broke", status="failed")
    save(persistence, "stuck", status="running")
    save(persistence, "done", status="completed", result=42)

    assert ids(persistence.list(status="failed")) == ["broke"]
    assert ids(persistence.list(status="interrupted")) == ["waits"]
    assert listed_ids(persistence, status=["interrupted", "failed"]) == {"waits", "broke"}
    assert listed_ids(persistence, status=("running", "completed")) == {"stuck", "done"}
    assert listed_ids(persistence, status={"failed"}) == {"broke"}
    assert persistence.list(status=[]) == []  # no status at all: nothing
    assert persistence.list(status="unknown") == []
    assert len(persistence.list()) == 4


@pytest.mark.parametrize("bad", ["paused", "Interrupted", ["failed", "nope"], 3, [None], b"failed"])
def test_a_status_that_cannot_be_stored_is_refused(persistence: Persistence, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="status"):
        persistence.list(status=bad)
    with pytest.raises(InvalidArgumentError, match="status"):
        persistence.prune(timedelta(0), status=bad)


def test_workflow_name_filter_is_exact(persistence: Persistence) -> None:
    save(persistence, "r1", workflow_name="refunds")
    save(persistence, "r2", workflow_name="Refunds")
    save(persistence, "r3", workflow_name="refunds ")
    save(persistence, "o1", workflow_name="onboarding")
    save(persistence, "anon")

    assert ids(persistence.list(workflow_name="refunds")) == ["r1"]
    assert listed_ids(persistence, workflow_name=["refunds", "onboarding"]) == {"r1", "o1"}
    assert persistence.list(workflow_name="refund") == []
    assert persistence.list(workflow_name=[]) == []
    both = persistence.list(workflow_name="refunds", status="interrupted")
    assert ids(both) == ["r1"]
    assert persistence.list(workflow_name="refunds", status="failed") == []


# -- metadata ---------------------------------------------------------------------------------

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")
INJECTION = "x' OR '1'='1"

METADATA = {
    "acme": {"tenant": "acme", "user": "ana"},
    "upper": {"tenant": "ACME"},
    "spaced": {"tenant": "acme "},
    "nfc": {"tenant": CAFE_NFC},
    "nfd": {"tenant": CAFE_NFD},
    "injection": {"tenant": INJECTION},
    "true": {"flag": True},
    "one": {"flag": 1},
    "text-true": {"flag": "true"},
    "zero": {"flag": 0},
    "false": {"flag": False},
    "big": {"n": 2**53 + 1},
    "negative": {"n": -7},
    "nested": {"owner": {"tenant": "acme"}},
    "dotted": {"a.b": "x"},
    "path": {"a": {"b": "x"}},
    "dashed": {"tenant-id": "t-1", "tenant": "acme", "user": "bo"},
    "none": {"tenant": None},
    "empty": {},
}


@pytest.fixture
def tagged(persistence: Persistence) -> Persistence:
    for workflow_id, metadata in METADATA.items():
        save(persistence, workflow_id, metadata=metadata)
    return persistence


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ({"tenant": "acme"}, {"acme", "dashed"}),
        ({"tenant": "ACME"}, {"upper"}),
        ({"tenant": "acme "}, {"spaced"}),
        ({"tenant": CAFE_NFC}, {"nfc"}),
        ({"tenant": CAFE_NFD}, {"nfd"}),
        ({"tenant": INJECTION}, {"injection"}),
        ({"tenant": "x"}, set()),
        ({"flag": True}, {"true"}),
        ({"flag": 1}, {"one"}),
        ({"flag": "true"}, {"text-true"}),
        ({"flag": False}, {"false"}),
        ({"flag": 0}, {"zero"}),
        ({"n": 2**53 + 1}, {"big"}),
        ({"n": 2**53}, set()),
        ({"n": -7}, {"negative"}),
        ({"a.b": "x"}, {"dotted"}),
        ({"tenant-id": "t-1"}, {"dashed"}),
        ({"tenant": "acme", "user": "ana"}, {"acme"}),
        ({"tenant": "acme", "user": "bo"}, {"dashed"}),
        ({"tenant": "acme", "user": "cy"}, set()),
        ({}, set(METADATA)),
    ],
    ids=repr,
)
def test_metadata_matches_exactly(
    tagged: Persistence, wanted: dict[str, Any], expected: set[str]
) -> None:
    assert listed_ids(tagged, metadata=wanted) == expected


def test_metadata_values_are_bound_not_spliced(tagged: Persistence) -> None:
    for value in (INJECTION, "' OR 1=1 --", '" OR ""="', "%", "_", "\\", "acme%", "a%"):
        assert listed_ids(tagged, metadata={"tenant": value}) <= {"injection"}
    assert ids(tagged.list(metadata={"tenant": INJECTION})) == ["injection"]
    assert len(tagged.list()) == len(METADATA)  # and the table is whole


BAD_KEYS = [
    "a b",
    "a'",
    "",
    "x" * 65,
    "tenant') OR 1=1 --",
    "tenant' OR '1'='1",
    '$."tenant"',
    "$.tenant",
    "a\"b",
    "tenant\n",
    "ténant",
    "a/b",
    "a[0]",
    1,
    None,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_a_bad_metadata_key_is_refused_before_any_io(
    persistence: Persistence, monkeypatch: pytest.MonkeyPatch, key: Any
) -> None:
    save(persistence, "w", metadata={"tenant": "acme"})

    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the storage was asked")

    monkeypatch.setattr(persistence, "_infos", no_io)
    with pytest.raises(InvalidArgumentError, match="key"):
        persistence.list(metadata={key: "acme"})
    with pytest.raises(InvalidArgumentError, match="key"):
        persistence.list(metadata={"tenant": "acme", key: "acme"})


def test_the_longest_allowed_key_and_every_allowed_character_work(
    persistence: Persistence,
) -> None:
    key = "A-z_0.9" + "k" * 57
    assert len(key) == 64
    save(persistence, "w", metadata={key: "v"})
    assert ids(persistence.list(metadata={key: "v"})) == ["w"]


@pytest.mark.parametrize(
    "value",
    [1.0, 1.5, None, [1], ["acme"], {"a": 1}, b"acme", Decimal("1"), date(2026, 1, 1)],
    ids=repr,
)
def test_a_metadata_value_that_cannot_be_matched_exactly_is_refused(
    persistence: Persistence, monkeypatch: pytest.MonkeyPatch, value: Any
) -> None:
    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the storage was asked")

    monkeypatch.setattr(persistence, "_infos", no_io)
    with pytest.raises(InvalidArgumentError, match="str, int or bool"):
        persistence.list(metadata={"tenant": value})


@pytest.mark.parametrize("bad", [["tenant"], "tenant=acme", 1, ("tenant", "acme")], ids=repr)
def test_metadata_must_be_a_mapping(persistence: Persistence, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="metadata"):
        persistence.list(metadata=bad)


# -- time bounds, limit and cursor ------------------------------------------------------------


def test_updated_before_and_after_are_strict_bounds(persistence: Persistence, clock: Clock) -> None:
    times = {}
    for workflow_id in ("a", "b", "c", "d"):
        times[workflow_id] = save(persistence, workflow_id).updated_at
        clock.advance()
    assert [i.updated_at for i in persistence.list()] == [times[w] for w in "dcba"]

    assert ids(persistence.list(updated_after=times["b"])) == ["d", "c"]
    assert ids(persistence.list(updated_before=times["c"])) == ["b", "a"]
    assert ids(persistence.list(updated_after=times["a"], updated_before=times["d"])) == ["c", "b"]
    assert persistence.list(updated_after=times["d"]) == []
    assert persistence.list(updated_after=times["b"], updated_before=times["c"]) == []
    assert ids(persistence.list(updated_after=times["a"], limit=2)) == ["d", "c"]
    with pytest.raises(InvalidArgumentError, match="updated_after"):
        persistence.list(updated_after=datetime(2026, 1, 1))  # naive


def test_cursor_pages_through_records_that_share_an_updated_at(
    persistence: Persistence, clock: Clock
) -> None:
    tied = [f"tied-{n:02}" for n in range(7)]
    for workflow_id in tied:  # the clock stands still: seven records, one instant
        save(persistence, workflow_id, status="interrupted")
    clock.advance()
    save(persistence, "later-1", status="interrupted")
    save(persistence, "later-2", status="failed")
    clock.advance()
    save(persistence, "latest", status="interrupted")

    everything = persistence.list()
    assert len({i.updated_at for i in everything if i.workflow_id in tied}) == 1
    expected = ["latest", "later-2", "later-1", *sorted(tied, reverse=True)]
    assert ids(everything) == expected

    for page_size in (1, 2, 3, 4, 7, 10):
        assert ids(_all_pages(persistence, page_size)) == expected
    waiting = [w for w in expected if w != "later-2"]
    assert ids(_all_pages(persistence, 3, status="interrupted")) == waiting


def test_ties_are_ordered_by_the_ids_code_points(persistence: Persistence, clock: Clock) -> None:
    tied = ["a", "A", "a ", "a-b", "ab", "aB", "B", "b", CAFE_NFC, CAFE_NFD, "Z", "~", "é"]
    for workflow_id in tied:
        save(persistence, workflow_id)
    expected = sorted(tied, reverse=True)  # by code points, as ids compare everywhere
    assert ids(persistence.list()) == expected
    assert ids(_all_pages(persistence, 2)) == expected
    assert ids(_all_pages(persistence, 5)) == expected


def _all_pages(store: Persistence, size: int, **filters: Any) -> list[StoredSnapshotInfo]:
    pages: list[list[StoredSnapshotInfo]] = []
    cursor = None
    while True:
        page = store.list(limit=size, cursor=cursor, **filters)
        assert len(page) <= size
        if not page:
            break
        pages.append(page)
        cursor = page[-1]
    return [info for page in pages for info in page]


def test_a_cursor_must_be_a_listed_record(persistence: Persistence) -> None:
    with pytest.raises(InvalidArgumentError, match="cursor"):
        persistence.list(cursor="tied-03")  # type: ignore[arg-type]


def test_limit(persistence: Persistence, clock: Clock) -> None:
    for workflow_id in ("a", "b", "c"):
        save(persistence, workflow_id)
        clock.advance()
    assert ids(persistence.list(limit=2)) == ["c", "b"]
    assert ids(persistence.list(limit=5)) == ["c", "b", "a"]
    assert persistence.list(limit=0) == []
    for bad in (-1, 1.0, True, "2"):
        with pytest.raises(InvalidArgumentError, match="limit"):
            persistence.list(limit=bad)  # type: ignore[arg-type]


# -- what a listed record shows ---------------------------------------------------------------


@dataclass
class Invoice:
    number: int
    lines: tuple[str, ...]


def test_listed_fields_show_the_question_and_metadata_as_plain_json(
    persistence_factory: Callable[..., Persistence],
) -> None:
    registered = serializer()
    registered.register(Invoice)
    store = persistence_factory(registered)
    asked_at = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)
    ticket = uuid.UUID("12345678-1234-5678-1234-567812345678")
    expires_at = datetime.now(UTC) + timedelta(days=3)
    saved = save(
        store,
        "refund-42",
        status="interrupted",
        workflow_name="refunds",
        current_node="approve",
        interrupt={
            "question": "Approve?",
            "asked_at": asked_at,
            "amount": Decimal("12.50"),
            "pair": (1, 2),
            "money": Money(Decimal("3.10"), "EUR"),
            "invoice": Invoice(7, ("a", "b")),
            "ticket": ticket,
            "day": date(2026, 3, 1),
            "none": None,
            "flag": True,
        },
        metadata={"tenant": "acme", "user": "ana", "since": date(2025, 1, 2), "n": 3},
        expires_at=expires_at,
    )
    [info] = store.list()
    assert info == StoredSnapshotInfo(
        "refund-42",
        saved.created_at,
        saved.updated_at,
        1,
        status="interrupted",
        workflow_name="refunds",
        current_node="approve",
        interrupt={
            "question": "Approve?",
            "asked_at": "2026-03-01T09:30:15.250000+00:00",
            "amount": "12.50",
            "pair": [1, 2],
            "money": {"amount": "3.10", "currency": "EUR"},
            "invoice": {"number": 7, "lines": ["a", "b"]},
            "ticket": str(ticket),
            "day": "2026-03-01",
            "none": None,
            "flag": True,
        },
        metadata={"tenant": "acme", "user": "ana", "since": "2025-01-02", "n": 3},
        expires_at=expires_at,
    )
    assert info.expires_at is not None and info.expires_at.utcoffset() == timedelta(0)
    assert type(info.interrupt["flag"]) is bool and type(info.metadata["n"]) is int


def test_listed_fields_follow_each_save(persistence: Persistence) -> None:
    snapshot = save(persistence, "w", current_node="draft", interrupt="first?")
    snapshot.status = "failed"
    snapshot.current_node = "send"
    snapshot.interrupt = None
    snapshot.metadata = {"tenant": "acme"}
    persistence.save(snapshot)
    [info] = persistence.list()
    assert (info.status, info.current_node, info.interrupt, info.metadata, info.version) == (
        "failed",
        "send",
        None,
        {"tenant": "acme"},
        2,
    )
    assert info.workflow_name is None and info.expires_at is None
    assert persistence.list(status="interrupted") == []


def test_metadata_too_long_to_keep_whole_stays_filterable(persistence: Persistence) -> None:
    save(persistence, "w", metadata={"tenant": "acme", "notes": "x" * 100_000, "n": 3})
    [info] = persistence.list(metadata={"tenant": "acme", "n": 3})
    assert info.metadata == {"tenant": "acme", "n": 3}
    assert persistence.load("w").metadata["notes"] == "x" * 100_000  # data stays the truth


# -- expiry -----------------------------------------------------------------------------------


def test_an_expired_record_counts_as_gone(persistence: Persistence, clock: Clock) -> None:
    save(persistence, "kept", status="completed", expires_at=clock.now + timedelta(hours=1))
    save(persistence, "live")
    assert persistence.exists("kept")
    assert persistence.load("kept").status == "completed"
    assert listed_ids(persistence) == {"kept", "live"}

    clock.advance(timedelta(hours=1))  # expires_at has come: gone, before any prune
    with pytest.raises(WorkflowNotFoundError):
        persistence.load("kept")
    assert not persistence.exists("kept")
    assert ids(persistence.list()) == ["live"]
    assert persistence.list(status="completed") == []
    assert persistence.delete("kept") is False  # nothing live to delete: left for prune
    with pytest.raises(ConflictError):
        persistence.delete("kept", expected_version=1)

    assert persistence.prune() == 1
    assert ids(persistence.list()) == ["live"]
    assert persistence.prune() == 0


def test_saving_over_an_expired_record_starts_a_new_one(
    persistence: Persistence, clock: Clock
) -> None:
    first = save(persistence, "w", state={"v": 1}, expires_at=clock.now + timedelta(minutes=5))
    persistence.save(first)
    assert persistence.load("w").version == 2
    clock.advance(timedelta(minutes=10))

    with pytest.raises(ConflictError):  # the expired record's version is gone with it
        save(persistence, "w", state={"v": "stale"}, expected_version=2)
    again = save(persistence, "w", state={"v": 2}, expected_version=0)
    assert again.version == 1
    loaded = persistence.load("w")
    assert (loaded.version, loaded.state, loaded.expires_at) == (1, {"v": 2}, None)
    assert loaded.created_at == clock.now > first.created_at
    [info] = persistence.list()
    assert (info.version, info.created_at, info.expires_at) == (1, clock.now, None)


def test_plain_save_over_an_expired_record_is_version_one(
    persistence: Persistence, clock: Clock
) -> None:
    save(persistence, "w", expires_at=clock.now + timedelta(seconds=1))
    clock.advance(timedelta(seconds=2))
    assert save(persistence, "w").version == 1
    assert persistence.load("w").created_at == clock.now


# -- prune ------------------------------------------------------------------------------------


def test_prune_without_an_age_deletes_only_expired_records(
    persistence: Persistence, clock: Clock
) -> None:
    save(persistence, "old", status="failed")
    save(persistence, "expired", status="completed", expires_at=clock.now + timedelta(days=1))
    save(persistence, "expires-later", status="completed", expires_at=clock.now + timedelta(days=9))
    clock.advance(timedelta(days=2))
    save(persistence, "new")

    assert persistence.prune() == 1
    assert persistence.prune(None) == 0
    assert listed_ids(persistence) == {"old", "expires-later", "new"}


def test_prune_by_age_and_status(persistence: Persistence, clock: Clock) -> None:
    save(persistence, "old-failed", status="failed")
    save(persistence, "old-waiting", status="interrupted")
    save(persistence, "old-running", status="running")
    expires_at = clock.now + timedelta(hours=1)
    save(persistence, "expired-waiting", status="interrupted", expires_at=expires_at)
    clock.advance(timedelta(hours=2))
    save(persistence, "new-failed", status="failed")
    clock.advance(timedelta(minutes=1))

    assert persistence.prune(timedelta(hours=1), status="failed") == 2  # and the expired one
    assert listed_ids(persistence) == {"old-waiting", "old-running", "new-failed"}
    assert persistence.prune(timedelta(hours=1), status=["completed"]) == 0
    assert persistence.prune(timedelta(hours=1), status=["interrupted", "running"]) == 2
    assert listed_ids(persistence) == {"new-failed"}
    assert persistence.prune(timedelta(seconds=1), status=[]) == 0  # no status: nothing
    assert persistence.prune(timedelta(seconds=1)) == 1
    assert persistence.list() == []


def test_prune_by_datetime_and_status(persistence: Persistence, clock: Clock) -> None:
    save(persistence, "a", status="failed")
    clock.advance()
    cutoff = clock.now
    save(persistence, "b", status="failed")
    assert persistence.prune(cutoff, status="interrupted") == 0
    assert persistence.prune(cutoff, status="failed") == 1
    assert ids(persistence.list()) == ["b"]
