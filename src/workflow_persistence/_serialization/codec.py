"""The default serializer's value codec: JSON's data model plus typed extensions.

Values are written as MessagePack (a binary form of JSON's data model). A value JSON
cannot hold is written in one of two ways:

* a *leaf* (datetime, date, time, timedelta, Decimal, UUID, a big int) is a MessagePack
  *ext* value: a type code and a payload that holds no other value;
* a *container* (tuple, set, frozenset, an instance of a registered class) is an array
  whose first item is a *marker*, an ext value with an empty payload.

Ext values cannot be forged by user data (a user's dict or string is never mistaken for
one). Everything is decoded by one ``msgpack.unpackb`` call: its parser is iterative, so
no record, however deep, can exhaust the C stack. The decoder revives marked arrays in a
``list_hook`` and leaves in an ``ext_hook``, both called from C, so decoding never walks
the tree in Python. UTC datetimes, the most common leaf, are MessagePack's own timestamps,
packed and read in C.

Records written before (format 1) held containers as ext values whose payload was packed
separately, one ``unpackb`` per level; they are still read, by a guarded reader.

How deep values may nest is bounded: a value nested deeper is refused when saving, and a
record nested deeper is refused when loading, so whatever saves, loads. Both sides count
the same thing, MessagePack nesting levels (an array or map inside another is one level
deeper), and both count them on the packed bytes, before unpacking and after packing, with
msgpack's own C parser in skip mode (:class:`_DepthChecker`): its fixed stack of 1024
levels is pre-filled so that exactly ``levels`` remain. A marked container is one array,
so it takes one level like a list; a registered object with a dict of fields takes two.
Packing a value too deep for the C stack of the calling thread is avoided by walking the
value first, level by level with ``gc.get_referents``, in threads with a small stack.

``bytearray`` and ``memoryview`` come back as ``bytes`` (MessagePack has one binary type).
``collections.deque`` (with its ``maxlen``), ``array.array`` and time zones
(``zoneinfo.ZoneInfo`` by key, ``datetime.timezone``) are values of their own.

Classes are rebuilt only when registered with the codec. A class named in stored data that
is not registered is never imported: decoding raises CorruptSnapshotError, or, when asked,
returns an :class:`UnresolvedObject` stand-in carrying the class path and its fields.
"""

from __future__ import annotations

import array
import copyreg
import dataclasses
import enum
import gc
import sys
import threading
import types as _types
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from itertools import chain, compress, repeat
from operator import attrgetter, is_
from typing import Any, Literal, TypeVar, cast
from zoneinfo import ZoneInfo

import msgpack

from workflow_persistence.errors import CorruptSnapshotError, SerializationError

from . import cstack as _cstack

UnknownClassPolicy = Literal["error", "stand-in"]
_T = TypeVar("_T")

# Ext type codes. Stored data depends on them: never renumber, only add.
EXT_TUPLE = 1  # format 1 only: payload [items]
EXT_SET = 2  # format 1 only: payload [items]
EXT_FROZENSET = 3  # format 1 only: payload [items]
EXT_DATETIME_NAIVE = 4  # payload: the datetime's 10-byte pickle state
EXT_DATETIME_UTC = 5  # payload: the 10-byte state of its UTC wall time
EXT_DATETIME_TZ = 6  # payload: [state, tz]
EXT_DATE = 7  # payload: the date's 4-byte pickle state
EXT_TIME = 8  # payload: [state, tz]
EXT_TIMEDELTA = 9  # payload: [days, seconds, microseconds]
EXT_DECIMAL = 10  # payload: its str()
EXT_UUID = 11  # payload: 16 bytes
EXT_OBJECT = 12  # format 1 only: payload [class path, kind, fields]
EXT_BIGINT = 13  # payload: decimal digits (read only: str() of an int is capped at 4300 digits)
# 14 was reserved for bytearray: msgpack packs it natively as bytes.
EXT_BIGINT_BYTES = 15  # payload: signed big-endian two's complement, any size
EXT_DEQUE = 16  # format 1 only: payload [maxlen, items]
EXT_ARRAY = 17  # payload: [typecode, itemsize, little-endian bytes]
EXT_TZINFO = 18  # payload: a time zone entry, as in EXT_DATETIME_TZ
# Format 2: the first item of an array that stands for a container of another type.
MARK_TUPLE = 32  # [mark, *items]
MARK_SET = 33  # [mark, *items]
MARK_FROZENSET = 34  # [mark, *items]
MARK_OBJECT = 35  # [mark, class path, kind, fields] or [mark, class path, kind, *fields]
MARK_DEQUE = 36  # [mark, maxlen, *items]
# Format 2 writes a UTC datetime of fold 0 as MessagePack's own timestamp (ext code -1).

# How a registered class is taken apart and rebuilt.
KIND_DATACLASS = "dataclass"
KIND_PYDANTIC = "pydantic"
KIND_ENUM = "enum"
KIND_STATE = "state"  # Python's own __getstate__ / __setstate__ protocol
_FIELD_KINDS = frozenset({KIND_DATACLASS, KIND_PYDANTIC})  # fields: a dict of name to value

_PACKER_BUFFER = 1 << 14  # a pooled packer's buffer stays within twice this
_POOLED_PACKERS = 16
_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT: the instance dict lives outside the layout
_POINTER = 8 if sys.maxsize > 2**32 else 4
_LITTLE_ENDIAN = sys.byteorder == "little"
_NATIVE = frozenset({str, bytes, int, float, bool, type(None)})
# Classes the codec stores itself and gives back with their type: registering one is a no-op.
_REBUILT_NATIVELY = frozenset({
    *_NATIVE, dict, list, tuple, set, frozenset, datetime, date, time, timedelta, Decimal,
    uuid.UUID, deque, array.array, ZoneInfo, timezone,
})
# Classes the codec stores, but as another type: registering one cannot keep that promise.
_REBUILT_AS_BYTES = frozenset({bytearray, memoryview})
_ExtType = msgpack.ExtType
_Timestamp = msgpack.Timestamp
_new_object = object.__new__
_tuple_new = tuple.__new__

# The C constructors also take the pickle state (bytes) that ``__reduce_ex__`` returns;
# typeshed does not say so.
_datetime_from_state = cast(Callable[..., datetime], datetime)
_date_from_state = cast(Callable[..., date], date)
_time_from_state = cast(Callable[..., time], time)

# -- what the depth walks treat alike ------------------------------------------------------

_CONTAINERS = frozenset({list, dict, tuple, set, frozenset, deque})
# Values whose referents are only their items (containers) or that have none (the rest):
# a level made of these alone is handed to gc.get_referents as it is.
# (Not array.array: its referents include its type, and from there every module.)
_PLAIN = _CONTAINERS | _NATIVE | {datetime, date, time, timedelta, Decimal}
_PLAIN_NO_DATETIME = _PLAIN - {datetime}

# -- limits that keep any record cheap to read ------------------------------------------------

_LARGE_VALUE = 16 << 10  # from this size a packed value tells how best to pack the next
_SET_PROBE = 32  # larger sets are looked at for hash collisions before they are built
_IN_THREAD_NESTING = 2  # format 1 payloads read in the caller's thread, ~40 KiB of C stack each
_STACK_PER_NESTING = 64 * 1024  # C stack a format 1 payload level takes in a worker thread
# Format 1 copies each payload while reading it: bytes copied, in bodies' worth plus an
# allowance, for a stored body and for one inflated from a compressed record.
_COPIES = (16, 64 << 20)
_COPIES_INFLATED = (2, 8 << 20)
# Deeper than this (in levels: max_depth + 2) packing or freeing a value could exhaust the C
# stack of a 256 KiB thread; 500 levels were measured to fit, 600 not.
MAX_DEPTH_LIMIT = 400


def _ext(code: int, payload: Any) -> Any:  # payload: bytes (pickle states are typed Any)
    # ExtType.__new__ is Python code that re-checks its arguments; ours are always valid.
    return _tuple_new(_ExtType, (code, payload))


