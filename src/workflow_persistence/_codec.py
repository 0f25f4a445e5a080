"""The default serializer's value codec: JSON's data model plus typed extensions.

Values are written as MessagePack (a binary form of JSON's data model). Every value JSON
cannot hold (datetimes, Decimal, UUID, tuples, sets, enums, dataclasses, ...) becomes a
MessagePack *ext* value: a type code and a payload. Ext values cannot be forged by user
data (a user's dict or string is never mistaken for one), and the decoder revives them in
an ``ext_hook`` called from C only for ext values, so decoding never walks the whole tree.

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
import sys
import types as _types
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import msgpack

from .errors import CorruptSnapshotError, SerializationError

UnknownClassPolicy = Literal["error", "stand-in"]

# Ext type codes. Stored data depends on them: never renumber, only add.
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME_NAIVE = 4  # payload: the datetime's 10-byte pickle state
EXT_DATETIME_UTC = 5  # payload: the 10-byte state of its UTC wall time
EXT_DATETIME_TZ = 6  # payload: [state, tz]
EXT_DATE = 7  # payload: the date's 4-byte pickle state
EXT_TIME = 8  # payload: [state, tz]
EXT_TIMEDELTA = 9  # payload: [days, seconds, microseconds]
EXT_DECIMAL = 10  # payload: its str()
EXT_UUID = 11  # payload: 16 bytes
EXT_OBJECT = 12  # payload: [class path, kind, fields]
EXT_BIGINT = 13  # payload: decimal digits (read only: str() of an int is capped at 4300 digits)
# 14 was reserved for bytearray: msgpack packs it natively as bytes.
EXT_BIGINT_BYTES = 15  # payload: signed big-endian two's complement, any size
EXT_DEQUE = 16  # payload: [maxlen, items]
EXT_ARRAY = 17  # payload: [typecode, itemsize, little-endian bytes]
EXT_TZINFO = 18  # payload: a time zone entry, as in EXT_DATETIME_TZ

# How a registered class is taken apart and rebuilt.
KIND_DATACLASS = "dataclass"
KIND_PYDANTIC = "pydantic"
KIND_ENUM = "enum"
KIND_STATE = "state"  # Python's own __getstate__ / __setstate__ protocol

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
_tuple_new = tuple.__new__


# The C constructors also take the pickle state (bytes) that ``__reduce_ex__`` returns;
# typeshed does not say so.
_datetime_from_state = cast(Callable[..., datetime], datetime)
_date_from_state = cast(Callable[..., date], date)
_time_from_state = cast(Callable[..., time], time)


def _ext(code: int, payload: Any) -> Any:  # payload: bytes (pickle states are typed Any)
    # ExtType.__new__ is Python code that re-checks its arguments; ours are always valid.
    return _tuple_new(_ExtType, (code, payload))


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
        return hash((self.class_path, self.kind))


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
    ) -> None:
        if unknown_classes not in ("error", "stand-in"):
            raise ValueError("unknown_classes must be 'error' or 'stand-in'")
        self.unknown_classes: UnknownClassPolicy = unknown_classes
        self._classes: dict[str, type] = {}
        # class path -> (class, kind, rebuild(fields)), worked out once at registration
        self._rebuilders: dict[str, tuple[type, str, Callable[[Any], Any]]] = {}
        self._packers: list[Any] = []  # idle msgpack Packers, see _pack_nested
        self._encoders: dict[type, Callable[[Any], Any]] = {
            tuple: self._enc_tuple,
            set: self._enc_set,
            frozenset: self._enc_frozenset,
            datetime: self._enc_datetime,
            date: self._enc_date,
            time: self._enc_time,
            timedelta: self._enc_timedelta,
            Decimal: self._enc_decimal,
            uuid.UUID: self._enc_uuid,
            int: self._enc_bigint,  # msgpack asks only for ints beyond 64 bits
            UnresolvedObject: self._enc_unresolved,
            deque: self._enc_deque,
            array.array: self._enc_array,
            ZoneInfo: self._enc_tzinfo,
            timezone: self._enc_tzinfo,
        }
        self._decoders: dict[int, Callable[[bytes], Any]] = {
            EXT_TUPLE: lambda p: tuple(self.unpack(p)),
            EXT_SET: lambda p: set(self.unpack(p)),
            EXT_FROZENSET: lambda p: frozenset(self.unpack(p)),
            EXT_DATETIME_NAIVE: _datetime_from_state,
            EXT_DATETIME_UTC: self._dec_datetime_utc,
            EXT_DATETIME_TZ: self._dec_datetime_tz,
            EXT_DATE: _date_from_state,
            EXT_TIME: self._dec_time,
            EXT_TIMEDELTA: lambda p: timedelta(*self.unpack(p)),
            EXT_DECIMAL: lambda p: Decimal(p.decode("ascii")),
            EXT_UUID: lambda p: uuid.UUID(bytes=p),
            EXT_OBJECT: self._dec_object,
            EXT_BIGINT: lambda p: int(p.decode("ascii")),
            EXT_BIGINT_BYTES: lambda p: int.from_bytes(p, "big", signed=True),
            EXT_DEQUE: self._dec_deque,
            EXT_ARRAY: self._dec_array,
            EXT_TZINFO: self._dec_tzinfo,
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

    def _pack_nested(self, value: Any) -> bytes:
        # Also called from inside ``default`` (a tuple's payload, ...) while an outer
        # packer is busy, so each call takes a packer of its own. Making one per call cost
        # most of the time of a small payload (a tuple packed 7 times slower than pickled),
        # so idle packers are kept: a busy one is never in the pool, so nesting and threads
        # each get their own (list.pop and append are atomic). A packer whose buffer grew
        # for a large payload is let go rather than kept.
        try:
            packer = self._packers.pop()
        except IndexError:
            packer = msgpack.Packer(
                default=self._default, strict_types=True, use_bin_type=True, datetime=False,
                buf_size=_PACKER_BUFFER,
            )
        data: bytes = packer.pack(value)  # on error the packer resets itself; it is dropped
        if len(data) <= _PACKER_BUFFER and len(self._packers) < _POOLED_PACKERS:
            self._packers.append(packer)
        return data

    def _default(self, obj: Any) -> Any:
        if type(obj) is datetime and obj.tzinfo is UTC:  # by far the most common ext value
            return _tuple_new(_ExtType, (EXT_DATETIME_UTC, obj.__reduce_ex__(4)[1][0]))
        encoder = self._encoders.get(type(obj))
        if encoder is None:
            raise TypeError(_unsupported_message(obj))
        return encoder(obj)

    def _enc_tuple(self, obj: tuple[Any, ...]) -> Any:
        return _ext(EXT_TUPLE, self._pack_nested(list(obj)))

    def _enc_set(self, obj: set[Any]) -> Any:
        return _ext(EXT_SET, self._pack_nested(list(obj)))

    def _enc_frozenset(self, obj: frozenset[Any]) -> Any:
        return _ext(EXT_FROZENSET, self._pack_nested(list(obj)))

    def _enc_datetime(self, obj: datetime) -> Any:
        # The 10-byte state CPython's pickle uses (protocol 4 keeps ``fold``); built in C.
        tz = obj.tzinfo
        if tz is None:
            return _ext(EXT_DATETIME_NAIVE, obj.__reduce_ex__(4)[1][0])
        if tz is UTC:
            return _ext(EXT_DATETIME_UTC, obj.__reduce_ex__(4)[1][0])
        state = obj.replace(tzinfo=None).__reduce_ex__(4)[1][0]
        return _ext(EXT_DATETIME_TZ, self._pack_nested([state, _tz_spec(tz)]))

    def _enc_date(self, obj: date) -> Any:
        return _ext(EXT_DATE, obj.__reduce__()[1][0])

    def _enc_time(self, obj: time) -> Any:
        tz = obj.tzinfo
        state = obj.replace(tzinfo=None).__reduce_ex__(4)[1][0]
        return _ext(EXT_TIME, self._pack_nested([state, None if tz is None else _tz_spec(tz)]))

    def _enc_timedelta(self, obj: timedelta) -> Any:
        return _ext(EXT_TIMEDELTA, self._pack_nested([obj.days, obj.seconds, obj.microseconds]))

    def _enc_decimal(self, obj: Decimal) -> Any:
        return _ext(EXT_DECIMAL, str(obj).encode("ascii"))

    def _enc_uuid(self, obj: uuid.UUID) -> Any:
        return _ext(EXT_UUID, obj.bytes)

    def _enc_bigint(self, obj: int) -> Any:
        # Not str(obj): CPython refuses to convert ints of more than 4300 digits to text.
        return _ext(EXT_BIGINT_BYTES, obj.to_bytes(obj.bit_length() // 8 + 1, "big", signed=True))

    def _enc_deque(self, obj: deque[Any]) -> Any:
        return _ext(EXT_DEQUE, self._pack_nested([obj.maxlen, list(obj)]))

    def _enc_array(self, obj: array.array[Any]) -> Any:
        return _ext(EXT_ARRAY, self._pack_nested([obj.typecode, obj.itemsize, _array_bytes(obj)]))

    def _enc_tzinfo(self, obj: ZoneInfo | timezone) -> Any:
        if type(obj) is ZoneInfo and obj.key is None:
            raise TypeError(
                "a ZoneInfo read from a file has no key to be stored by; use ZoneInfo(key)"
            )
        return _ext(EXT_TZINFO, self._pack_nested(_tz_spec(obj)))

    def _enc_unresolved(self, obj: UnresolvedObject) -> Any:
        packed = self._pack_nested([obj.class_path, obj.kind, obj.fields])
        raw = obj.raw
        if raw is not None and packed != raw:
            # A set decoded from ``raw`` may iterate in another order than it was stored in.
            # Decoding ``raw`` afresh rebuilds the same sets the same way: if that packs to
            # the same bytes, the fields are unchanged and ``raw`` is written back as read.
            reader = _stand_in_reader()
            try:
                unchanged = reader._pack_nested(reader.unpack(raw)) == packed
            except Exception:
                unchanged = False
            if unchanged:
                return _ext(EXT_OBJECT, raw)
        return _ext(EXT_OBJECT, packed)

    def _object_encoder(self, cls: type) -> Callable[[Any], Any]:
        path = class_path(cls)
        kind = _kind_of(cls)
        fields = _object_fields_getter(cls, kind)

        def encode(obj: Any) -> Any:
            return _ext(EXT_OBJECT, self._pack_nested([path, kind, fields(obj)]))

        return encode

    # -- decoding -------------------------------------------------------------------------

    def unpack(self, data: bytes | memoryview) -> Any:
        """Decode bytes written by :meth:`pack` (errors propagate; callers wrap them)."""
        return msgpack.unpackb(
            data, ext_hook=self._ext_hook, strict_map_key=False, raw=False, timestamp=0
        )

    def _ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_DATETIME_UTC:  # by far the most common: skip the lookup
            return _datetime_from_state(payload, UTC)
        decoder = self._decoders.get(code)
        if decoder is None:
            raise CorruptSnapshotError(f"unknown value type code {code} in stored data")
        return decoder(payload)

    @staticmethod
    def _dec_datetime_utc(payload: bytes) -> datetime:
        return _datetime_from_state(payload, UTC)

    def _dec_datetime_tz(self, payload: bytes) -> datetime:
        state, spec = self.unpack(payload)
        return _datetime_from_state(state, _tz_from_spec(spec))

    def _dec_time(self, payload: bytes) -> time:
        state, spec = self.unpack(payload)
        return _time_from_state(state, None if spec is None else _tz_from_spec(spec))

    def _dec_deque(self, payload: bytes) -> deque[Any]:
        maxlen, items = _fields(self.unpack(payload), 2, "deque")
        if type(items) is not list or not (
            maxlen is None or (type(maxlen) is int and len(items) <= maxlen)
        ):
            raise CorruptSnapshotError("damaged deque in stored data")
        return deque(items, maxlen)

    def _dec_array(self, payload: bytes) -> array.array[Any]:
        typecode, itemsize, data = _fields(self.unpack(payload), 3, "array")
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

    def _dec_tzinfo(self, payload: bytes) -> Any:
        return _tz_from_spec(self.unpack(payload))

    def _dec_object(self, payload: bytes) -> Any:
        path, kind, fields = self.unpack(payload)
        if type(path) is not str or type(kind) is not str:
            raise CorruptSnapshotError("damaged object entry in stored data")
        known = self._rebuilders.get(path)
        if known is None:
            if self.unknown_classes == "stand-in":
                return UnresolvedObject(path, kind, fields, raw=bytes(payload))
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
                self._encoders[kind](value)
            except Exception as exc:
                try:
                    parts = list(self._parts(value, path))
                except Exception as inner:  # its own __getstate__ or model_dump failed
                    return path, _reason(inner)
                if not parts:
                    return path, _reason(exc)
                children = iter(parts)
            else:
                return None
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
        _STAND_IN_READER.append(ValueCodec(unknown_classes="stand-in"))
    return _STAND_IN_READER[0]


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
        names = tuple(f.name for f in dataclasses.fields(cls))
        return lambda obj: {name: getattr(obj, name) for name in names}
    if kind == KIND_PYDANTIC:
        return lambda obj: obj.model_dump(mode="python", round_trip=True)
    return lambda obj: obj.__getstate__()


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
