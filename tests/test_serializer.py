"""The serializers (API.md section 4): what they keep, what they refuse, what they detect."""

from __future__ import annotations

import abc
import enum
import importlib.abc
import importlib.machinery
import math
import os
import pickle
import random
import struct
import sys
import threading
import uuid
import zlib
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import pydantic
import pytest

from workflow_persistence import (
    CorruptSnapshotError,
    Decision,
    ErrorInfo,
    InvalidWorkflowIdError,
    JsonSerializer,
    PickleSerializer,
    SerializationError,
    Serializer,
    StartEvent,
    StopEvent,
    UnresolvedObject,
    WorkflowSnapshot,
)
from workflow_persistence._serialization import framing as _framing

from .samples import (
    Customer,
    Drafted,
    Ledger,
    Level,
    Money,
    Priority,
    assert_same_content,
    rich_snapshot,
    serializer,
)

# -- user types used below ------------------------------------------------------------------


@dataclass
class Order:
    number: int
    items: list[Any] = field(default_factory=list)


@dataclass
class Counted:
    """Counts how often __init__ and __post_init__ run."""

    value: int
    derived: int = field(init=False, default=0)

    inits = 0  # class attribute, not a field

    def __post_init__(self) -> None:
        type(self).inits += 1
        self.derived = self.value * 2


@dataclass(slots=True, frozen=True)
class Point:
    x: int
    y: int


class Flags(enum.Flag):
    READ = 1
    WRITE = 2


class Color(enum.StrEnum):
    RED = "red"