_TUPLE_MARK = _ext(MARK_TUPLE, b"")
_SET_MARK = _ext(MARK_SET, b"")
_FROZENSET_MARK = _ext(MARK_FROZENSET, b"")
_OBJECT_MARK = _ext(MARK_OBJECT, b"")
_DEQUE_MARK = _ext(MARK_DEQUE, b"")
_MARKS = {
    mark.code: mark
    for mark in (_TUPLE_MARK, _SET_MARK, _FROZENSET_MARK, _OBJECT_MARK, _DEQUE_MARK)
}

# Leaf payloads that are themselves packed (an aware time's zone, a timedelta's parts) hold
# plain values only: one packer with no ``default`` never calls back, so sharing it is safe.
_pack_plain = msgpack.Packer(use_bin_type=True, strict_types=True).pack


class NestedTooDeeply(ValueError):
    """A value nests deeper than the serializer's ``max_depth`` allows."""


class CollidingHashes(ValueError):
    """A set whose items' hashes collide so much that building it again takes quadratic time."""


@dataclass(frozen=True)
class UnresolvedObject:
    """Stands in for an instance of a class that is not registered with the serializer.

    Encoding it writes back exactly what was read, so a stand-in survives a round trip.
    ``raw`` keeps the bytes it was read from: packing ``fields`` again is not enough for a
    byte-identical copy (a set's order may differ), so they are written back as long as
    ``fields`` are unchanged.
    """

    class_path: str
    kind: str
    fields: Any
    raw: bytes | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __hash__(self) -> int:
        # By content: stand-ins of one class must not all collide in a set or as keys.
        return hash((self.class_path, self.kind, _content_hash(self.fields, 0)))


