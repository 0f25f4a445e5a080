"""Sample snapshots and user types shared by the tests."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from workflow_persistence import Decision, ErrorInfo, Event, JsonSerializer, WorkflowSnapshot


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Level(enum.IntEnum):
    ONE = 1
    TWO = 2


@dataclass
class Money:
    amount: Decimal
    currency: str = "EUR"


@dataclass(frozen=True)
class Customer:
    email: str
    since: date
    tags: frozenset[str] = frozenset()


@dataclass
class Drafted(Event):
    text: str
    money: Money = field(default_factory=lambda: Money(Decimal("0")))


class Ledger:
    """A plain class that takes part through __getstate__/__setstate__."""

    def __init__(self, entries: list[tuple[str, Decimal]]) -> None:
        self.entries = entries
        self.cache = {"derived": True}  # not saved

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.entries = state["entries"]
        self.cache = {"derived": True}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ledger) and other.entries == self.entries

    __hash__ = None  # type: ignore[assignment]


USER_TYPES = (Priority, Level, Money, Customer, Drafted, Ledger)


def serializer(**options: Any) -> JsonSerializer:
    return JsonSerializer(types=USER_TYPES, **options)


def rich_state() -> dict[str, Any]:
    """Every kind of value the default serializer promises to keep."""
    return {
        "text": "Grüße, 世界 🚀",
        "empty": "",
        "int": 42,
        "negative": -7,
        "big": 2**100,
        "float": 3.25,
        "bool": True,
        "none": None,
        "list": [1, "two", [3, {"four": 4}]],
        "nested": {"a": {"b": {"c": [None, False]}}},
        "int_keys": {1: "one", 2: "two"},
        "tuple_keys": {(1, "a"): "pair"},
        "tuple": (1, (2, 3), []),
        "set": {1, 2, 3},
        "frozenset": frozenset({"x", "y"}),
        "bytes": b"\x00\xff binary \x1a'\"\\",
        "bytearray": bytearray(b"mutable"),
        "datetime_utc": datetime(2026, 11, 24, 9, 30, 15, 123456, tzinfo=UTC),
        "datetime_naive": datetime(2026, 1, 2, 3, 4, 5, 6),
        "datetime_offset": datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3))),
        "datetime_zone": datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=1),
        "date": date(1999, 12, 31),
        "time": time(23, 59, 59, 999999),
        "time_tz": time(8, 0, tzinfo=UTC),
        "timedelta": timedelta(days=-1, seconds=5, microseconds=7),
        "decimal": Decimal("1234.5678"),
        "decimal_nan": Decimal("-Infinity"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "enum": Priority.HIGH,
        "int_enum": Level.TWO,
        "money": Money(Decimal("30.00")),
        "customer": Customer("ana@example.com", date(2020, 5, 1), frozenset({"vip"})),
        "ledger": Ledger([("refund", Decimal("-30"))]),
        "messages": [
            {"role": "user", "content": "hello", "at": datetime(2026, 11, 24, 9, 0, i, tzinfo=UTC)}
            for i in range(5)
        ],
    }


def rich_snapshot(workflow_id: str = "refund-42") -> WorkflowSnapshot:
    asked = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    return WorkflowSnapshot(
        workflow_id=workflow_id,
        status="interrupted",
        state=rich_state(),
        current_node="approve",
        event=Drafted("Refund 30 EUR", Money(Decimal("30"))),
        completed_nodes=["draft", "check", "draft"],
        interrupt={"question": "Approve?", "amount": Decimal("30")},
        history=[
            Decision("check", {"q": "ok?"}, "yes", asked, asked + timedelta(minutes=5)),
            Decision("approve", {"question": "Approve?"}, None, asked + timedelta(minutes=6)),
        ],
        attempts={"draft": 2, "check": 1, "approve": 1},
        error=ErrorInfo("check", "TimeoutError", "slow", "Traceback (most recent call last): ...",
                        asked),
        metadata={"user": "ana", "tenant": "acme", "tags": ["refund", "eu"]},
    )


def assert_same_content(loaded: WorkflowSnapshot, original: WorkflowSnapshot) -> None:
    """Everything but the store's own fields (version and timestamps) came back equal."""
    for name in (
        "workflow_id", "status", "state", "current_node", "event", "completed_nodes",
        "interrupt", "history", "attempts", "error", "metadata",
    ):
        assert getattr(loaded, name) == getattr(original, name), name