class Status(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling of a str enum
    INTERRUPTED = "interrupted"


class Address(pydantic.BaseModel):
    city: str
    zip_code: str | None = None


class Invoice(pydantic.BaseModel):
    number: int
    issued: datetime
    total: Decimal
    address: Address
    lines: list[tuple[str, Decimal]] = pydantic.Field(default_factory=list)
    tags: set[str] = pydantic.Field(default_factory=set)


class Envelope(pydantic.BaseModel):
    payload: Any


class Plain:
    """No __getstate__ of its own: object's default (the instance __dict__) is used."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self, x: Any, y: Any) -> None:
        self.x = x
        self.y = y


class SlottedWithDict(Plain):
    __slots__ = ("extra",)
    extra: Any


class PairState:
    """Its state is a tuple, not a dict."""

    def __init__(self, left: Any, right: Any) -> None:
        self.left, self.right = left, right

    def __getstate__(self) -> tuple[Any, Any]:
        return (self.left, self.right)

    def __setstate__(self, state: tuple[Any, Any]) -> None:
        self.left, self.right = state


class Broken:
    def __getstate__(self) -> Any:
        raise RuntimeError("no state today")


class Bag(dict[str, Any]):
    """A dict subclass that brings its own state protocol, so it may be registered."""

    def __getstate__(self) -> dict[str, Any]:
        return dict(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)


PointTuple = namedtuple("PointTuple", "x y")


ALL_TYPES: tuple[type, ...] = (
    *(Priority, Level, Money, Customer, Drafted, Ledger),
    Order, Counted, Point, Flags, Color, Invoice, Address, Envelope, Plain, Slotted,
    SlottedWithDict, PairState, Broken, Bag,
)


def full_serializer(**options: Any) -> JsonSerializer:
    return JsonSerializer(types=ALL_TYPES, **options)


def short_id(value: Any) -> str:
    if type(value) is int and value.bit_length() > 1000:
        return f"int of {value.bit_length()} bits"
    return repr(value)[:60]


def round_trip(value: Any, ser: Serializer | None = None) -> Any:
    """Store ``value`` in a snapshot's state and return what loading it gives back."""
    ser = ser or full_serializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": value})))
    return loaded.state["v"]


def dump_error(value: Any, ser: Serializer | None = None, **fields: Any) -> SerializationError:
    ser = ser or full_serializer()
    snapshot = WorkflowSnapshot("w", **fields) if fields else WorkflowSnapshot("w", state=value)
    with pytest.raises(SerializationError) as info:
        ser.dumps(snapshot)
    return info.value


def split(record: bytes) -> tuple[bytes, bytes]:
    header, _, body = record.partition(b"\n")
    return header + b"\n", body


def reframe(body: bytes) -> bytes:
    """A record with a correct checksum around any body."""
    return _framing.frame(b"msgpack", _framing.crc_detail(body), body)


WORDS = ["refund", "order", "customer", "approve", "invoice", "pending", "manager", "note",
         "amount", "reason", "because", "delivery", "late", "damaged", "request", "the", "a",
         "of", "for", "with"]


def wordy(size: int) -> str:
    """Text like a log's: zlib makes it four to seven times smaller, as it does real text."""
    rng = random.Random(size)  # noqa: S311 - sample text, not secrets
    return " ".join(rng.choice(WORDS) for _ in range(size // 6))


# -- round trips ----------------------------------------------------------------------------


def test_rich_snapshot_round_trips_every_field() -> None:
    ser = serializer()
    original = rich_snapshot()
    loaded = ser.loads(ser.dumps(original))
    assert_same_content(loaded, original)
    assert loaded.created_at == original.created_at
    assert loaded.updated_at == original.updated_at
    assert loaded.version == original.version
    assert loaded.created_at.tzinfo is UTC
    assert type(loaded.event) is Drafted
    assert type(loaded.history[0]) is Decision
    assert type(loaded.error) is ErrorInfo
    assert loaded.state["datetime_zone"].fold == 1


def test_serializers_implement_the_protocol() -> None:
    assert isinstance(JsonSerializer(), Serializer)
    assert isinstance(PickleSerializer(secret_key=b"k"), Serializer)


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1,
        2**100, -(2**100), 10**5000, -(10**5000) - 1, 2**100_000,
        0.0, 1.5, -2.25, 1e308, 5e-324, math.inf, -math.inf,
        "", "text", "Grüße, 世界 🚀\x00", b"", b"\x00\xff",
        [], [1, [2, [3]]], {}, {"a": {"b": None}},
        (), (1,), (1, (2, (3,)), [4]), set(), {1, "a", (2, 3)}, frozenset(), frozenset({1, 2}),
        date(1, 1, 1), date(9999, 12, 31), date(2024, 2, 29),
        time(0, 0), time(23, 59, 59, 999999),
        timedelta(0), timedelta(days=-1, seconds=5, microseconds=7), timedelta.max, timedelta.min,
        uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4(),
    ],
    ids=short_id,
)
def test_value_round_trips_with_its_exact_type(value: Any) -> None:
    loaded = round_trip(value)
    assert type(loaded) is type(value)
    assert loaded == value


@pytest.mark.parametrize(
    "value",
    ["0", "-0", "1.000", "1E+5", "-1.5E-30", "123456789012345678901234567890.123456789",
     "NaN", "-NaN", "sNaN", "NaN123", "Infinity", "-Infinity", "1E+999999"],
)
def test_decimal_keeps_sign_digits_and_exponent(value: str) -> None:
    loaded = round_trip(Decimal(value))
    assert type(loaded) is Decimal
    assert loaded.as_tuple() == Decimal(value).as_tuple()


def test_float_special_values_keep_their_bits() -> None:
    for value in (math.nan, -0.0, 0.0, math.inf, float.fromhex("0x1.fffffffffffffp+1023")):
        loaded = round_trip(value)
        assert struct.pack("<d", loaded) == struct.pack("<d", value)
    assert math.isnan(round_trip(math.nan))
    assert math.copysign(1.0, round_trip(-0.0)) == -1.0


def test_bool_is_not_turned_into_int_and_back() -> None:
    loaded = round_trip([True, 1, False, 0])
    assert [type(v) for v in loaded] == [bool, int, bool, int]


def test_binary_views_come_back_as_bytes() -> None:
    # A documented limitation: MessagePack has a single binary type.
    assert round_trip(bytearray(b"mutable")) == b"mutable"
    assert type(round_trip(bytearray(b"x"))) is bytes
    assert round_trip(memoryview(b"view")) == b"view"


def test_nested_containers_keep_every_level() -> None:
    value = {
        "list": [1, (2, [3, {4}]), {"k": frozenset({(5, 6)})}],
        "tuple": ((), ([],), ({},)),
        "deep": [[[[[[[[[[["bottom"]]]]]]]]]]],
        "set_of_tuples": {(1, 2), (3, (4, 5))},
    }
    loaded = round_trip(value)
    assert loaded == value
    assert type(loaded["list"][1]) is tuple
    assert type(loaded["list"][1][1]) is list
    assert type(loaded["list"][1][1][1]) is set
    assert type(loaded["list"][2]["k"]) is frozenset
    assert type(loaded["tuple"][1][0]) is list
    assert all(type(t) is tuple for t in loaded["set_of_tuples"])


def test_dict_keys_keep_their_types_and_order() -> None:
    value = {
        1: "int",
        -(2**80): "big int",
        (1, "a"): "tuple",
        frozenset({1}): "frozenset",
        Priority.HIGH: "enum",
        Level.TWO: "int enum",
        b"raw": "bytes",
        None: "none",
        2.5: "float",
        date(2020, 1, 1): "date",
        uuid.UUID(int=7): "uuid",
        Point(1, 2): "frozen dataclass",
        "z": "str last",
    }
    loaded = round_trip(value)
    assert loaded == value
    assert list(loaded) == list(value)
    assert [type(k) for k in loaded] == [type(k) for k in value]
    assert type(next(k for k in loaded if k == 2)) is Level


def test_int_keys_are_not_turned_into_strings() -> None:
    loaded = round_trip({1: "one", "1": "text one"})
    assert loaded == {1: "one", "1": "text one"}


def test_large_state_with_many_values_round_trips() -> None:
    state = {f"k{i}": {"n": i, "at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)}
             for i in range(2000)}
    ser = full_serializer()
    assert ser.loads(ser.dumps(WorkflowSnapshot("w", state=state))).state == state


# -- dates and times ------------------------------------------------------------------------


def assert_same_moment_and_zone(loaded: Any, original: Any) -> None:
    """Equal wall time, fold and zone: aware datetimes compare by instant, which is not enough."""
    assert type(loaded) is type(original)
    assert loaded.replace(tzinfo=None) == original.replace(tzinfo=None)
    assert loaded.fold == original.fold
    assert type(loaded.tzinfo) is type(original.tzinfo)
    if isinstance(original, datetime):
        assert loaded.utcoffset() == original.utcoffset()
        assert loaded.tzname() == original.tzname()
        assert loaded.dst() == original.dst()
    if isinstance(original.tzinfo, ZoneInfo):
        assert loaded.tzinfo.key == original.tzinfo.key
    if isinstance(original.tzinfo, timezone):
        assert loaded.tzinfo == original.tzinfo
        assert loaded.tzinfo.tzname(None) == original.tzinfo.tzname(None)


BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 1, 2, 3, 4, 5, 6),
        datetime(2026, 10, 25, 2, 30, fold=1),
        datetime.min,
        datetime.max,
        datetime(2026, 11, 24, 9, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(0))),
        datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(0), "UTC")),
        datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(0), "Z")),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3))),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5), "EST")),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30), "UTC+05:30")),
        datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=1, seconds=7, microseconds=9))),
        datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=23, minutes=59), "far east")),
        datetime(2026, 3, 1, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
        datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN),  # a wall time that does not exist
        datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK, fold=1),
        datetime(2026, 7, 1, tzinfo=ZoneInfo("UTC")),
        time(8, 0, tzinfo=UTC),
        time(8, 0, tzinfo=timezone(timedelta(hours=2), "CEST")),
        time(1, 30, tzinfo=NEW_YORK, fold=1),
        time(1, 30, fold=1),
        time(12, 0, 0, 1, tzinfo=timezone(timedelta(minutes=-90))),
    ],
    ids=repr,
)
def test_datetimes_and_times_keep_wall_time_fold_and_zone(value: Any) -> None:
    loaded = round_trip(value)
    assert_same_moment_and_zone(loaded, value)


def test_utc_comes_back_as_the_utc_singleton_and_zones_as_cached_zones() -> None:
    assert round_trip(datetime(2026, 1, 1, tzinfo=UTC)).tzinfo is UTC
    assert round_trip(datetime(2026, 1, 1, tzinfo=BERLIN)).tzinfo is BERLIN


def test_fold_decides_the_instant_of_an_ambiguous_wall_time() -> None:
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0)
    second = first.replace(fold=1)
    loaded_first, loaded_second = round_trip([first, second])
    assert loaded_first.utcoffset() == timedelta(hours=2)
    assert loaded_second.utcoffset() == timedelta(hours=1)
    assert loaded_second.astimezone(UTC) == second.astimezone(UTC)


class CustomZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "CUSTOM"


def test_unsupported_time_zones_are_refused_with_the_path() -> None:
    error = dump_error({"when": datetime(2026, 1, 1, tzinfo=CustomZone())})
    assert error.path == "state['when']"
    assert "time zone" in str(error)
    assert "CustomZone" in str(error)
    with open("/usr/share/zoneinfo/Europe/Berlin", "rb") as file:
        keyless = ZoneInfo.from_file(file)
    error = dump_error({"at": [time(1, 0, tzinfo=keyless)]})
    assert error.path == "state['at'][0]"