def class_path(cls: type) -> str:
    """The name a class is stored under: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_pydantic_model(cls: type) -> bool:
    return hasattr(cls, "model_validate") and hasattr(cls, "__pydantic_fields__")


def _kind_of(cls: type) -> str:
    if isinstance(cls, enum.EnumMeta):
        return KIND_ENUM
    if dataclasses.is_dataclass(cls):
        return KIND_DATACLASS
    if _is_pydantic_model(cls):
        return KIND_PYDANTIC
    return KIND_STATE


class ValueCodec:
    """Encodes values to MessagePack bytes and back; thread-safe."""

    def __init__(
        self,
        types: Iterable[type] = (),
        *,
        unknown_classes: UnknownClassPolicy = "error",
        max_depth: int = 100,
    ) -> None:
        if unknown_classes not in ("error", "stand-in"):
            raise ValueError("unknown_classes must be 'error' or 'stand-in'")
        self.unknown_classes: UnknownClassPolicy = unknown_classes
        self.max_depth = check_max_depth(max_depth)
        self._classes: dict[str, type] = {}
        # class path -> (class, kind, rebuild(fields)), worked out once at registration
        self._rebuilders: dict[str, tuple[type, str, Callable[[Any], Any]]] = {}
        self._writings: list[_Writing] = []  # idle encoding contexts, see pack
        self._walk_first = False  # see pack
        self._encoders: dict[type, Callable[[Any], Any]] = {
            tuple: _enc_tuple,
            set: _enc_set,
            frozenset: _enc_frozenset,
            datetime: _enc_datetime,
            date: _enc_date,
            time: _enc_time,
            timedelta: _enc_timedelta,
            Decimal: _enc_decimal,
            uuid.UUID: _enc_uuid,
            int: _enc_bigint,  # msgpack asks only for ints beyond 64 bits
            UnresolvedObject: self._enc_unresolved,
            deque: _enc_deque,
            array.array: _enc_array,
            ZoneInfo: _enc_tzinfo,
            timezone: _enc_tzinfo,
            _StoredArray: list,  # a stand-in written back as it was read
            _StoredMap: dict,
        }
        # Leaves, read alike in both formats: a payload never holds another ext value.
        self._decoders: dict[int, Callable[[bytes], Any]] = {
            EXT_DATETIME_NAIVE: _dec_datetime_naive,
            EXT_DATETIME_UTC: _dec_datetime_utc,
            EXT_DATETIME_TZ: _dec_datetime_tz,
            EXT_DATE: _dec_date,
            EXT_TIME: _dec_time,
            EXT_TIMEDELTA: _dec_timedelta,
            EXT_DECIMAL: lambda p: Decimal(p.decode("ascii")),
            EXT_UUID: lambda p: uuid.UUID(bytes=p),
            EXT_BIGINT: lambda p: int(p.decode("ascii")),
            EXT_BIGINT_BYTES: lambda p: int.from_bytes(p, "big", signed=True),
            EXT_ARRAY: _dec_array,
            EXT_TZINFO: lambda p: _tz_from_spec(_unpack_payload(p)),
        }
        self.register(*types)

    # -- registration -------------------------------------------------------------------

    def register(self, *types: type) -> None:
        """Allow instances of ``types`` to be encoded and rebuilt.

        Dataclasses, pydantic models and enums are taken apart by their fields or value;
        any other class through ``__getstate__`` / ``__setstate__``, as pickle would. A
        class that would not come back equal that way is refused with SerializationError
        and nothing of the call is registered: data is never dropped in silence. Types
        the codec stores itself (deque, array, ZoneInfo, datetime, ...) need no
        registration; registering them changes nothing. Registering a class again is
        harmless; a new class under a stored name (a reloaded module) replaces the old one.
        """
        classes = [cls for cls in types if _needs_registration(cls)]
        for cls in classes:
            _check_rebuildable(cls)
            if _kind_of(cls) == KIND_ENUM:
                _members_by_bytes(cls, self._pack_nested)
        for cls in classes:
            path = class_path(cls)
            self._classes[path] = cls
            self._rebuilders[path] = (cls, _kind_of(cls), _rebuilder(cls, self._pack_nested))
            self._encoders[cls] = self._object_encoder(cls)

    def is_registered(self, cls: type) -> bool:
        """Whether instances of ``cls`` are stored and rebuilt (registered, or native)."""
        if cls in _REBUILT_NATIVELY or cls is UnresolvedObject:
            return True
        return self._classes.get(class_path(cls)) is cls

    # -- encoding -------------------------------------------------------------------------

    def pack(self, value: Any, levels: int, *, write_raw: bool = True) -> bytes:
        """Pack ``value`` if it nests at most ``levels`` arrays and maps deep (``value``
        itself being the first level).

        Raises NestedTooDeeply for a deeper value, CollidingHashes for a set no reader
        should have to build, and whatever the encoders raise for values they cannot
        store. ``write_raw=False`` writes stand-ins from their fields, never as read.

        The packer recurses once per level on the C stack. In a thread with room for its
        worst case the value is packed as it is and its depth read off the bytes, by the
        check ``unpack`` makes; in a smaller one it is measured first (``_Writing.walk``).
        Measuring first also lets UTC datetimes be packed in C rather than one call each:
        it is done in any thread once a large value was seen to hold many of them.
        """
        try:
            writing = self._writings.pop()
        except IndexError:
            writing = _Writing(self)
        try:
            roomy = _cstack.roomy()
            # Only the walk writes stand-ins from their fields: the packer's ``default``
            # writes each one as read.
            if roomy and not self._walk_first and write_raw:
                data = _pack_exactly(writing, value)
                if not _DepthChecker.within(data, levels):
                    raise NestedTooDeeply(f"a value is nested more than {levels} levels deep")
                fast = True
            else:
                fast = writing.walk(value, levels, write_raw)
                data = (writing.fast if fast else writing.exact).pack(value)
        finally:
            writing.forget()
        if roomy and len(data) >= _LARGE_VALUE:  # a benign race: any choice is right
            self._walk_first = fast and _many_timestamps(data)
        # A busy context is never in the pool, so nesting and threads each get their own
        # (list.pop and append are atomic). One whose buffer grew is let go, not kept.
        if len(data) <= _PACKER_BUFFER and len(self._writings) < _POOLED_PACKERS:
            self._writings.append(writing)
        return data

    def _pack_nested(self, value: Any, *, write_raw: bool = True) -> bytes:
        """``value`` packed on its own, as it would be inside a record (to compare values)."""
        return self.pack(value, self.max_depth + 1, write_raw=write_raw)

    def _object_encoder(self, cls: type) -> Callable[[Any], Any]:
        path = class_path(cls)
        kind = _kind_of(cls)
        if kind == KIND_DATACLASS:  # the entry built at once, without a dict of fields
            head = (_OBJECT_MARK, path, kind)
            names = _dataclass_names(cls)

            def encode_fields(obj: Any) -> Any:
                entry = list(head)
                for name in names:
                    entry.append(name)
                    entry.append(getattr(obj, name))
                return entry

            return encode_fields
        fields = _object_fields_getter(cls, kind)

        def encode(obj: Any) -> Any:
            return _object_entry(path, kind, fields(obj))

        return encode

    def _enc_unresolved(self, obj: UnresolvedObject) -> Any:
        fresh = _object_entry(obj.class_path, obj.kind, obj.fields)
        raw = obj.raw
        if raw is None:
            return fresh
        # A set read from ``raw`` may iterate in another order than it was stored in.
        # Reading ``raw`` afresh rebuilds the same sets the same way: if that packs to the
        # same bytes, the fields are unchanged and ``raw`` is written back as read. Both
        # sides write stand-ins from their fields, so nothing here reads ``raw`` again;
        # they are packed in a thread of their own, as a packer is busy in this one.
        def compare() -> bool:
            again = _stand_in_reader().unpack_value(raw)
            if type(again) is not UnresolvedObject:
                return False
            entry = _object_entry(again.class_path, again.kind, again.fields)
            return self._pack_nested(fresh, write_raw=False) == self._pack_nested(
                entry, write_raw=False
            )

        try:
            unchanged = _in_thread_with_stack(compare, _COMPARING_STACK)
        except Exception:
            unchanged = False
        return list(_as_stored(raw)) if unchanged else fresh  # a packer calls default once

    # -- decoding -------------------------------------------------------------------------

    def unpack(self, data: bytes | memoryview, levels: int, *, keep_raw: bool = True) -> Any:
        """Decode a format 2 body, refusing one nested more than ``levels`` deep.

        Damage raises CorruptSnapshotError or whatever msgpack raises.
        """
        # A level takes a byte at least: a body no longer than ``levels`` is not checked.
        checker = None if len(data) <= levels else _DepthChecker.take(levels, len(data))
        if checker is not None and not checker.fits(data):
            raise CorruptSnapshotError(
                "the record holds values nested deeper than this serializer allows;"
                " if it was written with a larger max_depth, read it with"
                " JsonSerializer(max_depth=...)"
            )
        reading = _Reading(self)
        value = reading.read(data)  # damage raises, and a checker left mid-body is dropped
        if checker is not None:
            checker.give_back()
        if reading.pending:
            raise CorruptSnapshotError("damaged record: a type marker outside its array")
        if reading.stand_ins and keep_raw:
            reading.keep_raw(data)
        return value

    def unpack_value(self, data: bytes | memoryview) -> Any:
        """Decode a format 2 value packed on its own (a stand-in's ``raw``)."""
        return self.unpack(data, self.max_depth + 1, keep_raw=False)

    def unpack_legacy(
        self, data: bytes | memoryview, levels: int, *, inflated: bool = False
    ) -> Any:
        """Decode a format 1 body: each container ext holds a payload packed on its own.

        A payload is decoded by a fresh ``unpackb`` inside the outer one's ``ext_hook``,
        about 40 KiB of C stack per level; the first levels are read in the caller's
        thread, a deeper record in a thread with a stack to match. Payload copies and
        containers are counted, so nested copies cannot exhaust memory either. The
        value is then measured as format 2 would be: an object one level, its fields one
        below it.
        """
        factor, allowance = _COPIES_INFLATED if inflated else _COPIES
        copies = factor * len(data) + allowance

        def read(nesting: int) -> _LegacyReading:
            reading = _LegacyReading(self, nesting, copies)
            reading.value = reading.read(data)
            return reading

        try:
            reading = read(_IN_THREAD_NESTING)
        except _DeeperThanThisStack:
            nesting = levels + 1  # a value's own levels plus an aware time's payload
            reading = _in_thread_with_stack(
                lambda: read(nesting), (nesting + 8) * _STACK_PER_NESTING
            )
        if _filtered_too_deep([reading.value], reading.objects, levels - 1):
            raise CorruptSnapshotError(
                "the record holds values nested deeper than this serializer allows;"
                " if it was written with a larger max_depth, read it with"
                " JsonSerializer(max_depth=...)"
            )
        return reading.value

    def _revive(self, path: str, kind: str, fields: Any) -> Any:
        known = self._rebuilders.get(path)
        if known is None:
            if self.unknown_classes == "stand-in":
                return UnresolvedObject(path, kind, fields)
            raise CorruptSnapshotError(
                f"stored data holds an instance of {path}, which is not registered with"
                " this serializer; register the class (types=[...]) to load it"
            )
        _, registered_kind, rebuild = known
        if kind != registered_kind:
            raise CorruptSnapshotError(
                f"stored data holds {path} as a {kind}, but that class is now a {registered_kind}"
            )
        return rebuild(fields)

    # -- error reporting ------------------------------------------------------------------

    def find_beyond_limits(
        self, parts: Iterable[tuple[str, Any, int]]
    ) -> tuple[str, str] | None:
        """``(path, reason)`` of the first of ``(path, value, max_depth)`` parts nested more
        than its ``max_depth`` levels deep, inside itself, or a set whose hashes collide;
        only called after a dump was refused.

        It walks each part depth first with a stack of its own, so however deep the value
        it never recurses, and never raises: a part whose own code fails is a leaf here.
        """
        for path, value, max_depth in parts:
            found = self._first_beyond(path, value, max_depth)
            if found is not None:
                return found
        return None

    def _first_beyond(self, path: str, value: Any, max_depth: int) -> tuple[str, str] | None:
        active: set[int] = set()  # ids of the containers on the path walked down
        stack: list[tuple[Iterator[tuple[str, Any]], int]] = []
        node: tuple[str, Any] | None = (path, value)
        while node is not None:
            path, value = node
            children = self._named_children(path, value)
            if children is not None:
                depth = len(stack)
                if id(value) in active:
                    return path, "it contains itself (a circular reference)"
                if depth > max_depth:
                    return path, (
                        f"it is nested more than {max_depth} levels deep; store it flatter,"
                        " or raise the serializer's max_depth"
                    )
                if type(value) in (set, frozenset) and _collides(value):
                    return path, _collision_reason(value)
                active.add(id(value))
                stack.append((children, id(value)))
            node = None
            while stack and node is None:
                children, owner = stack[-1]
                node = next(children, None)
                if node is None:
                    stack.pop()
                    active.discard(owner)
        return None

    def _named_children(self, path: str, value: Any) -> Iterator[tuple[str, Any]] | None:
        """The parts of a container with their paths; None for a leaf."""
        kind = type(value)
        if kind is dict:
            return dict_children(value, path)
        if kind in _CONTAINERS:
            return ((f"{path}[{i}]", v) for i, v in enumerate(value))
        encoder = self._encoders.get(kind)
        if encoder is None or kind in _PLAIN:
            return None
        try:
            if kind is UnresolvedObject:
                packed = _object_entry(value.class_path, value.kind, value.fields)
            else:
                packed = encoder(value)
        except Exception:
            return None
        if type(packed) is not list:  # a leaf written as an ext value
            return None
        return _named_parts(path, packed, kind is UnresolvedObject)

    def find_unencodable(self, value: Any, path: str) -> tuple[str, str] | None:
        """Return ``(path, reason)`` of the first part of ``value`` that cannot be encoded.

        Only called after encoding failed, so it may be slow: it walks the value in Python.
        It never raises: whatever the value's own code does, the answer names a path.
        """
        try:
            return self._locate(value, path, set())
        except Exception as exc:  # e.g. a __class__ property or __iter__ that raises
            return path, f"looking into it raised {exception_text(exc)}"

    def _locate(self, value: Any, path: str, active: set[int]) -> tuple[str, str] | None:
        kind = type(value)
        if kind in _NATIVE:
            return None
        children: Iterator[tuple[str, Any]]
        if kind is dict:
            children = dict_children(value, path)
        elif kind is list or kind is tuple or kind is set or kind is frozenset or kind is deque:
            children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif kind in self._encoders:
            try:
                packed = self._encoders[kind](value)
            except Exception as exc:
                try:
                    parts = list(self._parts(value, path))
                except Exception as inner:  # its own __getstate__ or model_dump failed
                    return path, _reason(inner)
                if not parts:
                    return path, _reason(exc)
                children = iter(parts)
            else:
                if type(packed) is not list:  # a leaf; an object's parts are packed later
                    return None
                children = self._parts(value, path)
        else:
            return path, _unsupported_message(value)
        if id(value) in active:
            return path, "it contains itself (a circular reference)"
        active.add(id(value))
        try:
            for child_path, child in children:
                found = self._locate(child, child_path, active)
                if found is not None:
                    return found
        except RecursionError:
            return path, "it is nested too deeply"
        finally:
            active.discard(id(value))
        return None

    def _parts(self, value: Any, path: str) -> Iterator[tuple[str, Any]]:
        cls = type(value)
        if cls is UnresolvedObject:
            yield f"{path}.fields", value.fields
            return
        if self._classes.get(class_path(cls)) is not cls:
            return
        kind = _kind_of(cls)
        if kind == KIND_ENUM:
            yield f"{path}.value", value.value
        elif kind == KIND_STATE:
            yield f"{path}.__getstate__()", value.__getstate__()
        else:
            for name, field_value in _object_fields_getter(cls, kind)(value).items():
                yield f"{path}.{name}", field_value


_STAND_IN_READER: list[ValueCodec] = []


def _stand_in_reader() -> ValueCodec:
    """A codec that knows no class: what a stand-in's stored bytes hold, as stored."""
    if not _STAND_IN_READER:
        _STAND_IN_READER.append(
            ValueCodec(unknown_classes="stand-in", max_depth=MAX_DEPTH_LIMIT)
        )
    return _STAND_IN_READER[0]


def check_max_depth(max_depth: Any) -> int:
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int from 1 to {MAX_DEPTH_LIMIT}")
    return max_depth


# -- encoding ---------------------------------------------------------------------------------


class _Writing:
    """One encoding at a time: its two packers and what walking the value worked out.

    ``fast`` packs UTC datetimes in C (MessagePack timestamps); it is used when the walk
    found no aware datetime in another zone or with ``fold`` set, which a timestamp would
    lose. ``memo`` keeps what the walk computed for registered objects, so each one's
    fields are taken once and the packer writes exactly what the walk measured.
    ``stamp`` is the one ``Timestamp`` ``default`` hands the packer for each UTC datetime:
    the packer writes it before it calls ``default`` again, so one object serves them all.
    """

    __slots__ = ("encoders", "exact", "fast", "memo", "stamp", "stand_ins")

    def __init__(self, codec: ValueCodec) -> None:
        self.encoders = codec._encoders
        self.stamp = _new_object(_Timestamp)
        self.memo: dict[int, Any] = {}
        self.stand_ins: list[UnresolvedObject] = []
        self.exact = msgpack.Packer(
            default=self.default, strict_types=True, use_bin_type=True, datetime=False,
            buf_size=_PACKER_BUFFER,
        )
        self.fast = msgpack.Packer(
            default=self.default, strict_types=True, use_bin_type=True, datetime=True,
            buf_size=_PACKER_BUFFER,
        )

    def default(self, obj: Any) -> Any:
        if type(obj) is datetime and obj.tzinfo is UTC and not obj.fold:  # the usual case
            delta = obj - _EPOCH  # as in _timestamp, inlined: a call costs as much again
            stamp = self.stamp
            stamp.seconds = delta.days * 86400 + delta.seconds
            stamp.nanoseconds = delta.microseconds * 1000
            return stamp
        packed = self.memo.get(id(obj))
        if packed is not None:
            return packed
        encoder = self.encoders.get(type(obj))
        if encoder is None:
            raise TypeError(_unsupported_message(obj))
        return encoder(obj)

    def forget(self) -> None:
        self.memo.clear()
        self.stand_ins.clear()

    def walk(self, value: Any, levels: int, write_raw: bool) -> bool:
        """Measure ``value`` level by level, as the packer will meet it: raise
        NestedTooDeeply if it nests more than ``levels`` deep, else return whether the
        fast packer keeps every datetime in it.

        Each level is the C list of the one above's referents (a leaf has none); Python
        looks only at the types a level holds, and at each datetime and object in it: an
        object's children come from what its encoder returns, kept for the packer.
        """
        fast = True
        level = [value]
        depth = 1  # of the containers in ``level``
        while True:
            types = list(map(type, level))
            kinds = set(types)
            children: list[Any] = []
            if not kinds <= _PLAIN_NO_DATETIME:
                if fast and datetime in kinds:
                    fast = _utc_only(level, types)
                others = kinds - _PLAIN
                if others:
                    level = self._take_apart(level, types, others, children)
            if kinds.isdisjoint(_CONTAINERS) and not children:
                break
            if depth > levels:
                raise NestedTooDeeply(f"a value is nested more than {levels} levels deep")
            level = gc.get_referents(*level)
            level += children
            depth += 1
        for stand_in in self.stand_ins:  # now that their fields are known to be shallow
            self.memo[id(stand_in)] = (
                self.encoders[UnresolvedObject](stand_in) if write_raw
                else _object_entry(stand_in.class_path, stand_in.kind, stand_in.fields)
            )
        return fast

    def _take_apart(
        self, level: list[Any], types: list[type], others: set[type], children: list[Any]
    ) -> list[Any]:
        """``level`` without its values of ``others`` types (whose referents are not only
        their items), adding the children of those that are objects to ``children``."""
        memo = self.memo
        gone = []
        for kind in others:
            encoder = self.encoders.get(kind)  # None: the packer refuses it, naming it
            at = -1
            for _ in range(types.count(kind)):
                at = types.index(kind, at + 1)
                gone.append(at)
                value = level[at]
                packed: Any
                if kind is UnresolvedObject:
                    self.stand_ins.append(value)
                    packed = _object_entry(value.class_path, value.kind, value.fields)
                elif encoder is None:
                    continue
                else:
                    packed = memo.get(id(value))
                    if packed is None:
                        packed = memo[id(value)] = encoder(value)
                if type(packed) is list:
                    children += _children(packed)
        kept = level.copy()
        for at in sorted(gone, reverse=True):
            del kept[at]
        return kept


def _many_timestamps(data: bytes) -> bool:
    """Whether ``data`` seems to hold so many timestamps that walking its value would
    cost less than packing them one call each: walking takes about 2.5 µs per KiB, a
    call 0.5 µs, so more than five per KiB. Counted by their first bytes (which may also
    occur inside strings) in 4 KiB from the middle."""
    start = len(data) // 2 - 2048
    stamps = data.count(b"\xd6\xff", start, start + 4096)
    stamps += data.count(b"\xd7\xff", start, start + 4096)
    return stamps > 20


def _pack_exactly(writing: _Writing, value: Any) -> bytes:
    """``value`` packed by the exact packer (every datetime through ``default``)."""
    try:
        data: bytes = writing.exact.pack(value)
    except ValueError as exc:
        if "recursion limit" in str(exc):  # MessagePack's own: more than 1024 levels
            raise NestedTooDeeply(str(exc)) from exc
        raise
    return data


def _utc_only(level: list[Any], types: list[type]) -> bool:
    """Whether no datetime in ``level`` would lose anything as a MessagePack timestamp:
    its zone is UTC (or it is naive, and not written as one) and its ``fold`` is 0."""
    found = list(compress(level, map(is_, types, repeat(datetime))))
    zones = set(map(_ZONE, found))
    return zones <= _STAMPED_ZONES and not any(map(_FOLD, found))


_ZONE = attrgetter("tzinfo")
_FOLD = attrgetter("fold")
_STAMPED_ZONES = frozenset({UTC, None})  # None: a naive datetime goes to ``default``


def _object_entry(path: str, kind: str, fields: Any) -> list[Any]:
    """How an object is written: ``[mark, path, kind, name, value, ...]`` for a dict of
    fields (so the object is one level deep, as its attributes are), else ``[mark, path,
    kind, fields]``."""
    if type(fields) is dict and kind in _FIELD_KINDS:
        return [_OBJECT_MARK, path, kind, *chain.from_iterable(fields.items())]
    return [_OBJECT_MARK, path, kind, fields]


def _children(packed: list[Any]) -> list[Any]:
    """What a value written as ``[mark, ...]`` holds one level below it."""
    if packed[0] is not _OBJECT_MARK:
        return packed[1:]
    if len(packed) == 4:
        return [packed[3]]
    return packed[4::2]


def _named_parts(path: str, packed: list[Any], stand_in: bool) -> Iterator[tuple[str, Any]]:
    if packed[0] is not _OBJECT_MARK:
        yield from ((f"{path}[{i}]", v) for i, v in enumerate(packed[1:]))
        return
    if len(packed) != 4:  # fields by name
        for name, item in zip(packed[3::2], packed[4::2], strict=True):
            yield (f"{path}.fields[{key_text(name)}]" if stand_in else f"{path}.{name}"), item
    elif stand_in:
        yield f"{path}.fields", packed[3]
    elif packed[2] == KIND_ENUM:
        yield f"{path}.value", packed[3]
    else:
        yield f"{path}.__getstate__()", packed[3]


def _enc_tuple(obj: tuple[Any, ...]) -> Any:
    return [_TUPLE_MARK, *obj]


def _enc_set(obj: set[Any]) -> Any:
    if len(obj) > _SET_PROBE and _collides(obj):
        raise CollidingHashes(_collision_reason(obj))
    return [_SET_MARK, *obj]


def _enc_frozenset(obj: frozenset[Any]) -> Any:
    if len(obj) > _SET_PROBE and _collides(obj):
        raise CollidingHashes(_collision_reason(obj))
    return [_FROZENSET_MARK, *obj]


def _enc_datetime(obj: datetime) -> Any:
    # The 10-byte state CPython's pickle uses (protocol 4 keeps ``fold``); built in C.
    tz = obj.tzinfo
    if tz is None:
        return _ext(EXT_DATETIME_NAIVE, obj.__reduce_ex__(4)[1][0])
    if tz is UTC:
        if not obj.fold:
            return _timestamp(obj)
        return _ext(EXT_DATETIME_UTC, obj.__reduce_ex__(4)[1][0])
    state = obj.replace(tzinfo=None).__reduce_ex__(4)[1][0]
    return _ext(EXT_DATETIME_TZ, _pack_plain([state, _tz_spec(tz)]))


def _timestamp(obj: datetime) -> Any:
    """A UTC datetime as MessagePack's own timestamp (ext code -1): written and read in C,
    without the checks a pickle state needs, as every timestamp is a valid datetime.

    A ``Timestamp`` made without its ``__init__`` (whose checks hold by construction here)
    costs half an ``ExtType`` with its payload built in Python; the packer picks the
    32, 64 or 96-bit form.
    """
    delta = obj - _EPOCH
    stamp = _new_object(_Timestamp)
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanoseconds = delta.microseconds * 1000
    return stamp


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _enc_date(obj: date) -> Any:
    return _ext(EXT_DATE, obj.__reduce__()[1][0])


def _enc_time(obj: time) -> Any:
    tz = obj.tzinfo
    state = obj.replace(tzinfo=None).__reduce_ex__(4)[1][0]
    return _ext(EXT_TIME, _pack_plain([state, None if tz is None else _tz_spec(tz)]))


def _enc_timedelta(obj: timedelta) -> Any:
    return _ext(EXT_TIMEDELTA, _pack_plain([obj.days, obj.seconds, obj.microseconds]))


def _enc_decimal(obj: Decimal) -> Any:
    return _ext(EXT_DECIMAL, str(obj).encode("ascii"))


def _enc_uuid(obj: uuid.UUID) -> Any:
    return _ext(EXT_UUID, obj.bytes)


def _enc_bigint(obj: int) -> Any:
    # Not str(obj): CPython refuses to convert ints of more than 4300 digits to text.
    return _ext(EXT_BIGINT_BYTES, obj.to_bytes(obj.bit_length() // 8 + 1, "big", signed=True))


def _enc_deque(obj: deque[Any]) -> Any:
    return [_DEQUE_MARK, obj.maxlen, *obj]


def _enc_array(obj: array.array[Any]) -> Any:
    return _ext(EXT_ARRAY, _pack_plain([obj.typecode, obj.itemsize, _array_bytes(obj)]))


def _enc_tzinfo(obj: ZoneInfo | timezone) -> Any:
    if type(obj) is ZoneInfo and obj.key is None:
        raise TypeError("a ZoneInfo read from a file has no key to be stored by; use ZoneInfo(key)")
    return _ext(EXT_TZINFO, _pack_plain(_tz_spec(obj)))


def _as_stored(raw: bytes) -> Any:
    """``raw`` as values a packer writes back byte for byte: every ext value as it was,
    arrays and maps as types of their own that cannot be mistaken for the user's."""
    return msgpack.unpackb(
        raw, use_list=False, list_hook=_StoredArray, object_pairs_hook=_StoredMap,
        ext_hook=_ExtType, strict_map_key=False, raw=False, timestamp=0,
    )


class _StoredArray(tuple):  # type: ignore[type-arg]
    """An array as read (hashable, as it may be a dict key)."""

    __slots__ = ()


class _StoredMap(tuple):  # type: ignore[type-arg]
    """A map's pairs as read (hashable, as it may sit inside a dict key)."""

    __slots__ = ()


def _write_stored(obj: Any) -> Any:
    """``default`` of a packer writing ``_as_stored`` values: parts as they were read."""
    if type(obj) is _StoredArray:
        return list(obj)
    if type(obj) is _StoredMap:
        return dict(obj)
    raise TypeError(f"cannot write back {type(obj).__qualname__}")


# -- decoding ---------------------------------------------------------------------------------


class _Reading:
    """One format 2 decoding: its hooks and what they noted.

    ``pending`` counts markers not yet consumed by their array (one left over sits where
    no marker belongs); ``stand_ins`` keeps each stand-in with its index among the
    objects revived, in the order their hook met them.
    """

    __slots__ = ("codec", "decoders", "pending", "revived", "stand_ins")

    def __init__(self, codec: ValueCodec) -> None:
        self.codec = codec
        self.decoders = codec._decoders
        self.pending = 0
        self.revived = 0
        self.stand_ins: list[tuple[UnresolvedObject, int]] = []

    def read(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(
            data, ext_hook=self.ext_hook, list_hook=self.list_hook, strict_map_key=False,
            raw=False, timestamp=3,
        )

    def ext_hook(self, code: int, payload: bytes) -> Any:
        decoder = self.decoders.get(code)
        if decoder is not None:
            return decoder(payload)
        mark = _MARKS.get(code)
        if mark is None or payload:
            raise CorruptSnapshotError(f"unknown value type code {code} in stored data")
        self.pending += 1
        return mark

    def list_hook(self, items: list[Any]) -> Any:
        # An array closes after its items: one starting with a marker finds it pending.
        if self.pending and items and items[0].__class__ is _ExtType:  # markers only
            return self.revive(items)
        return items

    def revive(self, items: list[Any]) -> Any:
        self.pending -= 1
        mark = items[0]
        if mark is _TUPLE_MARK:
            return tuple(items[1:])
        if mark is _SET_MARK:
            return _set_of(items[1:], set)
        if mark is _FROZENSET_MARK:
            return _set_of(items[1:], frozenset)
        if mark is _DEQUE_MARK:
            if len(items) < 2:
                raise CorruptSnapshotError("damaged deque in stored data")
            return _deque_of(items[1], items[2:])
        value = self.codec._revive(*_object_parts(items))
        if type(value) is UnresolvedObject:
            self.stand_ins.append((value, self.revived))
        self.revived += 1
        return value

    def keep_raw(self, data: bytes | memoryview) -> None:
        """Give each stand-in the bytes it was read from, so it writes them back: the
        body is read again as stored, and the arrays of objects, in the order their hook
        met them, are packed again."""
        raws: list[bytes] = []
        writer = msgpack.Packer(default=_write_stored, use_bin_type=True, strict_types=True)

        def collect(items: tuple[Any, ...]) -> _StoredArray:
            stored = _StoredArray(items)
            if items and items[0] == _OBJECT_MARK:
                raws.append(writer.pack(stored))
            return stored

        msgpack.unpackb(
            data, use_list=False, list_hook=collect, object_pairs_hook=_StoredMap,
            ext_hook=_ExtType, strict_map_key=False, raw=False, timestamp=0,
        )
        for stand_in, index in self.stand_ins:
            object.__setattr__(stand_in, "raw", raws[index])


class _DepthChecker:
    """Tells whether a MessagePack body nests more than ``levels`` arrays and maps deep,
    at C speed and without building anything.

    MessagePack's parser keeps a fixed stack of 1024 open arrays and maps and refuses to
    open more (StackError). A checker's Unpacker first opens ``1024 - levels`` arrays,
    the innermost asking for 2**32 - 1 items; in skip mode it then parses each body as
    the next of those items. A body nested deeper than ``levels`` overflows the stack; one
    that does not leaves the checker waiting for the next, so checkers are pooled (once
    the body they checked is known to have decoded whole).
    """

    __slots__ = ("levels", "pooled", "unpacker", "uses")

    def __init__(self, levels: int, size: int) -> None:
        self.levels = levels
        self.pooled = size <= _CHECKED_IN_POOL
        self.uses = 0
        opened = 1024 - levels
        self.unpacker = msgpack.Unpacker(
            max_buffer_size=max(size, _CHECKED_IN_POOL) + opened + 8
        )
        self.unpacker.feed(b"\x91" * (opened - 1) + b"\xdd\xff\xff\xff\xff")
        self.fits(b"")

    @staticmethod
    def take(levels: int, size: int) -> _DepthChecker:
        idle = _IDLE_CHECKERS.get(levels)
        if idle and size <= _CHECKED_IN_POOL:
            try:
                return idle.pop()
            except IndexError:  # another thread took the last one
                pass
        return _DepthChecker(levels, size)

    @staticmethod
    def within(body: bytes, levels: int) -> bool:
        """Whether ``body``, a value just packed (so whole and well formed), nests at most
        ``levels`` deep."""
        if len(body) <= levels:  # a level takes a byte at least
            return True
        checker = _DepthChecker.take(levels, len(body))
        if not checker.fits(body):
            return False
        checker.give_back()
        return True

    def fits(self, body: bytes | memoryview) -> bool:
        self.unpacker.feed(body)
        try:
            self.unpacker.skip()
        except msgpack.OutOfData:  # the body ended, inside the opened arrays
            return True
        except msgpack.StackError:
            return False
        raise RuntimeError("a depth checker closed its arrays")  # after 2**32 - 1 bodies

    def give_back(self) -> None:
        """Pool the checker: the body it checked decoded whole, so it was parsed to its
        end and the checker waits for the next one."""
        if self.pooled:
            self.uses += 1
            idle = _IDLE_CHECKERS.get(self.levels)
            if idle is None:
                idle = _IDLE_CHECKERS.setdefault(self.levels, [])
            if len(idle) < _POOLED_PACKERS and self.uses < 1 << 20:
                idle.append(self)


_IDLE_CHECKERS: dict[int, list[_DepthChecker]] = {}
_CHECKED_IN_POOL = 64 << 10  # larger bodies get a checker of their own, not kept


class _DeeperThanThisStack(Exception):
    """A format 1 payload nested deeper than the caller's thread is trusted with."""


class _LegacyReading:
    """One format 1 decoding: nested payloads counted, copies and containers budgeted."""

    def __init__(self, codec: ValueCodec, nesting: int, copies: int) -> None:
        self.codec = codec
        self.nesting_left = nesting
        self.copies_left = copies
        self.objects: dict[int, list[Any]] = {}
        self.value: Any = None
        self.nested: dict[int, Callable[[Any], Any]] = {
            EXT_TUPLE: tuple,
            EXT_SET: lambda items: _set_of(items, set),
            EXT_FROZENSET: lambda items: _set_of(items, frozenset),
            EXT_OBJECT: self.revive,
            EXT_DEQUE: lambda entry: _deque_of(*_fields(entry, 2, "deque")),
        }

    def read(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(
            data, ext_hook=self.ext_hook, strict_map_key=False, raw=False, timestamp=0
        )

    def ext_hook(self, code: int, payload: bytes) -> Any:
        build = self.nested.get(code)
        if build is None:
            decoder = self.codec._decoders.get(code)
            if decoder is None:
                raise CorruptSnapshotError(f"unknown value type code {code} in stored data")
            return decoder(payload)
        self.copies_left -= len(payload)
        if self.copies_left < 0:
            raise CorruptSnapshotError(
                "damaged record: its nested values copy far more bytes than it holds"
            )
        if not self.nesting_left:
            raise _DeeperThanThisStack()
        self.nesting_left -= 1
        try:
            return build(self.read(payload))
        finally:
            self.nesting_left += 1

    def revive(self, entry: Any) -> Any:
        if type(entry) is not list or len(entry) != 3:
            raise CorruptSnapshotError("damaged object entry in stored data")
        path, kind, fields = entry
        if type(path) is not str or type(kind) is not str:
            raise CorruptSnapshotError("damaged object entry in stored data")
        value = self.codec._revive(path, kind, fields)
        self.objects[id(value)] = _object_entry(path, kind, fields)
        return value


def _in_thread_with_stack(work: Callable[[], _T], stack: int) -> _T:
    """Run ``work`` in a new thread with a C stack of ``stack`` bytes; re-raise its error."""
    results: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    with _STACK_SIZE_LOCK:  # the size applies to threads started while it is set
        previous = threading.stack_size(stack)
        try:
            worker = threading.Thread(target=run, name="workflow-persistence-reader", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if errors:
        raise errors[0]
    return results[0]


_STACK_SIZE_LOCK = threading.Lock()
_COMPARING_STACK = 8 << 20  # two packers and a reader, each up to its own limit


def _filtered_too_deep(roots: list[Any], objects: dict[int, list[Any]], max_depth: int) -> bool:
    """Whether a container sits deeper than ``max_depth`` below ``roots`` (depth 0), the
    values read from a format 1 record: each level is the C list of the referents of the
    containers in the one above, and a revived object's children are read from what it
    was revived from (its class's code is never looked into)."""
    level = roots
    depth = 0
    while True:
        types = list(map(type, level))
        kinds = set(types)
        children: list[Any] = []
        if kinds <= _PLAIN:
            if kinds.isdisjoint(_CONTAINERS):
                return False
            containers = level
        else:
            containers = []
            found = False
            for value, kind in zip(level, types, strict=True):
                if kind in _CONTAINERS:
                    containers.append(value)
                elif kind not in _PLAIN:
                    packed = objects.get(id(value))
                    if packed is not None:
                        found = True
                        children += _children(packed)
            if not containers and not found:
                return False
        if depth > max_depth:
            return True
        level = gc.get_referents(*containers) + children
        depth += 1


def _object_parts(items: list[Any]) -> tuple[str, str, Any]:
    """Path, kind and fields of an object's array, as ``_object_entry`` wrote them."""
    size = len(items)
    if size < 3 or type(items[1]) is not str or type(items[2]) is not str:
        raise CorruptSnapshotError("damaged object entry in stored data")
    if size == 4:
        return items[1], items[2], items[3]
    if not size % 2 or items[2] not in _FIELD_KINDS:
        raise CorruptSnapshotError("damaged object entry in stored data")
    return items[1], items[2], dict(zip(items[3::2], items[4::2], strict=True))


def _deque_of(maxlen: Any, items: Any) -> deque[Any]:
    if type(items) is not list or not (
        maxlen is None or (type(maxlen) is int and len(items) <= maxlen)
    ):
        raise CorruptSnapshotError("damaged deque in stored data")
    return deque(items, maxlen)


def _set_of(items: list[Any], kind: Callable[[list[Any]], Any]) -> Any:
    if len(items) > _SET_PROBE and _collides(items):
        raise CorruptSnapshotError(
            "damaged record: a set whose items' hashes collide, which no writer stores"
        )
    return kind(items)


def _collides(items: Collection[Any]) -> bool:
    """Whether more items share a hash than chance explains (a set built from them would
    take quadratic time); duplicates count too, which no stored set holds."""
    count = len(items)
    return count - len(set(map(hash, items))) > 8 + count // 64


def _collision_reason(items: set[Any] | frozenset[Any]) -> str:
    return (
        f"it holds {len(items)} items of which too many share a hash value, so rebuilding"
        " it would take quadratic time; store them in a list, or use another key"
    )


def _content_hash(value: Any, depth: int) -> int:
    """A hash equal values share, unhashable containers included (a stand-in's fields)."""
    kind = type(value)
    if kind is set or kind is frozenset:
        return hash(frozenset(map(hash, value)))
    if depth > 32:
        return 0
    if kind is dict:
        return hash(frozenset(
            (_content_hash(k, depth + 1), _content_hash(v, depth + 1)) for k, v in value.items()
        ))
    if kind is list or kind is tuple:
        return hash(tuple(_content_hash(v, depth + 1) for v in value))
    try:
        return hash(value)
    except TypeError:
        return 0


def _checked(value: Any) -> Any:
    """``value`` if its fields are valid: the C constructors take a pickle state unchecked."""
    value.replace()  # validates every field, as the constructor does with arguments
    return value


def _dec_datetime_naive(payload: bytes) -> datetime:
    return _checked(_datetime_from_state(payload))  # type: ignore[no-any-return]


def _dec_datetime_utc(payload: bytes) -> datetime:
    return _checked(_datetime_from_state(payload, UTC))  # type: ignore[no-any-return]


def _dec_datetime_tz(payload: bytes) -> datetime:
    state, spec = _unpack_payload(payload)
    return _checked(_datetime_from_state(state, _tz_from_spec(spec)))  # type: ignore[no-any-return]


def _dec_date(payload: bytes) -> date:
    return _checked(_date_from_state(payload))  # type: ignore[no-any-return]


def _dec_time(payload: bytes) -> time:
    state, spec = _unpack_payload(payload)
    zone = None if spec is None else _tz_from_spec(spec)
    return _checked(_time_from_state(state, zone))  # type: ignore[no-any-return]


def _dec_timedelta(payload: bytes) -> timedelta:
    return timedelta(*_unpack_payload(payload))


def _dec_array(payload: bytes) -> array.array[Any]:
    typecode, itemsize, data = _fields(_unpack_payload(payload), 3, "array")
    if not (type(typecode) is str and len(typecode) == 1 and typecode in array.typecodes
            and type(itemsize) is int and type(data) is bytes):
        raise CorruptSnapshotError("damaged array in stored data")
    values = array.array(typecode)
    if itemsize != values.itemsize:
        raise CorruptSnapshotError(
            f"a stored array of typecode {typecode!r} has {itemsize}-byte items, but"
            f" {values.itemsize}-byte items here: it was written on another platform"
        )
    if len(data) % itemsize:
        raise CorruptSnapshotError("damaged array in stored data")
    values.frombytes(data)
    if not _LITTLE_ENDIAN:
        values.byteswap()
    return values


def _unpack_payload(payload: bytes) -> Any:
    """A leaf's own packed payload: plain values only, never another ext value."""
    return msgpack.unpackb(payload, ext_hook=_no_ext, raw=False, strict_map_key=True)


def _no_ext(code: int, payload: bytes) -> Any:
    raise CorruptSnapshotError(f"damaged record: a value of type code {code} inside a leaf")


def _needs_registration(cls: Any) -> bool:
    """Whether ``cls`` takes a registration: no for types the codec stores itself."""
    if not isinstance(cls, type):
        raise TypeError(f"register() takes classes, not {cls!r}")
    if cls in _REBUILT_NATIVELY or cls is UnresolvedObject:
        return False
    if cls in _REBUILT_AS_BYTES:
        raise SerializationError(
            f"cannot register {cls.__qualname__}: it is stored as binary data and comes back"
            " as bytes; convert it with bytes() and back, or keep an array.array"
        )
    return True


def _check_rebuildable(cls: type) -> None:
    """Refuse a class whose instances would not come back equal, so none is ever stored.

    Instances are rebuilt as pickle rebuilds a class that has no ``__reduce__`` of its
    own: ``cls.__new__(cls)``, then the stored fields or state. That is exact unless the
    class's pickling goes another way: a ``__reduce__`` (deque, ZoneInfo, numpy arrays,
    Counter, exceptions), constructor arguments (``__getnewargs__``: tuples, ints, str),
    or contents a C base keeps outside ``__dict__`` and ``__slots__`` (dict, list, array),
    which ``__getstate__`` does not see. A class with its own ``__getstate__`` and
    ``__setstate__`` says itself what its state is, so only the last two count for it.
    """
    kind = _kind_of(cls)
    if kind in (KIND_ENUM, KIND_PYDANTIC):
        return
    problem = _rebuild_problem(cls, kind)
    if problem is not None:
        raise SerializationError(f"cannot register {class_path(cls)}: {problem}")


def _rebuild_problem(cls: type, kind: str) -> str | None:
    advice = (
        "store a plain value instead, or a class of your own that is a dataclass"
        if kind == KIND_DATACLASS or _defines(cls, "__getnewargs_ex__", "__getnewargs__")
        else "store a plain value instead, or a class of your own that is a dataclass or"
        " has its own __getstate__ and __setstate__"
    )
    needs_args = _defines(cls, "__getnewargs_ex__", "__getnewargs__")
    if needs_args is not None:
        return (
            f"{needs_args.__qualname__} is built from constructor arguments, which"
            f" __getstate__ does not hold; {advice}"
        )
    own_state = kind == KIND_STATE and _has_own_state_methods(cls)
    if kind == KIND_STATE and not own_state:
        reducer = _defines(cls, "__reduce_ex__", "__reduce__")
        if reducer is not None or cls in copyreg.dispatch_table:
            name = "copyreg" if reducer is None else f"{reducer.__qualname__}.__reduce__"
            return f"its pickling relies on {name}, which this serializer does not use; {advice}"
    holder = _c_data_holder(cls)
    if holder is not None and not own_state:
        where = "it keeps" if holder is cls else f"it extends {holder.__qualname__}, which keeps"
        return (
            f"{where} its contents outside __dict__, where __getstate__ does not see them;"
            f" {advice}"
        )
    new = cast(Any, cls).__new__
    if new is not object.__new__:
        try:
            new(cls)
        except Exception as exc:
            return (
                f"rebuilding starts with {cls.__qualname__}.__new__({cls.__qualname__}),"
                f" which raised {exception_text(exc)}; {advice}"
            )
    return None


def _defines(cls: type, *names: str) -> type | None:
    """The first class in ``cls``'s MRO, object aside, that defines one of ``names``."""
    for klass in cls.__mro__[:-1]:
        if any(name in klass.__dict__ for name in names):
            return klass
    return None


def _has_own_state_methods(cls: type) -> bool:
    return all(
        isinstance(getattr(cls, name, None), _types.FunctionType)
        for name in ("__getstate__", "__setstate__")
    )


def _c_data_holder(cls: type) -> type | None:
    """The base whose instances keep data in C, beyond ``__dict__`` and ``__slots__``."""
    for klass in reversed(cls.__mro__):
        if _holds_c_data(klass):
            return klass
    return None


def _holds_c_data(cls: type) -> bool:
    # The test CPython's own object.__reduce_ex__ applies before it refuses to pickle an
    # object ("cannot pickle 'X' object"): its size beyond a dict, weakrefs and slots.
    if cls.__itemsize__:
        return True
    size = object.__basicsize__
    if cls.__dictoffset__ and not cls.__flags__ & _MANAGED_DICT:
        size += _POINTER
    if cls.__weakrefoffset__ > 0:
        size += _POINTER
    return cls.__basicsize__ > size + _POINTER * _slot_count(cls)


def _slot_count(cls: type) -> int:
    count = 0
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names = (slots,) if isinstance(slots, str) else slots
        count += sum(1 for name in names if name not in ("__dict__", "__weakref__"))
    return count


def _members_by_bytes(cls: type, pack: Callable[[Any], bytes]) -> dict[bytes, Any]:
    """An enum's members by the bytes their values are stored as.

    Refuses an enum two of whose members would be stored alike (two NaN values), which
    loading could not tell apart. A value that cannot be stored (yet) is left out:
    saving that member names it by its path.
    """
    members: dict[bytes, Any] = {}
    for member in _enum_members(cls):
        packed = _packed(pack, member.value)
        if packed is None:
            continue
        other = members.setdefault(packed, member)
        if other is not member:
            raise SerializationError(
                f"cannot register {class_path(cls)}: its members {other.name} and"
                f" {member.name} have values that are stored alike ({member.value!r}), so"
                " loading could not tell them apart; give them distinct values"
            )
    return members


def _packed(pack: Callable[[Any], bytes], value: Any) -> bytes | None:
    try:
        return pack(value)
    except Exception:
        return None


def _enum_members(cls: type) -> list[Any]:
    unique: dict[int, Any] = {}
    for member in cast(Any, cls).__members__.values():
        unique.setdefault(id(member), member)
    return list(unique.values())


def _fields(value: Any, count: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise CorruptSnapshotError(f"damaged {what} in stored data")
    return value


def _array_bytes(values: array.array[Any]) -> bytes:
    """The items as little-endian bytes, so a record reads the same on any machine."""
    if _LITTLE_ENDIAN:
        return values.tobytes()
    swapped = array.array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def dict_children(value: dict[Any, Any], path: str) -> Iterator[tuple[str, Any]]:
    """A dict's keys and values with their paths, for the error explainers."""
    for key, item in value.items():
        shown = key_text(key)
        yield f"{path}[{shown}] (key)", key
        yield f"{path}[{shown}]", item


def key_text(key: Any) -> str:
    """How a dict key is shown in a path: its repr, or a description when that fails.

    ``repr`` raises for an int of more than 4300 digits, and a class's own ``__repr__``
    may raise anything; the path of an error must still be written.
    """
    try:
        return repr(key)
    except Exception:
        if type(key) is int:
            return f"<int of {key.bit_length()} bits>"
        return f"<{type(key).__qualname__} whose repr() failed>"


def exception_text(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, even when its own ``__str__`` fails."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message could not be rendered)"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TypeError, ValueError, OverflowError)):
        try:
            return str(exc)
        except Exception:
            return exception_text(exc)
    return f"taking it apart raised {exception_text(exc)}"


def _unsupported_message(obj: Any) -> str:
    cls = type(obj)
    name = class_path(cls).replace(":", ".")
    if isinstance(obj, enum.Enum) or dataclasses.is_dataclass(obj) or _is_pydantic_model(cls):
        return f"{name} is not registered; pass it in types=[...] to allow it"
    if callable(obj):
        return f"{name} is code (a function, method or class), which is never serialized"
    return (
        f"values of type {name} are not supported; convert it, or register a class that"
        " implements __getstate__/__setstate__"
    )


def _tz_spec(tz: Any) -> list[Any]:
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        custom = None if name == timezone(offset).tzname(None) else name
        return ["fixed", offset // timedelta(microseconds=1), custom]
    if type(tz) is ZoneInfo and tz.key is not None:
        return ["zone", tz.key]
    raise TypeError(
        f"time zone {tz!r} of type {type(tz).__qualname__} is not supported;"
        " use datetime.timezone or zoneinfo.ZoneInfo"
    )


def _tz_from_spec(spec: Any) -> Any:
    if type(spec) is list and len(spec) == 3 and spec[0] == "fixed":
        offset = timedelta(microseconds=spec[1])
        return timezone(offset) if spec[2] is None else timezone(offset, spec[2])
    if type(spec) is list and len(spec) == 2 and spec[0] == "zone" and type(spec[1]) is str:
        return ZoneInfo(spec[1])
    raise CorruptSnapshotError(f"unknown time zone entry in stored data: {spec!r}")


def _object_fields_getter(cls: type, kind: str) -> Callable[[Any], Any]:
    if kind == KIND_ENUM:
        return lambda obj: obj.value
    if kind == KIND_DATACLASS:
        names = _dataclass_names(cls)
        return lambda obj: {name: getattr(obj, name) for name in names}
    if kind == KIND_PYDANTIC:
        return lambda obj: obj.model_dump(mode="python", round_trip=True)
    return lambda obj: obj.__getstate__()


def _dataclass_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _rebuilder(cls: type, pack: Callable[[Any], bytes]) -> Callable[[Any], Any]:
    """How stored fields become an instance of ``cls`` again, prepared once per class."""
    kind = _kind_of(cls)
    if kind == KIND_ENUM:
        return _enum_rebuilder(cls, pack)
    if kind == KIND_PYDANTIC:
        return cast(Any, cls).model_validate  # type: ignore[no-any-return]
    new = cast(Any, cls).__new__
    if kind != KIND_DATACLASS:

        def from_state(state: Any) -> Any:
            obj = new(cls)
            _set_state(obj, state)
            return obj

        return from_state
    # Like pickle: restore the fields without running __init__ or __post_init__; a field
    # added to the class since the record was written gets its default.
    specs = [(f.name, f.default, f.default_factory) for f in dataclasses.fields(cls)]
    missing = dataclasses.MISSING
    set_field = object.__setattr__

    def from_fields(fields: Any) -> Any:
        if type(fields) is not dict:
            raise CorruptSnapshotError(f"damaged fields of {class_path(cls)} in stored data")
        obj = new(cls)
        for name, default, factory in specs:
            if name in fields:
                set_field(obj, name, fields[name])
            elif default is not missing:
                set_field(obj, name, default)
            elif factory is not missing:
                set_field(obj, name, factory())
            else:
                raise CorruptSnapshotError(
                    f"stored {class_path(cls)} has no value for its field {name!r}"
                )
        return obj

    return from_fields


def _enum_rebuilder(cls: type, pack: Callable[[Any], bytes]) -> Callable[[Any], Any]:
    """Look members up by value; a value unequal to itself (NaN) by its stored bytes."""
    by_bytes: dict[bytes, Any] = {}

    def rebuild(value: Any) -> Any:
        try:
            return cls(value)
        except ValueError:
            pass
        if not by_bytes:
            by_bytes.update(_members_by_bytes(cls, pack))
        packed = _packed(pack, value)
        member = None if packed is None else by_bytes.get(packed)
        if member is None:
            raise CorruptSnapshotError(
                f"stored data holds a value that no member of {class_path(cls)} has"
            )
        return member

    return rebuild


def _set_state(obj: Any, state: Any) -> None:
    """Apply ``state`` as pickle's BUILD opcode does."""
    if state is None:
        return
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slot_state = None
    if type(state) is tuple and len(state) == 2:
        state, slot_state = state
    if state:
        obj.__dict__.update(state)
    if slot_state:
        for name, value in slot_state.items():
            setattr(obj, name, value)
