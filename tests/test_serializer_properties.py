"""Property tests for the serializers: what they accept comes back equal; what they are
given, however damaged, never makes them raise anything but CorruptSnapshotError."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from workflow_persistence import (
    CorruptSnapshotError,
    Decision,
    ErrorInfo,
    InvalidWorkflowIdError,
    JsonSerializer,
    PickleSerializer,
    SerializationError,
    UnresolvedObject,
    WorkflowSnapshot,
)
from workflow_persistence._ids import check_workflow_id
from workflow_persistence._serialization import framing as _framing

from .samples import Customer, Drafted, Ledger, Level, Money, Priority, rich_snapshot, serializer

# Examples are kept few so the whole file runs in seconds; no example database is written.
FAST = settings(
    max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(FAST, max_examples=150)

# -- equality that sees what == does not ----------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types; floats and Decimals by their exact bits, datetimes by
    wall time, fold and zone (aware datetimes compare equal by instant alone)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, Decimal):
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, datetime | time):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.fold == b.fold
            and same_zone(a.tzinfo, b.tzinfo)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return bool(a == b)


def same_zone(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, ZoneInfo):
        return bool(a.key == b.key)
    if isinstance(a, timezone):
        return bool(a == b and a.tzname(None) == b.tzname(None))
    return a is None and b is None


def test_same_sees_what_equality_misses() -> None:
    # The comparison is itself tested: each pair is == but not the same.
    berlin = ZoneInfo("Europe/Berlin")
    pairs = [
        (0.0, -0.0),
        (1, 1.0),
        (1, True),
        (Decimal("1.0"), Decimal("1")),
        ({1, 2}, frozenset({1, 2})),
        (datetime(2026, 10, 25, 2, 30, tzinfo=berlin), datetime(2026, 10, 25, 2, 30,
                                                                 tzinfo=berlin, fold=1)),
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=timezone(
            timedelta(hours=1)))),
        (datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1), "A")),
         datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1), "B"))),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (Money(Decimal("1.0")), Money(Decimal("1"))),
    ]
    for a, b in pairs:
        assert a == b
        assert not same(a, b)
    assert same(math.nan, math.nan)


# -- strategies for every supported value ---------------------------------------------------

ZONES = [ZoneInfo(key) for key in ("Europe/Berlin", "America/New_York", "Asia/Kolkata",
                                    "Australia/Lord_Howe", "UTC", "America/St_Johns")]

fixed_offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                  max_value=timedelta(hours=23, minutes=59)),
)
named_offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
    st.text(min_size=1, max_size=8),
)
zones = st.one_of(st.just(UTC), fixed_offsets, named_offsets, st.sampled_from(ZONES))


@st.composite
def datetimes_with_fold(draw: st.DrawFn) -> datetime:
    value = draw(st.datetimes(timezones=st.none() | zones))
    return value.replace(fold=draw(st.integers(0, 1)))


@st.composite
def times_with_fold(draw: st.DrawFn) -> time:
    value = draw(st.times(timezones=st.none() | zones))
    return value.replace(fold=draw(st.integers(0, 1)))


big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    st.builds(lambda bits, sign: sign * (1 << bits), st.integers(60, 15_000),
              st.sampled_from([-1, 1])),
)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.dates(),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.sampled_from(list(Priority) + list(Level)),
)

leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # NaN included
    st.decimals(),  # NaN, sNaN and infinities included
    datetimes_with_fold(),
    times_with_fold(),
    st.builds(Money, st.decimals(), st.text(max_size=3)),
)

hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
    ),
    max_leaves=6,
)

values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.builds(Customer, st.text(max_size=10), st.dates(),
                  st.frozensets(st.text(max_size=5), max_size=3)),
        st.builds(Drafted, st.text(max_size=10), st.builds(Money, st.decimals())),
    ),
    max_leaves=12,
)

aware_utc = st.datetimes(timezones=st.just(UTC))
states = st.dictionaries(st.text(max_size=12), values, max_size=6)


def valid_id(text: str) -> bool:
    try:
        check_workflow_id(text)
    except InvalidWorkflowIdError:
        return False
    return True


@st.composite
def snapshots(draw: st.DrawFn) -> WorkflowSnapshot:
    nodes = st.text(min_size=1, max_size=10)
    return WorkflowSnapshot(
        workflow_id=draw(st.text(min_size=1, max_size=255).filter(valid_id)),
        status=draw(st.sampled_from(["interrupted", "failed", "running"])),
        state=draw(states),
        current_node=draw(st.none() | nodes),
        event=draw(st.none() | st.builds(Drafted, st.text(max_size=10))),
        completed_nodes=draw(st.lists(nodes, max_size=4)),
        interrupt=draw(values),
        history=draw(st.lists(st.builds(Decision, nodes, values, values, aware_utc,
                                        st.none() | aware_utc), max_size=3)),
        attempts=draw(st.dictionaries(nodes, st.integers(0, 10), max_size=3)),
        error=draw(st.none() | st.builds(ErrorInfo, nodes, st.text(), st.text(), st.text(),
                                         aware_utc)),
        metadata=draw(st.dictionaries(st.text(max_size=8), values, max_size=3)),
        created_at=draw(aware_utc),
        updated_at=draw(aware_utc),
        version=draw(st.integers(0, 2**40)),
    )


SNAPSHOT_FIELDS = [f.name for f in fields(WorkflowSnapshot)]


# -- round trips ----------------------------------------------------------------------------


@FAST
@given(value=values)
def test_any_supported_value_round_trips(value: Any) -> None:
    ser = serializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": value})))
    assert same(loaded.state["v"], value)


@FAST
@given(snapshot=snapshots(), threshold=st.sampled_from([None, 0, 64]))
def test_any_snapshot_round_trips_every_field(
    snapshot: WorkflowSnapshot, threshold: int | None
) -> None:
    ser = serializer(compress_threshold=threshold)
    loaded = ser.loads(ser.dumps(snapshot))
    for name in SNAPSHOT_FIELDS:
        assert same(getattr(loaded, name), getattr(snapshot, name)), name


@FAST
@given(value=st.one_of(datetimes_with_fold(), times_with_fold()))
def test_times_keep_offset_name_and_fold(value: datetime | time) -> None:
    ser = JsonSerializer()
    loaded = ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": value}))).state["v"]
    assert loaded.fold == value.fold
    assert loaded.tzinfo is value.tzinfo or (
        type(loaded.tzinfo) is timezone and loaded.tzinfo == value.tzinfo
    )
    if isinstance(value, datetime):
        assert loaded.utcoffset() == value.utcoffset()
        assert loaded.tzname() == value.tzname()
        assert loaded == value
    else:
        assert loaded.tzname() == value.tzname()


@FAST
@given(snapshot=snapshots())
def test_the_signed_pickle_round_trips_any_snapshot(snapshot: WorkflowSnapshot) -> None:
    ser = PickleSerializer(secret_key=b"key")
    loaded = ser.loads(ser.dumps(snapshot))
    for name in SNAPSHOT_FIELDS:
        assert same(getattr(loaded, name), getattr(snapshot, name)), name


# Objects only: a set directly in the state may be written in another order; a set inside
# an object that comes back as a stand-in must not be.
objects = st.one_of(
    st.builds(Ledger, values),
    st.builds(Customer, st.text(max_size=10), st.dates(), st.frozensets(hashables, max_size=6)),
    st.builds(Drafted, st.text(max_size=10), st.builds(Money, st.decimals())),
    st.sampled_from(list(Priority) + list(Level)),
)


@FAST
@given(state=st.dictionaries(st.text(max_size=5), objects, max_size=4),
       event=st.builds(Drafted, st.text(max_size=10)))
def test_stand_ins_write_back_the_bytes_they_were_read_from(
    state: dict[str, Any], event: Drafted
) -> None:
    record = serializer().dumps(WorkflowSnapshot("w", state=state, event=event))
    stand_in = JsonSerializer(unknown_classes="stand-in")
    loaded = stand_in.loads(record)
    assert isinstance(loaded.event, UnresolvedObject)
    assert stand_in.dumps(loaded) == record


# -- fuzzing: damaged input only ever raises CorruptSnapshotError ---------------------------

READERS = [serializer(), JsonSerializer(), JsonSerializer(unknown_classes="stand-in"),
           serializer(max_decoded_size=4096)]


def load_or_corrupt(data: bytes) -> WorkflowSnapshot | None:
    """Load ``data`` with every reader: a snapshot or CorruptSnapshotError, nothing else."""
    result = None
    for reader in READERS:
        try:
            result = reader.loads(data)
        except CorruptSnapshotError:
            continue
        assert isinstance(result, WorkflowSnapshot)
    return result


def frame(body: bytes, compressed: bool = False) -> bytes:
    if compressed:
        packed = zlib.compress(body)
        detail = b"%s:%d" % (_framing.crc_detail(packed), len(body))
        return _framing.frame(b"msgpack+zlib", detail, packed)
    return _framing.frame(b"msgpack", _framing.crc_detail(body), body)


VALID = serializer(compress_threshold=None).dumps(rich_snapshot())
VALID_BODY = VALID.partition(b"\n")[2]
VALID_COMPRESSED = serializer(compress_threshold=0).dumps(rich_snapshot())


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted or cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "set" and out:
            out[at] = draw(st.sampled_from([0x00, 0xC0, 0xC1, 0xC7, 0xD4, 0xDC, 0xDE, 0xFF,
                                            0x7F, 0x80, 0x90, 0xA0]))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del out[at:]
        elif kind == "splice":
            start = draw(st.integers(0, len(data)))
            out[at:at] = data[start:start + draw(st.integers(1, 32))]
    return bytes(out)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_are_corrupt(data: bytes) -> None:
    assert load_or_corrupt(data) is None


@FUZZ
@given(
    prefix=st.sampled_from([b"wfp:", b"wfp:msgpack:", b"wfp:msgpack+zlib:", b"wfp:pickle:",
                            b"wfp:msgpack:00000000\n", b"wfp:msgpack+zlib:00000000:10\n"]),
    data=st.binary(max_size=300),
)
def test_random_bytes_behind_a_header_are_corrupt(prefix: bytes, data: bytes) -> None:
    assert load_or_corrupt(prefix + data) is None


@FUZZ
@given(data=st.data())
def test_any_change_to_a_record_is_detected(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from([VALID, VALID_COMPRESSED]))
    damaged = data.draw(mutated(original))
    assume(damaged != original)
    assert load_or_corrupt(damaged) is None


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_changed_bodies_with_a_correct_checksum_load_or_are_corrupt(
    data: st.DataObject, compressed: bool
) -> None:
    # The checksum is made to match, so the decoder itself meets the damage.
    load_or_corrupt(frame(data.draw(mutated(VALID_BODY)), compressed))


# MessagePack values, including ext values of every code the codec knows and some it does
# not, with random payloads or payloads that are themselves MessagePack.
packable = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=10), st.binary(max_size=12)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**63), inner, max_size=3),
        st.builds(msgpack.ExtType, st.integers(0, 20), st.binary(max_size=24)),
        st.builds(lambda code, v: msgpack.ExtType(code, msgpack.packb(v)),
                  st.integers(0, 20), inner),
    ),
    max_leaves=12,
)

ZONE_SPECS = st.one_of(
    st.lists(st.sampled_from(["fixed", "zone", 0, 86_400_000_000, None, "Europe/Berlin",
                              "../etc/passwd", "", "\x00"]), max_size=3),
)


@st.composite
def crafted_entries(draw: st.DrawFn) -> Any:
    """Ext values whose payload is shaped like the real one, with wrong parts."""
    code = draw(st.integers(1, 15))
    part = draw(packable)
    shaped = {
        6: [draw(st.binary(min_size=10, max_size=10)), draw(ZONE_SPECS)],
        8: [draw(st.binary(min_size=6, max_size=6)), draw(st.none() | ZONE_SPECS)],
        9: draw(st.lists(st.integers(-(2**63), 2**63), max_size=4)),
        12: [draw(st.sampled_from(["tests.samples:Money", "tests.samples:Priority",
                                   "tests.samples:Ledger", "tests.samples:Drafted",
                                   "workflow_persistence._events:StopEvent", "x:Y"])),
             draw(st.sampled_from(["dataclass", "enum", "state", "pydantic", "other"])),
             part],
    }
    if code in shaped:
        return msgpack.ExtType(code, msgpack.packb(shaped[code]))
    raw = draw(st.binary(max_size=16) | st.sampled_from([b"", b"NaN", b"-0", b"1e999999999",
                                                         b"9" * 5000, b"0" * 16]))
    return msgpack.ExtType(code, raw)


@FUZZ
@given(value=st.one_of(packable, crafted_entries(), st.lists(crafted_entries(), max_size=4)),
       slot=st.integers(0, 14), compressed=st.booleans())
def test_crafted_values_in_a_valid_envelope_load_or_are_corrupt(
    value: Any, slot: int, compressed: bool
) -> None:
    # Arrays as tuples: a tuple key is an array, which a dict key cannot be as a list.
    row = list(msgpack.unpackb(VALID_BODY, strict_map_key=False, raw=False, use_list=False,
                               ext_hook=msgpack.ExtType, timestamp=0))
    row[slot] = value
    body = msgpack.packb(row, use_bin_type=True)
    loaded = load_or_corrupt(frame(body, compressed))
    if loaded is not None:
        assert loaded.workflow_id == "refund-42"


# -- nesting and container counts -------------------------------------------------------------

WRAPS: dict[str, Callable[[Any], Any]] = {
    "list": lambda v: [v],
    "tuple": lambda v: (v,),
    "dict": lambda v: {"k": v},
    "object": lambda v: Money(v),  # a registered dataclass: one level, as its field is
}


@FAST
@given(
    kinds=st.sampled_from([0, 1, 7, 99, 100, 101, 102, 140]).flatmap(
        lambda depth: st.lists(st.sampled_from(sorted(WRAPS)), min_size=depth, max_size=depth)
    ),
    leaf=hashable_leaves,
)
def test_values_up_to_max_depth_round_trip_and_deeper_ones_are_refused(
    kinds: list[str], leaf: Any
) -> None:
    value = leaf
    for kind in kinds:
        value = WRAPS[kind](value)
    snapshot = WorkflowSnapshot("w", state={"v": value})
    ser = serializer()
    if len(kinds) <= 100:
        assert same(ser.loads(ser.dumps(snapshot)).state["v"], value)
    else:
        with pytest.raises(SerializationError) as info:
            ser.dumps(snapshot)
        assert info.value.path is not None
        assert info.value.path.startswith("state['v']")


# Each wraps the object that follows it, so inserted before one the body stays well formed:
# an array, a map under a nil key, a tuple's and a stand-in's marked arrays.
WRAPPERS = [b"\x91", b"\x81\xc0", b"\x92\xc7\x00\x20", b"\x94\xc7\x00\x23\xa3x:Y\xa5state"]


@st.composite
def nested_deeper(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with wrappers inserted, up to well beyond MessagePack's 1024 levels."""
    out = body
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out)))
        levels = draw(st.sampled_from([1, 2, 97, 98, 99, 100, 101, 1021, 1022, 1023, 1030, 5000]))
        out = out[:at] + draw(st.sampled_from(WRAPPERS)) * levels + out[at:]
    return out