# -- dataclasses ----------------------------------------------------------------------------


def test_dataclasses_round_trip_with_nested_values() -> None:
    ser = full_serializer()
    value = {
        "money": Money(Decimal("30.00")),
        "customer": Customer("ana@example.com", date(2020, 5, 1), frozenset({"vip"})),
        "order": Order(7, [Money(Decimal("1")), (Priority.LOW, {"x": b"\x00"})]),
        "point": Point(1, 2),
    }
    loaded = round_trip(value, ser)
    assert loaded == value
    assert type(loaded["order"].items[1]) is tuple
    assert type(loaded["customer"].tags) is frozenset
    assert str(loaded["money"].amount) == "30.00"


def test_dataclass_fields_are_restored_without_running_init_or_post_init() -> None:
    ser = full_serializer()
    original = Counted(5)
    original.derived = 99  # changed after __post_init__: the stored value must win
    before = Counted.inits
    loaded = round_trip(original, ser)
    assert Counted.inits == before
    assert (loaded.value, loaded.derived) == (5, 99)
    assert type(loaded) is Counted


def test_frozen_and_slotted_dataclasses_round_trip() -> None:
    loaded = round_trip(Point(3, 4))
    assert loaded == Point(3, 4)
    assert not hasattr(loaded, "__dict__")
    with pytest.raises(AttributeError):
        loaded.x = 5


def _renamed(cls: type, like: type) -> type:
    """Give ``cls`` the stored name of ``like``: the same class, a later version of it."""
    cls.__qualname__ = like.__qualname__
    cls.__module__ = like.__module__
    return cls


def test_a_dataclass_field_added_later_gets_its_default() -> None:
    @dataclass
    class Account:
        owner: str

    @dataclass
    class AccountV2:
        owner: str
        currency: str = "EUR"
        limits: list[int] = field(default_factory=lambda: [100])

    record = JsonSerializer([Account]).dumps(WorkflowSnapshot("w", state={"a": Account("ana")}))
    newer = JsonSerializer([_renamed(AccountV2, Account)])
    loaded = newer.loads(record).state["a"]
    assert type(loaded) is AccountV2
    assert (loaded.owner, loaded.currency, loaded.limits) == ("ana", "EUR", [100])


def test_a_dataclass_field_added_later_without_default_is_a_corrupt_record() -> None:
    @dataclass
    class Account:
        owner: str

    @dataclass
    class AccountV3:
        owner: str
        required: int

    record = JsonSerializer([Account]).dumps(WorkflowSnapshot("w", state={"a": Account("ana")}))
    newer = JsonSerializer([_renamed(AccountV3, Account)])
    with pytest.raises(CorruptSnapshotError, match="required"):
        newer.loads(record)


def test_a_class_that_changed_its_kind_is_not_rebuilt() -> None:
    @dataclass
    class Thing:
        n: int

    class ThingNow:
        def __init__(self) -> None:
            self.n = 0

    record = JsonSerializer([Thing]).dumps(WorkflowSnapshot("w", state={"t": Thing(1)}))
    with pytest.raises(CorruptSnapshotError, match="dataclass"):
        JsonSerializer([_renamed(ThingNow, Thing)]).loads(record)


# -- pydantic, enums and the state protocol -------------------------------------------------


def test_pydantic_models_round_trip() -> None:
    invoice = Invoice(
        number=1,
        issued=datetime(2026, 5, 1, 12, tzinfo=BERLIN),
        total=Decimal("12.50"),
        address=Address(city="Berlin"),
        lines=[("coffee", Decimal("2.50")), ("cake", Decimal("10.00"))],
        tags={"paid"},
    )
    loaded = round_trip(invoice)
    assert type(loaded) is Invoice
    assert type(loaded.address) is Address
    assert loaded == invoice
    assert loaded.issued.tzinfo is BERLIN
    assert type(loaded.lines[0]) is tuple
    assert str(loaded.total) == "12.50"
    assert round_trip(Address(city="Paris", zip_code="75001")) == Address(city="Paris",
                                                                          zip_code="75001")


def test_unregistered_pydantic_model_is_refused() -> None:
    error = dump_error({"a": Address(city="x")}, JsonSerializer())
    assert error.path == "state['a']"
    assert "not registered" in str(error)


def test_enums_come_back_as_the_same_members() -> None:
    value = [Priority.HIGH, Level.TWO, Flags.READ | Flags.WRITE, Flags(0), Color.RED]
    loaded = round_trip(value)
    assert all(a is b for a, b in zip(loaded, value, strict=True))
    assert type(loaded[1]) is Level
    assert loaded[1] == 2


def test_a_removed_enum_member_is_a_corrupt_record() -> None:
    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    class MoodNow(enum.Enum):
        HAPPY = "happy"

    record = JsonSerializer([Mood]).dumps(WorkflowSnapshot("w", state={"m": Mood.SAD}))
    with pytest.raises(CorruptSnapshotError):
        JsonSerializer([_renamed(MoodNow, Mood)]).loads(record)


def test_getstate_setstate_classes_round_trip() -> None:
    ledger = Ledger([("refund", Decimal("-30"))])
    ledger.cache["derived"] = False
    loaded = round_trip(ledger)
    assert type(loaded) is Ledger
    assert loaded == ledger
    assert loaded.cache == {"derived": True}  # rebuilt by __setstate__, not stored
    pair = round_trip(PairState((1, 2), {3}))
    assert (pair.left, pair.right) == ((1, 2), {3})


def test_classes_without_their_own_state_methods_use_the_instance_dict() -> None:
    loaded = round_trip(Plain(1, [Plain("x", None)]))
    assert loaded == Plain(1, [Plain("x", None)])


def test_slots_classes_round_trip_including_unset_slots() -> None:
    full = round_trip(Slotted(1, (2, 3)))
    assert type(full) is Slotted
    assert (full.x, full.y) == (1, (2, 3))
    partial = Slotted(1, 2)
    del partial.y
    loaded = round_trip(partial)
    assert loaded.x == 1
    assert not hasattr(loaded, "y")
    mixed = SlottedWithDict("a", "b")
    mixed.extra = Decimal("1.5")
    loaded_mixed = round_trip(mixed)
    assert (loaded_mixed.a, loaded_mixed.b, loaded_mixed.extra) == ("a", "b", Decimal("1.5"))


T = TypeVar("T")


class GenericBox(Generic[T], abc.ABC):
    def __init__(self, item: T) -> None:
        self.item = item


def test_generic_and_abstract_base_classes_may_be_registered() -> None:
    loaded = round_trip(GenericBox((1, "a")), JsonSerializer([GenericBox]))
    assert type(loaded) is GenericBox
    assert loaded.item == (1, "a")


def test_a_registered_dict_subclass_with_its_own_state_round_trips() -> None:
    loaded = round_trip(Bag(a=1, b=(2,)))
    assert type(loaded) is Bag
    assert loaded == {"a": 1, "b": (2,)}


# -- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [Money(Decimal("1")), Priority.LOW, Ledger([]), Address(city="x"), Drafted("t")],
    ids=lambda v: type(v).__name__,
)
def test_unregistered_classes_are_refused_when_saving(value: Any) -> None:
    error = dump_error({"x": value}, JsonSerializer())
    assert error.path == "state['x']"
    assert type(value).__qualname__ in str(error)


def test_unregistered_classes_are_refused_when_loading() -> None:
    record = full_serializer().dumps(WorkflowSnapshot("w", state={"m": Money(Decimal("1"))}))
    with pytest.raises(CorruptSnapshotError, match=r"tests\.samples:Money.*register"):
        JsonSerializer().loads(record)


def test_the_library_events_are_registered_by_default() -> None:
    ser = JsonSerializer()
    for event in (StartEvent(), StopEvent(result={"ok": (1, 2)})):
        loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", event=event)))
        assert type(loaded.event) is type(event)
        assert loaded.event == event
    with pytest.raises(SerializationError) as info:
        ser.dumps(WorkflowSnapshot("w", event=Drafted("x")))
    assert info.value.path == "event"


def test_register_later_and_is_registered() -> None:
    ser = JsonSerializer()
    assert not ser.is_registered(Money)
    ser.register(Money)
    ser.register(Money)  # harmless
    assert ser.is_registered(Money)
    assert round_trip(Money(Decimal("2")), ser) == Money(Decimal("2"))
    assert ser.is_registered(StartEvent)


def test_a_subclass_of_a_registered_class_is_not_registered() -> None:
    @dataclass
    class SpecialMoney(Money):
        pass

    ser = full_serializer()
    assert not ser.is_registered(SpecialMoney)
    assert dump_error({"m": SpecialMoney(Decimal("1"))}, ser).path == "state['m']"


def test_a_newer_class_under_the_same_name_replaces_the_old_one() -> None:
    @dataclass
    class Box:
        n: int

    @dataclass
    class BoxReloaded:
        n: int

    ser = JsonSerializer([Box])
    record = ser.dumps(WorkflowSnapshot("w", state={"b": Box(1)}))
    ser.register(_renamed(BoxReloaded, Box))
    assert type(ser.loads(record).state["b"]) is BoxReloaded


@pytest.mark.parametrize(
    "cls",
    [int, str, bytes, float, bool, dict, list, tuple, set, frozenset, datetime, date, time,
     timedelta, Decimal, uuid.UUID, UnresolvedObject, type(None)],
)
def test_registering_a_type_the_codec_stores_itself_changes_nothing(cls: type) -> None:
    # Listing such a type in types=[...] is harmless: it neither fails nor replaces the
    # codec's own handling (an int registered as a class would lose big ints).
    ser = full_serializer()
    snapshot = rich_snapshot()
    before = ser.dumps(snapshot)
    ser.register(cls)
    assert ser.is_registered(cls)
    assert ser.dumps(snapshot) == before
    assert_same_content(ser.loads(before), snapshot)


@pytest.mark.parametrize("cls", [bytearray, memoryview])
def test_register_refuses_types_that_come_back_as_bytes(cls: type) -> None:
    with pytest.raises(SerializationError, match="bytes"):
        JsonSerializer().register(cls)


def test_register_refuses_non_classes() -> None:
    with pytest.raises(TypeError, match="classes"):
        JsonSerializer().register(Money(Decimal("1")))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        JsonSerializer(types=["tests.samples:Money"])  # type: ignore[list-item]


class Tags(dict[str, int]):
    pass


class Problem(Exception):
    pass


@pytest.mark.parametrize("cls", [Tags, PointTuple, Problem, OrderedDict], ids=repr)
def test_register_refuses_builtin_subclasses_that_would_lose_their_contents(cls: type) -> None:
    # object's __getstate__ leaves a dict's items, a tuple's members and an exception's
    # args out: registering them would store them empty (or not load them at all).
    with pytest.raises(SerializationError, match="__getstate__"):
        JsonSerializer().register(cls)


# -- error paths ----------------------------------------------------------------------------


def test_a_function_is_refused_by_name() -> None:
    error = dump_error({"callback": lambda: None})
    assert error.path == "state['callback']"
    assert "state['callback']" in str(error)
    assert "code" in str(error)
    assert isinstance(error.__cause__, TypeError)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"state": {"order": Order(1, [1, 2, object()])}}, "state['order'].items[2]"),
        ({"state": {"t": (1, object())}}, "state['t'][1]"),
        ({"state": {"s": {object()}}}, "state['s'][0]"),
        ({"state": {"f": [frozenset({object()})]}}, "state['f'][0][0]"),
        ({"state": {"deep": {"a": [{"b": (0, {"c": [object()]})}]}}},
         "state['deep']['a'][0]['b'][1]['c'][0]"),
        ({"state": {"m": Money(object())}}, "state['m'].amount"),  # type: ignore[arg-type]
        ({"state": {"e": Priority.LOW, "x": Order(1, [Order(2, [print])])}},
         "state['x'].items[0].items[0]"),
        ({"state": {"l": Ledger([("a", object())])}},  # type: ignore[list-item]
         "state['l'].__getstate__()['entries'][0][1]"),
        ({"state": {"i": Envelope(payload={"x": [object()]})}}, "state['i'].payload['x'][0]"),
        ({"state": {"u": UnresolvedObject("a:B", "dataclass", {"f": object()})}},
         "state['u'].fields['f']"),
        ({"history": [Decision("n", {"ok": 1}), Decision("n", {"cb": print})]},
         "history[1].payload['cb']"),
        ({"history": [Decision("n", None, answer=object())]}, "history[0].answer"),
        ({"interrupt": {"question": object()}}, "interrupt['question']"),
        ({"metadata": {"user": object()}}, "metadata['user']"),
        ({"event": StopEvent(result=[object()])}, "event.result[0]"),
        ({"attempts": {"n": object()}}, "attempts['n']"),
        ({"completed_nodes": ["a", object()]}, "completed_nodes[1]"),
        ({"current_node": object()}, "current_node"),
        ({"error": ErrorInfo("n", "E", object(), "tb")}, "error.message"),  # type: ignore[arg-type]
        ({"created_at": object()}, "created_at"),
        ({"version": object()}, "version"),
    ],
)
def test_unsupported_values_are_named_by_their_path(fields: dict[str, Any], path: str) -> None:
    error = dump_error(None, **fields)
    assert error.path == path
    assert path in str(error)