@st.composite
def recounted(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with the item count of some arrays and maps changed (or what looks like one)."""
    out = bytearray(body)
    headers = [i for i, b in enumerate(out) if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF]
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(headers))
        kind = out[at]
        if kind <= 0x9F:
            out[at] = (kind & 0xF0) | draw(st.integers(0, 15))
        elif kind in (0xDC, 0xDE) and at + 3 <= len(out):
            out[at + 1 : at + 3] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif at + 5 <= len(out):
            count = draw(st.sampled_from([0, 1, 15, 1 << 16, 1 << 20, 1 << 31, (1 << 32) - 1]))
            out[at + 1 : at + 5] = count.to_bytes(4, "big")
    return bytes(out)


@st.composite
def format_1_nested(
    draw: st.DrawFn,
    depths: tuple[int, ...] = (1, 2, 3, 50, 101, 150, 300),
    codes: tuple[int, ...] = (1, 2, 3, 12),
) -> bytes:
    """A body as version 0.1 wrote it, a state value nested ext within ext."""
    value: Any = draw(st.integers(-(2**63), 2**64 - 1))
    for _ in range(draw(st.sampled_from(depths))):
        code = draw(st.sampled_from(codes))
        entry = [value] if code != 12 else [draw(st.sampled_from(["x:Y", "tests.samples:Money"])),
                                            draw(st.sampled_from(["dataclass", "state"])), value]
        value = msgpack.ExtType(code, msgpack.packb(entry))
    # Envelope version 1 (15 fields) or 2 (18: workflow_name, result, expires_at added).
    now = msgpack.ExtType(5, datetime(2026, 1, 1, tzinfo=UTC).__reduce_ex__(4)[1][0])
    row = [1, "w", "interrupted", {"v": value}, None, None, [], None, [], {}, None, {}, now, now,
           0]
    if draw(st.booleans()):
        row = [2, *row[1:], "named", None, now]
    return bytes(msgpack.packb(row, use_bin_type=True))


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_nesting_and_counts_changed_under_a_correct_checksum_load_or_are_corrupt(
    data: st.DataObject, compressed: bool
) -> None:
    body = data.draw(st.one_of(
        nested_deeper(VALID_BODY), recounted(VALID_BODY), format_1_nested(),
        format_1_nested().flatmap(nested_deeper), format_1_nested().flatmap(recounted),
    ))
    load_or_corrupt(frame(body, compressed))


@FUZZ
@given(body=format_1_nested(depths=(1, 2, 3, 50), codes=(1, 3)), compressed=st.booleans())
def test_records_of_envelope_versions_1_and_2_load(body: bytes, compressed: bool) -> None:
    # Otherwise the test above would pass for the wrong reason: tuples and frozensets of
    # tuples and frozensets, nested as version 0.1 wrote them, always load.
    loaded = JsonSerializer().loads(frame(body, compressed))
    assert loaded.workflow_id == "w"


@FUZZ
@given(data=st.binary(max_size=200), header=st.sampled_from([b"", b"wfp:pickle:", b"wfp:pickle:"
                                                              + b"0" * 64 + b"\n"]))
def test_the_signed_pickle_refuses_anything_unsigned(data: bytes, header: bytes) -> None:
    ser = PickleSerializer(secret_key=b"key")
    try:
        ser.loads(header + data)
    except CorruptSnapshotError:
        return
    raise AssertionError("unsigned data was accepted")


@FUZZ
@given(data=st.data())
def test_the_signed_pickle_detects_any_change(data: st.DataObject) -> None:
    ser = PickleSerializer(secret_key=b"key")
    original = ser.dumps(rich_snapshot())
    damaged = data.draw(mutated(original))
    assume(damaged != original)
    try:
        ser.loads(damaged)
    except CorruptSnapshotError:
        return
    raise AssertionError("a changed record was accepted")


def test_the_fuzzed_records_are_valid_to_begin_with() -> None:
    # Otherwise every fuzz test above would pass for the wrong reason.
    for record in (VALID, VALID_COMPRESSED, frame(VALID_BODY), frame(VALID_BODY, True)):
        loaded = load_or_corrupt(record)
        assert loaded is not None
        assert loaded.state["date"] == date(1999, 12, 31)
    assert VALID_COMPRESSED.startswith(b"wfp:msgpack+zlib:")