def test_an_unsupported_dict_key_is_named() -> None:
    key = object()
    error = dump_error({"d": {"fine": 1, key: "value"}})
    assert error.path == f"state['d'][{key!r}] (key)"


def test_unregistered_classes_inside_containers_are_named() -> None:
    error = dump_error({"x": [{"k": (Money(Decimal("1")),)}]}, JsonSerializer())
    assert error.path == "state['x'][0]['k'][0]"
    assert "not registered" in str(error)


def test_an_exception_from_a_classes_own_getstate_becomes_a_serialization_error() -> None:
    error = dump_error({"b": [Broken()]})
    assert error.path == "state['b'][0]"
    assert "no state today" in str(error)
    assert isinstance(error.__cause__, RuntimeError)


def test_values_inside_a_mapping_state_are_named() -> None:
    error = dump_error(None, state=OrderedDict(fine=1, bad=object()))
    assert error.path == "state['bad']"


@pytest.mark.parametrize("how", ["list", "dict", "tuple", "dataclass", "state"])
def test_circular_references_are_a_serialization_error(how: str) -> None:
    value: Any
    if how == "list":
        value = [1]
        value.append(value)
    elif how == "dict":
        value = {"a": 1}
        value["self"] = value
    elif how == "tuple":
        inner: list[Any] = []
        value = (inner,)
        inner.append(value)
    elif how == "dataclass":
        value = Order(1)
        value.items.append(value)
    else:
        value = Plain(1, None)
        value.b = [value]
    error = dump_error({"c": value})
    assert "circular" in str(error)
    assert error.path is not None
    assert error.path.startswith("state['c']")


def test_deep_but_finite_nesting_is_an_error_not_a_crash() -> None:
    value: Any = ()
    for _ in range(5000):
        value = (value,)
    error = dump_error({"deep": value})
    assert error.path is not None
    assert error.path.startswith("state['deep'][0][0]")


def test_a_failed_dump_leaves_the_serializer_working() -> None:
    ser = full_serializer()
    good = WorkflowSnapshot("w", state={"t": ((1, (2, (3, {4}))), Order(1, [(5,)]))})
    expected = ser.dumps(good)
    for bad in ({"t": ((1, (2, (object(),))),)}, {"b": (Broken(),)}, {"c": [lambda: 0]}):
        with pytest.raises(SerializationError):
            ser.dumps(WorkflowSnapshot("w", state=bad))
        assert ser.dumps(good) == expected
    assert ser.loads(expected).state == good.state


def test_one_serializer_can_be_shared_by_threads() -> None:
    ser = full_serializer()
    snapshots = [
        WorkflowSnapshot(f"w{n}", state={"n": n, "t": tuple((i, (n, {i})) for i in range(50)),
                                         "o": Order(n, [Money(Decimal(n))])})
        for n in range(8)
    ]
    expected = [ser.dumps(s) for s in snapshots]
    failures: list[str] = []

    def work(n: int) -> None:
        for _ in range(100):
            record = ser.dumps(snapshots[n])
            if record != expected[n] or ser.loads(record).state != snapshots[n].state:
                failures.append(f"thread {n}")
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- snapshot field validation --------------------------------------------------------------


@pytest.mark.parametrize("status", ["interrupted", "failed", "running"])
def test_every_status_round_trips(status: Any) -> None:
    ser = JsonSerializer()
    assert ser.loads(ser.dumps(WorkflowSnapshot("w", status=status))).status == status


@pytest.mark.parametrize("status", ["paused", "", None, 1, ["interrupted"], {"a": 1}])
def test_a_bad_status_is_refused(status: Any) -> None:
    for ser in (JsonSerializer(), PickleSerializer(secret_key=b"k")):
        with pytest.raises(SerializationError) as info:
            ser.dumps(WorkflowSnapshot("w", status=status))
        assert info.value.path == "status"


def test_a_str_enum_status_is_stored_as_plain_text() -> None:
    ser = JsonSerializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", status=Status.INTERRUPTED)))  # type: ignore[arg-type]
    assert loaded.status == "interrupted"
    assert type(loaded.status) is str


@pytest.mark.parametrize("workflow_id", ["", "x" * 256, None, 5, b"id"])
def test_a_bad_workflow_id_is_refused(workflow_id: Any) -> None:
    for ser in (JsonSerializer(), PickleSerializer(secret_key=b"k")):
        with pytest.raises(InvalidWorkflowIdError):
            ser.dumps(WorkflowSnapshot(workflow_id))


def test_a_str_subclass_workflow_id_is_stored_as_plain_text() -> None:
    class Id(str):
        pass

    ser = JsonSerializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot(Id("run-1"))))
    assert loaded.workflow_id == "run-1"
    assert type(loaded.workflow_id) is str


@pytest.mark.parametrize("name", ["state", "metadata"])
def test_state_and_metadata_must_be_mappings(name: str) -> None:
    fields: dict[str, Any] = {name: [("a", 1)]}
    with pytest.raises(SerializationError) as info:
        JsonSerializer().dumps(WorkflowSnapshot("w", **fields))
    assert info.value.path == name


def test_a_read_only_mapping_state_is_stored_as_a_dict() -> None:
    ser = JsonSerializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", state=MappingProxyType({"a": 1}))))  # type: ignore[arg-type]
    assert loaded.state == {"a": 1}
    assert type(loaded.state) is dict


def test_history_and_error_must_have_their_types() -> None:
    with pytest.raises(SerializationError, match="Decision"):
        JsonSerializer().dumps(WorkflowSnapshot("w", history=[{"node": "n"}]))  # type: ignore[list-item]
    with pytest.raises(SerializationError, match="ErrorInfo"):
        JsonSerializer().dumps(WorkflowSnapshot("w", error="boom"))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="WorkflowSnapshot"):
        JsonSerializer().dumps({"workflow_id": "w"})  # type: ignore[arg-type]


# -- stand-ins and never importing ----------------------------------------------------------


def test_stand_in_mode_returns_unresolved_objects() -> None:
    record = full_serializer().dumps(WorkflowSnapshot(
        "w",
        state={"money": Money(Decimal("30")), "prio": Priority.HIGH, "ledger": Ledger([])},
        event=Drafted("text"),
    ))
    loaded = JsonSerializer(unknown_classes="stand-in").loads(record)
    money = loaded.state["money"]
    assert money == UnresolvedObject("tests.samples:Money", "dataclass",
                                     {"amount": Decimal("30"), "currency": "EUR"})
    assert loaded.state["prio"] == UnresolvedObject("tests.samples:Priority", "enum", "high")
    assert loaded.state["ledger"].kind == "state"
    assert loaded.state["ledger"].fields == {"entries": []}
    assert isinstance(loaded.event, UnresolvedObject)
    assert loaded.event.class_path == "tests.samples:Drafted"
    # The nested Money of the event is a stand-in too; its fields are real values.
    assert loaded.event.fields["money"].fields["amount"] == Decimal("0")


def test_error_mode_refuses_the_same_record() -> None:
    record = full_serializer().dumps(WorkflowSnapshot("w", state={"m": Money(Decimal("1"))}))
    with pytest.raises(CorruptSnapshotError, match="Money"):
        JsonSerializer(unknown_classes="error").loads(record)
    with pytest.raises(ValueError, match="unknown_classes"):
        JsonSerializer(unknown_classes="ignore")  # type: ignore[arg-type]


def test_stand_ins_re_encode_to_identical_bytes() -> None:
    state = {
        "money": Money(Decimal("30")),
        "customer": Customer("a@b.c", date(2020, 1, 1), frozenset({f"t{i}" for i in range(50)})),
        "order": Order(1, [{i * 8 for i in range(40)}, Ledger([("x", Decimal("1"))])]),
        "invoice": Invoice(number=1, issued=datetime(2026, 1, 1, tzinfo=UTC),
                           total=Decimal("1"), address=Address(city="c"), tags={"a", "b", "c"}),
        "prio": [Priority.LOW, Level.ONE],
        # NaN is not equal to itself (and sNaN refuses comparison): still the same bytes.
        "odd": Order(2, [math.nan, Decimal("sNaN"), {f"s{i}" for i in range(30)}]),
    }
    original = full_serializer().dumps(WorkflowSnapshot("w", state=state, event=Drafted("d")))
    stand_in = JsonSerializer(unknown_classes="stand-in")
    loaded = stand_in.loads(original)
    assert stand_in.dumps(loaded) == original
    # ... and a serializer that knows the classes reads the copy as the original.
    copy = full_serializer().loads(stand_in.dumps(loaded)).state
    assert copy["customer"] == state["customer"]
    assert copy["invoice"] == state["invoice"]
    assert copy["order"] == state["order"]


def test_a_stand_in_inside_a_stand_in_writes_back_its_sets_as_read() -> None:
    # {3, 11} iterates as [11, 3]; a set built again from [11, 3] iterates as [3, 11]. The
    # inner stand-in once compared as read on one side and from its fields on the other,
    # so the outer one was written from its fields, its set in the new order.
    assert list({3, 11}) == [11, 3] and list(set([11, 3])) == [3, 11]
    inner = Customer("", date(2000, 1, 1), frozenset({3, 11}))  # type: ignore[arg-type]
    state = {"ledger": Ledger([{3, 11}, inner])}  # type: ignore[list-item]
    original = full_serializer().dumps(WorkflowSnapshot("w", state=state, event=Drafted("d")))
    stand_in = JsonSerializer(unknown_classes="stand-in")
    assert stand_in.dumps(stand_in.loads(original)) == original


def test_a_changed_stand_in_is_written_as_changed() -> None:
    record = full_serializer().dumps(WorkflowSnapshot("w", state={"m": Money(Decimal("1"))}))
    stand_in = JsonSerializer(unknown_classes="stand-in")
    loaded = stand_in.loads(record)
    loaded.state["m"].fields["amount"] = Decimal("99")
    again = full_serializer().loads(stand_in.dumps(loaded))
    assert again.state["m"] == Money(Decimal("99"))
    made_by_hand = UnresolvedObject("tests.samples:Money", "dataclass", {"amount": Decimal("5")})
    written = JsonSerializer().dumps(WorkflowSnapshot("w", state={"m": made_by_hand}))
    assert full_serializer().loads(written).state["m"] == Money(Decimal("5"))


class ImportRecorder(importlib.abc.MetaPathFinder):
    """Sees every import that reaches the finders (anything not already in sys.modules)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        self.names.append(fullname)
        return None


@pytest.fixture
def imports() -> Iterator[ImportRecorder]:
    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        yield recorder
    finally:
        sys.meta_path.remove(recorder)


NEVER_IMPORTED = ("wfp_never_imported_module", "tabnanny", "wsgiref.simple_server")


@pytest.mark.parametrize("kind", ["state", "dataclass", "enum", "pydantic", "mystery"])
def test_a_class_named_in_stored_data_is_never_imported(
    kind: str, imports: ImportRecorder
) -> None:
    # tabnanny and wsgiref.simple_server are real, importable modules nobody here imports.
    for module in NEVER_IMPORTED:
        assert module not in sys.modules
    state = {
        "evil": UnresolvedObject("wfp_never_imported_module:Evil", kind, {"cmd": "rm -rf /"}),
        "real": UnresolvedObject("tabnanny:check", kind, ["."]),
        "nested": UnresolvedObject("wsgiref.simple_server:WSGIServer", kind, {"port": 80}),
    }
    record = JsonSerializer().dumps(WorkflowSnapshot("w", state=state))
    with pytest.raises(CorruptSnapshotError, match="wfp_never_imported_module:Evil"):
        JsonSerializer().loads(record)
    loaded = JsonSerializer(unknown_classes="stand-in").loads(record)
    assert loaded.state == state
    assert imports.names == []
    for module in NEVER_IMPORTED:
        assert module not in sys.modules


# -- format headers -------------------------------------------------------------------------


def small_record(**options: Any) -> bytes:
    snapshot = WorkflowSnapshot("w", state={"n": 1, "when": datetime(2026, 1, 1, tzinfo=UTC)})
    return JsonSerializer(**options).dumps(snapshot)


def test_records_start_with_a_header_naming_their_format() -> None:
    record = small_record()
    header, body = split(record)
    assert header == b"wfp:msgpack:%08x\n" % zlib.crc32(body)
    signed = PickleSerializer(secret_key=b"k").dumps(WorkflowSnapshot("w"))
    pickle_header, _ = split(signed)
    assert pickle_header.startswith(b"wfp:pickle:")
    assert len(pickle_header) == len(b"wfp:pickle:\n") + 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "does not start with"),
        (b"wfp", "does not start with"),
        (b"WFP:msgpack:00000000\n", "does not start with"),
        (b"\x8f\xa1a\x01", "does not start with"),
        (b"wfp:msgpack:00000000", "no end"),
        (b"wfp:msgpack" + b"0" * 200 + b"\n", "no end"),
        (b"wfp:\n", "names no format"),
        (b"wfp::00000000\n", "names no format"),
        (b"wfp:msgpack\n", "names no format"),
        (b"wfp:yaml:00000000\nkey: value", "'yaml'"),
        (b"wfp:msgpack:zzzzzzzz\n\x90", "checksum"),
        (b"wfp:msgpack+zlib:00000000:1\n\x90", "checksum"),
    ],
)
def test_foreign_or_damaged_headers_are_corrupt(data: bytes, message: str) -> None:
    with pytest.raises(CorruptSnapshotError, match=message):
        JsonSerializer().loads(data)


def test_a_pickle_record_given_to_the_default_serializer_says_what_wrote_it() -> None:
    record = PickleSerializer(secret_key=b"k").dumps(WorkflowSnapshot("w"))
    with pytest.raises(CorruptSnapshotError, match="PickleSerializer"):
        JsonSerializer().loads(record)


def test_a_default_record_given_to_the_pickle_serializer_says_what_it_is() -> None:
    for record in (small_record(), small_record(compress_threshold=0)):
        with pytest.raises(CorruptSnapshotError, match="not a signed pickle"):
            PickleSerializer(secret_key=b"k").loads(record)


def test_a_raw_pickle_without_header_is_corrupt_for_both() -> None:
    raw = pickle.dumps(WorkflowSnapshot("w"))
    for ser in (JsonSerializer(), PickleSerializer(secret_key=b"k")):
        with pytest.raises(CorruptSnapshotError, match="wfp:"):
            ser.loads(raw)


def test_records_load_from_any_bytes_like_object() -> None:
    record = small_record()
    for data in (record, bytearray(record), memoryview(record)):
        assert JsonSerializer().loads(data).state["n"] == 1  # type: ignore[arg-type]


# -- integrity ------------------------------------------------------------------------------


def test_the_checksum_detects_a_changed_byte_anywhere() -> None:
    ser = JsonSerializer()
    for record in (small_record(), small_record(compress_threshold=0)):
        assert ser.loads(record).state["n"] == 1
        for position in range(len(record)):
            for flip in (0x01, 0x80, 0xFF):
                damaged = bytearray(record)
                damaged[position] ^= flip
                with pytest.raises(CorruptSnapshotError):
                    ser.loads(bytes(damaged))


def test_truncated_or_extended_records_are_corrupt() -> None:
    ser = JsonSerializer()
    for record in (small_record(), small_record(compress_threshold=0)):
        for end in range(len(record)):
            with pytest.raises(CorruptSnapshotError):
                ser.loads(record[:end])
        with pytest.raises(CorruptSnapshotError):
            ser.loads(record + b"\x00")


def test_extra_text_after_the_checksum_is_corrupt() -> None:
    header, body = split(small_record())
    with pytest.raises(CorruptSnapshotError):
        JsonSerializer().loads(header[:-1] + b"extra\n" + body)


def test_a_body_that_is_not_a_snapshot_is_corrupt_even_with_a_good_checksum() -> None:
    import msgpack

    bodies = [
        b"",
        b"\xc1",  # a byte MessagePack never uses
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"workflow_id": "w"}),
        msgpack.packb([2, *([None] * 14)]),  # an unknown layout version
        split(small_record())[1] + b"\x00",  # trailing data
        msgpack.packb(msgpack.ExtType(99, b"")),  # an unknown value type
        msgpack.packb(msgpack.ExtType(4, b"short")),  # a damaged datetime
    ]
    for body in bodies:
        with pytest.raises(CorruptSnapshotError):
            JsonSerializer().loads(reframe(body))


def test_fields_of_the_wrong_type_are_corrupt_even_with_a_good_checksum() -> None:
    import msgpack

    good = msgpack.unpackb(split(small_record())[1], strict_map_key=False,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))
    changes = {1: 5, 2: "paused", 3: [], 8: [["n", 1]], 10: ["only", "three", "x"], 11: None}
    for index, bad in changes.items():
        row = list(good)
        row[index] = bad
        with pytest.raises(CorruptSnapshotError):
            JsonSerializer().loads(reframe(msgpack.packb(row)))
    assert JsonSerializer().loads(reframe(msgpack.packb(good))).state["n"] == 1


# -- compression ----------------------------------------------------------------------------


def test_large_bodies_are_compressed_smaller_and_round_trip() -> None:
    snapshot = WorkflowSnapshot("w", state={"text": wordy(200_000), "n": list(range(1000))})
    plain = JsonSerializer(compress_threshold=None).dumps(snapshot)
    packed = JsonSerializer(compress_threshold=1024).dumps(snapshot)
    header, body = split(packed)
    assert header.startswith(b"wfp:msgpack+zlib:")
    crc, size = header[len(b"wfp:msgpack+zlib:"):-1].split(b":")
    assert crc == b"%08x" % zlib.crc32(body)
    assert int(size) == len(split(plain)[1])
    assert len(packed) < len(plain) / 3
    for reader in (JsonSerializer(), JsonSerializer(compress_threshold=None)):
        assert reader.loads(packed).state == snapshot.state


def test_the_default_threshold_leaves_small_records_alone() -> None:
    assert small_record().startswith(b"wfp:msgpack:")
    big = WorkflowSnapshot("w", state={"text": wordy(2 << 20)})
    assert JsonSerializer().dumps(big).startswith(b"wfp:msgpack+zlib:")
    assert JsonSerializer(compress_threshold=None).dumps(big).startswith(b"wfp:msgpack:")


def test_incompressible_data_stays_uncompressed() -> None:
    snapshot = WorkflowSnapshot("w", state={"noise": os.urandom(50_000)})
    record = JsonSerializer(compress_threshold=0).dumps(snapshot)
    assert record.startswith(b"wfp:msgpack:")
    assert JsonSerializer().loads(record).state == snapshot.state


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="compress_threshold"):
        JsonSerializer(compress_threshold=-1)


def zlib_record(compressed: bytes, size: int | bytes) -> bytes:
    detail = _framing.crc_detail(compressed) + b":" + (
        size if isinstance(size, bytes) else str(size).encode())
    return _framing.frame(b"msgpack+zlib", detail, compressed)


def test_max_decoded_size_refuses_a_record_that_claims_too_much() -> None:
    snapshot = WorkflowSnapshot("w", state={"text": wordy(1 << 20)})
    record = JsonSerializer(compress_threshold=0).dumps(snapshot)
    assert record.startswith(b"wfp:msgpack+zlib:")
    assert len(record) < (1 << 20) / 3
    assert JsonSerializer(max_decoded_size=2 << 20).loads(record).state == snapshot.state
    with pytest.raises(CorruptSnapshotError, match="max_decoded_size"):
        JsonSerializer(max_decoded_size=1 << 19).loads(record)


def test_a_bomb_that_lies_about_its_size_is_stopped_at_the_claimed_size() -> None:
    bomb = zlib.compress(bytes(200 << 20), 9)  # 200 MiB of zeros in about 200 KiB
    with pytest.raises(CorruptSnapshotError, match="decoded length"):
        JsonSerializer().loads(zlib_record(bomb, 100))


BODY = split(small_record())[1]  # a valid snapshot, uncompressed


@pytest.mark.parametrize(
    ("compressed", "size"),
    [
        (zlib.compress(BODY), len(BODY) + 1),  # claims more than it holds
        (zlib.compress(BODY), len(BODY) - 1),  # claims less
        (zlib.compress(BODY)[:-3], len(BODY)),  # cut short
        (zlib.compress(BODY) + b"junk", len(BODY)),  # bytes after the stream
        (zlib.compress(BODY) + zlib.compress(b"x"), len(BODY)),  # a second stream
        (BODY, len(BODY)),  # not compressed at all
        (zlib.compress(BODY), b"+%d" % len(BODY)),
        (zlib.compress(BODY), b" %d" % len(BODY)),
        (zlib.compress(BODY), b"%d " % len(BODY)),
        (zlib.compress(BODY), b"%d_%d" % divmod(len(BODY), 10)),
        (zlib.compress(BODY), b"\xd9\xa3"),  # a non-ASCII digit
        (zlib.compress(BODY), b"-1"),
        (zlib.compress(BODY), b""),
        (zlib.compress(BODY), b"9" * 40),
    ],
    ids=["more", "less", "cut", "junk", "two-streams", "raw", "plus", "space-before",
         "space-after", "underscore", "arabic-digit", "negative", "empty", "huge"],
)
def test_damaged_compressed_records_are_corrupt(compressed: bytes, size: int | bytes) -> None:
    assert JsonSerializer().loads(zlib_record(zlib.compress(BODY), len(BODY))).state["n"] == 1
    with pytest.raises(CorruptSnapshotError):
        JsonSerializer().loads(zlib_record(compressed, size))


# -- the signed pickle ----------------------------------------------------------------------


class Unregistered:
    """Any picklable class: the pickle serializer needs no registration."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unregistered) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


def test_pickle_round_trip_keeps_any_picklable_object() -> None:
    ser = PickleSerializer(secret_key="s3cret")
    original = rich_snapshot()
    original.state["anything"] = Unregistered(3)
    loaded = ser.loads(ser.dumps(original))
    assert_same_content(loaded, original)
    assert loaded.created_at == original.created_at


def test_pickle_refuses_unpicklable_values_by_path() -> None:
    with pytest.raises(SerializationError) as info:
        PickleSerializer(secret_key=b"k").dumps(WorkflowSnapshot("w", state={"fn": lambda: 1}))
    assert info.value.path == "state['fn']"


def test_pickle_detects_a_changed_byte_anywhere() -> None:
    ser = PickleSerializer(secret_key=b"k")
    record = ser.dumps(WorkflowSnapshot("w", state={"n": 1}))
    for position in range(len(record)):
        damaged = bytearray(record)
        damaged[position] ^= 0x01
        with pytest.raises(CorruptSnapshotError):
            ser.loads(bytes(damaged))


def test_pickle_with_a_wrong_key_is_corrupt() -> None:
    record = PickleSerializer(secret_key=b"one").dumps(WorkflowSnapshot("w"))
    with pytest.raises(CorruptSnapshotError, match="signature"):
        PickleSerializer(secret_key=b"two").loads(record)


def test_pickle_keys_can_be_rotated() -> None:
    old, new = b"old key", "new key"
    old_record = PickleSerializer(secret_key=old).dumps(WorkflowSnapshot("old"))
    rotated = PickleSerializer(secret_key=new, previous_keys=[b"older", old])
    assert rotated.loads(old_record).workflow_id == "old"
    new_record = rotated.dumps(WorkflowSnapshot("new"))
    assert PickleSerializer(secret_key=new.encode()).loads(new_record).workflow_id == "new"
    with pytest.raises(CorruptSnapshotError):
        PickleSerializer(secret_key=old).loads(new_record)


def test_pickle_needs_a_key() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        PickleSerializer(secret_key=b"")
    with pytest.raises(ValueError, match="secret_key"):
        PickleSerializer(secret_key=b"k", previous_keys=[""])


def test_a_signed_pickle_of_something_else_is_corrupt() -> None:
    body = pickle.dumps({"workflow_id": "w"})
    import hashlib
    import hmac

    mac = hmac.new(b"k", body, hashlib.sha256).hexdigest().encode()
    with pytest.raises(CorruptSnapshotError, match="WorkflowSnapshot"):
        PickleSerializer(secret_key=b"k").loads(_framing.frame(b"pickle", mac, body))


class Touch:
    """Unpickling this creates a file: what an attacker's pickle would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.path,))


def test_a_malicious_pickle_is_never_unpickled(tmp_path: Path) -> None:
    # The payload is real: unpickling it creates its file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Touch(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps(Touch(marker))
    import hashlib
    import hmac

    forged = [
        payload,  # no header
        _framing.frame(b"pickle", b"", payload),  # unsigned
        _framing.frame(b"pickle", b"0" * 64, payload),  # a made-up signature
        _framing.frame(b"pickle", hashlib.sha256(payload).hexdigest().encode(), payload),
        _framing.frame(b"pickle", hmac.new(b"guess", payload, hashlib.sha256)
                       .hexdigest().encode(), payload),
        _framing.frame(b"pickle", hmac.new(b"k", payload, hashlib.sha256)
                       .hexdigest().upper().encode(), payload),
        _framing.frame(b"msgpack", _framing.crc_detail(payload), payload),
    ]
    for record in forged:
        for ser in (PickleSerializer(secret_key=b"k"), JsonSerializer()):
            with pytest.raises(CorruptSnapshotError):
                ser.loads(record)
    assert not marker.exists()


def test_incompressible_bodies_skip_compression_and_compressible_ones_shrink() -> None:
    import os as _os

    from workflow_persistence import JsonSerializer as _Json
    from workflow_persistence import WorkflowSnapshot as _Snapshot

    serializer = _Json(compress_threshold=1 << 20)
    random_blob = _Snapshot("w", state={"blob": _os.urandom(2 << 20)})
    stored = serializer.dumps(random_blob)
    assert stored.startswith(b"wfp:msgpack:")  # left as it is: zlib would not help
    text = _Snapshot("w", state={"log": wordy(3 << 20)})
    packed = serializer.dumps(text)
    assert packed.startswith(b"wfp:msgpack+zlib:")
    assert len(packed) < len(_Json(compress_threshold=None).dumps(text)) / 3
    assert serializer.loads(packed).state == text.state
