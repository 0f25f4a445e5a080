"""Snapshot serializers: the safe default and a signed pickle."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from workflow_persistence._events import Event, StartEvent, StopEvent
from workflow_persistence._ids import check_workflow_id
from workflow_persistence._snapshot import (
    SNAPSHOT_STATUSES,
    Decision,
    ErrorInfo,
    WorkflowSnapshot,
)
from workflow_persistence.errors import CorruptSnapshotError, PersistenceError, SerializationError

from . import framing as _framing
from .codec import (
    CollidingHashes,
    NestedTooDeeply,
    UnknownClassPolicy,
    UnresolvedObject,
    ValueCodec,
    check_max_depth,
    dict_children,
    exception_text,
    key_text,
)

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer"]

_FMT_MSGPACK = b"msgpack"
_FMT_MSGPACK_ZLIB = b"msgpack+zlib"
_FMT_PICKLE = b"pickle"
# 3: values inside values are flat arrays (format 2 of _codec); 2 added workflow_name,
# result and expires_at to version 1's fields. Versions 1 and 2 hold nested payloads.
_ENVELOPE_VERSION = 3
_ENVELOPE_VERSIONS = (2, 3)  # of _ENVELOPE_LENGTH fields
_ENVELOPE_LENGTH = 18
_ENVELOPE_V1_LENGTH = 15
_FLAT_BODY = b"\xdc\x00\x12\x03"  # a version 3 body: an array of 18 items, the first 3
_DEFAULT_MAX_DECODED = 1 << 30  # 1 GiB: PostgreSQL's bytea holds no more
_DEFAULT_MAX_DEPTH = 100
_ENVELOPE_LEVELS = 2  # the envelope array, and the state dict holding a value
# A compressed body may inflate at most this much (plus an allowance for small ones): read,
# one byte of MessagePack can take up to 72 bytes of memory (an empty list and its place in
# the array holding it), so an archive of a million empty lists would otherwise take
# gigabytes. Six times keeps a record of 1 MiB within 440 MiB; text compresses less.
_MAX_INFLATION = 6
_INFLATION_ALLOWANCE = 64 << 10


@runtime_checkable
class Serializer(Protocol):
    """Turns a snapshot into bytes and back. ``loads`` raises CorruptSnapshotError."""

    def dumps(self, snapshot: WorkflowSnapshot) -> bytes: ...

    def loads(self, data: bytes) -> WorkflowSnapshot: ...


class JsonSerializer:
    """The safe default: JSON's data model plus typed values; it never executes stored code.

    It stores JSON types plus datetime, date, time, timedelta, Decimal, UUID, bytes,
    tuple, set, frozenset, Enum, dataclasses, pydantic models and classes that implement
    ``__getstate__``/``__setstate__``. Classes are rebuilt only when registered (``types``
    or :meth:`register`; a ``Workflow`` registers its events). The encoding is MessagePack,
    the binary form of JSON's data model, which is what makes it as fast as pickle.

    ``unknown_classes="stand-in"`` makes ``loads`` return an ``UnresolvedObject`` for an
    unregistered class instead of raising (how the command line shows any snapshot).
    Bodies of at least ``compress_threshold`` bytes (1 MiB) are zlib-compressed when a
    sample shows it pays (a quarter smaller or better): large snapshots then take about a
    sixth of the storage and network. ``None`` turns compression off. A body that would
    inflate more than six times is stored as it is: ``loads`` refuses to inflate one that
    claims more, so a small record can never expand into gigabytes.

    Values may nest ``max_depth`` (1 to 400, default 100) levels below a snapshot's fields
    (``state['a'][0]`` is two levels down; an object counts one level, its fields one
    more; an interrupt's payload and answer, kept in the history, two more): deeper values
    are refused by ``dumps`` and deeper records by ``loads``, so whatever one saves, the
    other loads, in any thread. Reading never takes memory out of proportion to the record.
    """

    def __init__(
        self,
        types: Iterable[type] = (),
        *,
        unknown_classes: UnknownClassPolicy = "error",
        compress_threshold: int | None = 1 << 20,
        compress_level: int = 1,
        max_decoded_size: int = _DEFAULT_MAX_DECODED,
        max_depth: int = _DEFAULT_MAX_DEPTH,
    ) -> None:
        if compress_threshold is not None and compress_threshold < 0:
            raise ValueError("compress_threshold must be a size in bytes or None")
        self.max_depth = check_max_depth(max_depth)
        self._codec = ValueCodec(
            (Event, StartEvent, StopEvent), unknown_classes=unknown_classes, max_depth=max_depth
        )
        self._codec.register(*types)
        self.compress_threshold = compress_threshold
        self.compress_level = compress_level
        self.max_decoded_size = max_decoded_size

    def register(self, *types: type) -> None:
        """Allow instances of ``types`` to be stored and rebuilt."""
        self._codec.register(*types)

    def is_registered(self, cls: type) -> bool:
        return self._codec.is_registered(cls)

    # -- dumps ------------------------------------------------------------------------

    def dumps(self, snapshot: WorkflowSnapshot) -> bytes:
        row = _envelope(snapshot)
        try:
            body = self._codec.pack(row, self.max_depth + _ENVELOPE_LEVELS)
        except (NestedTooDeeply, CollidingHashes) as exc:
            raise self._explain_limit(snapshot, row, exc) from exc
        except Exception as exc:  # a registered class's own code may raise anything
            raise self._explain(snapshot, row, exc) from exc
        threshold = self.compress_threshold
        if threshold is not None and len(body) >= threshold and _compresses_well(body):
            packed = zlib.compress(body, self.compress_level)
            # What loads would refuse as an inflating archive is stored as it is.
            if len(packed) < len(body) and len(body) <= _inflation_limit(len(packed)):
                detail = b"%s:%d" % (_framing.crc_detail(packed), len(body))
                return _framing.frame(_FMT_MSGPACK_ZLIB, detail, packed)
        return _framing.frame(_FMT_MSGPACK, _framing.crc_detail(body), body)

    def _explain_limit(
        self, snapshot: WorkflowSnapshot, row: list[Any], exc: BaseException
    ) -> SerializationError:
        parts = [
            # A history entry's parts sit two levels further down: in the list, in the entry.
            (path, value, self.max_depth - (2 if path.startswith("history[") else 0))
            for path, value in _envelope_parts(snapshot, row)
        ]
        found = self._codec.find_beyond_limits(parts)
        if found is None:
            return SerializationError(f"cannot serialize the snapshot: {exc}")
        where, reason = found
        return SerializationError(f"cannot serialize {where}: {reason}", path=where)

    def _explain(
        self, snapshot: WorkflowSnapshot, row: list[Any], exc: BaseException
    ) -> SerializationError:
        for path, value in _envelope_parts(snapshot, row):
            found = self._codec.find_unencodable(value, path)
            if found is not None:
                where, reason = found
                return SerializationError(f"cannot serialize {where}: {reason}", path=where)
        return SerializationError(f"cannot serialize the snapshot: {exc}")

    # -- loads ------------------------------------------------------------------------

    def loads(self, data: bytes) -> WorkflowSnapshot:
        fmt, detail, body = _framing.unframe(data)
        inflated = False
        if fmt == _FMT_MSGPACK:
            _framing.check_crc(detail, body)
            raw: bytes | memoryview = body
        elif fmt == _FMT_MSGPACK_ZLIB:
            crc, _, size = detail.partition(b":")
            _framing.check_crc(crc, body)
            raw = self._decompress(size, body)
            inflated = True
        elif fmt == _FMT_PICKLE:
            raise CorruptSnapshotError(
                "this record was written by PickleSerializer; load it with"
                " PickleSerializer(secret_key=...) configured on the persistence"
            )
        else:
            raise CorruptSnapshotError(
                f"this record is in format {_framing.format_name(fmt)!r},"
                " which JsonSerializer does not read"
            )
        try:
            levels = self.max_depth + _ENVELOPE_LEVELS
            if raw[:4] == _FLAT_BODY:
                row = self._codec.unpack(raw, levels)
            else:  # envelope version 1 or 2 (values held nested payloads), or damaged
                row = self._codec.unpack_legacy(raw, levels, inflated=inflated)
            return _from_row(row)
        except CorruptSnapshotError:
            raise
        except Exception as exc:
            raise CorruptSnapshotError(f"damaged record: {type(exc).__name__}: {exc}") from exc

    def _decompress(self, size_field: bytes, body: memoryview) -> bytes:
        if not (size_field.isdigit() and len(size_field) <= 20):  # ASCII digits only
            raise CorruptSnapshotError("damaged record: bad decoded length in its header")
        size = int(size_field)
        if size > self.max_decoded_size:
            raise CorruptSnapshotError(
                f"record claims {size} decoded bytes, more than max_decoded_size"
            )
        if size > _inflation_limit(len(body)):
            raise CorruptSnapshotError(
                f"record claims {size} decoded bytes from {len(body)} compressed ones, more"
                f" than {_MAX_INFLATION} times as many, which JsonSerializer never writes"
            )
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(body, size + 1)
        except zlib.error as exc:
            raise CorruptSnapshotError(f"damaged compressed record: {exc}") from exc
        if len(raw) != size or not inflater.eof or inflater.unused_data:
            raise CorruptSnapshotError("damaged compressed record: wrong decoded length")
        return raw


class PickleSerializer:
    """Stores any picklable object, signed with HMAC-SHA256.

    The signature is checked before a byte is unpickled: unsigned, tampered or
    wrongly-keyed data raises CorruptSnapshotError and is never unpickled. Keep the key
    secret; ``previous_keys`` still verifies records written before a key rotation.
    """

    def __init__(
        self,
        secret_key: bytes | str,
        *,
        previous_keys: Iterable[bytes | str] = (),
        protocol: int = pickle.HIGHEST_PROTOCOL,
    ) -> None:
        self._keys = [_key_bytes(secret_key), *(_key_bytes(k) for k in previous_keys)]
        self.protocol = protocol

    def dumps(self, snapshot: WorkflowSnapshot) -> bytes:
        _envelope(snapshot)  # the same checks of ids, status and field types as the default
        try:
            body = pickle.dumps(snapshot, protocol=self.protocol)
        except Exception as exc:
            raise _explain_pickle(snapshot, exc, self.protocol) from exc
        mac = hmac.new(self._keys[0], body, hashlib.sha256).hexdigest().encode("ascii")
        return _framing.frame(_FMT_PICKLE, mac, body)

    def loads(self, data: bytes) -> WorkflowSnapshot:
        fmt, detail, body = _framing.unframe(data)
        if fmt != _FMT_PICKLE:
            raise CorruptSnapshotError(
                f"this record is in format {_framing.format_name(fmt)!r}, not a signed pickle;"
                " it was written by another serializer"
            )
        if not any(
            hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest().encode(), detail)
            for key in self._keys
        ):
            raise CorruptSnapshotError(
                "the record's signature does not match: it was tampered with or written"
                " with another secret key; it was not unpickled"
            )
        try:
            snapshot = pickle.loads(body)
        except Exception as exc:
            raise CorruptSnapshotError(f"signed record could not be unpickled: {exc}") from exc
        if not isinstance(snapshot, WorkflowSnapshot):
            raise CorruptSnapshotError("signed record does not hold a WorkflowSnapshot")
        try:
            _envelope(snapshot)  # what dumps checked, so a snapshot loads only as it saved
        except PersistenceError as exc:
            raise CorruptSnapshotError(f"signed record holds a damaged snapshot: {exc}") from exc
        return snapshot


def _inflation_limit(compressed: int) -> int:
    return _MAX_INFLATION * compressed + _INFLATION_ALLOWANCE


_SAMPLE = 64 * 1024
_WORTHWHILE = 0.75  # compress only if a sample shrinks to three quarters or less


def _compresses_well(body: bytes) -> bool:
    """Whether compressing ``body`` pays, judged on a sample from its middle.

    Incompressible payloads (images, archives, encrypted data) are then never run
    through zlib in full, which would cost time and a second buffer for nothing.
    """
    if len(body) <= _SAMPLE:
        return True
    start = (len(body) - _SAMPLE) // 2
    sample = body[start : start + _SAMPLE]
    return len(zlib.compress(sample, 1)) <= _WORTHWHILE * _SAMPLE


def _key_bytes(key: bytes | str) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw:
        raise ValueError("PickleSerializer needs a non-empty secret_key")
    return raw


def _plain_dict(value: Any, path: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise SerializationError(
        f"{path} must be a dict, not {type(value).__name__}", path=path
    )


def _envelope(s: WorkflowSnapshot) -> list[Any]:
    """The snapshot as one list, checked; positional so it packs small and fast."""
    if not isinstance(s, WorkflowSnapshot):
        raise SerializationError(f"expected a WorkflowSnapshot, not {type(s).__name__}")
    workflow_id = check_workflow_id(s.workflow_id)
    status: str = s.status
    if not (isinstance(status, str) and status in SNAPSHOT_STATUSES):
        raise SerializationError(
            f"status must be one of {sorted(SNAPSHOT_STATUSES)}, not {status!r}",
            path="status",
        )
    if type(status) is not str:  # a str enum: store the plain text
        status = str.__str__(status)
    error = s.error
    try:
        history = [_decision_row(d) for d in s.history]
        error_row = None if error is None else [
            error.node, error.type, error.message, error.traceback, error.at
        ]
    except (AttributeError, TypeError) as exc:
        raise SerializationError(
            f"history must be a list of Decision and error an ErrorInfo: {exc}"
        ) from exc
    row = [
        _ENVELOPE_VERSION,
        workflow_id,
        status,
        _plain_dict(s.state, "state"),
        s.current_node,
        s.event,
        s.completed_nodes,
        s.interrupt,
        history,
        s.attempts,
        error_row,
        _plain_dict(s.metadata, "metadata"),
        s.created_at,
        s.updated_at,
        s.version,
        s.workflow_name,
        s.result,
        s.expires_at,
    ]
    if not _fits(row):
        path, expected, value = _misfit(row)
        raise SerializationError(
            f"{path} must be {expected}, not {type(value).__name__}", path=path
        )
    return row


def _decision_row(d: Decision) -> list[Any]:
    """A history entry: six fields, twelve for a typed, timed, attributed or traced one."""
    row = [d.node, d.payload, d.answer, d.asked_at, d.answered_at, d.step]
    extra = [
        d.answer_schema, d.deadline, d.default, d.answered_by, d.answered_via, d.trace_context
    ]
    return row if extra == _NO_EXTRA else [*row, *extra]


_NO_EXTRA = [None] * 6
#: Before steps, before typed answers, before trace contexts, now.
_DECISION_LENGTHS = (5, 6, 11, 12)
_EVENT_TYPES = (Event, UnresolvedObject)  # a stand-in: an event class the reader lacks
_AWARE = "a timezone-aware datetime"
_ERROR_TEXTS = ("node", "type", "message", "traceback")


def _fits(row: list[Any]) -> bool:
    """Whether the envelope's fields have the types the runtime relies on.

    Checked when saving and when loading alike: whatever saves, loads, and a damaged
    record with a good checksum is refused at load, not half-way through a resume. It
    runs on every save and load, hence one pass of plain loops; :func:`_misfit` makes the
    same checks again to say what failed.
    """
    current_node, event, nodes, attempts, error = row[4], row[5], row[6], row[9], row[10]
    created_at, updated_at, name, expires_at = row[12], row[13], row[15], row[17]
    status = row[2]
    if not (
        type(row[1]) is str
        and type(status) is str
        and status in SNAPSHOT_STATUSES
        and type(row[3]) is dict
        and type(row[8]) is list
        and type(row[11]) is dict
        and (current_node is None or type(current_node) is str)
        and (name is None or type(name) is str)
        and (expires_at is None or (type(expires_at) is datetime and expires_at.tzinfo is not None))
        and (event is None or isinstance(event, _EVENT_TYPES))
        and type(nodes) is list
        and type(attempts) is dict
        and type(created_at) is datetime and created_at.tzinfo is not None
        and type(updated_at) is datetime and updated_at.tzinfo is not None
        and type(row[14]) is int
    ):
        return False
    for node in nodes:
        if type(node) is not str:
            return False
    for key, count in attempts.items():
        if type(key) is not str or type(count) is not int:
            return False
    for entry in row[8]:
        if not (
            type(entry) is list and len(entry) in _DECISION_LENGTHS and type(entry[0]) is str
            and type(entry[3]) is datetime and entry[3].tzinfo is not None
            and (entry[4] is None or (type(entry[4]) is datetime and entry[4].tzinfo is not None))
            and (len(entry) == 5 or type(entry[5]) is int)
            and (len(entry) < 11 or _answer_misfit(entry) is None)
        ):
            return False
    return error is None or _error_misfit(error) is None


def _misfit(row: list[Any]) -> tuple[str, str, Any]:
    """The first field :func:`_fits` refuses: its path, what it must be, and its value."""
    if type(row[1]) is not str:
        return "workflow_id", "a str", row[1]
    if type(row[2]) is not str or row[2] not in SNAPSHOT_STATUSES:
        return "status", f"one of {sorted(SNAPSHOT_STATUSES)}", row[2]
    for at, name in ((3, "state"), (11, "metadata")):
        if type(row[at]) is not dict:
            return name, "a dict", row[at]
    if type(row[8]) is not list:
        return "history", "a list of Decision", row[8]
    current_node, event, nodes, attempts, error = row[4], row[5], row[6], row[9], row[10]
    if current_node is not None and type(current_node) is not str:
        return "current_node", "a str or None", current_node
    if event is not None and not isinstance(event, _EVENT_TYPES):
        return "event", "an Event or None", event
    if type(nodes) is not list:
        return "completed_nodes", "a list of str", nodes
    for i, node in enumerate(nodes):
        if type(node) is not str:
            return f"completed_nodes[{i}]", "a str", node
    for i, entry in enumerate(row[8]):
        misfit = _decision_misfit(entry)
        if misfit is not None:
            return f"history[{i}]{misfit[0]}", misfit[1], misfit[2]
    if type(attempts) is not dict:
        return "attempts", "a dict of str to int", attempts
    for key, count in attempts.items():
        if type(key) is not str:
            return f"attempts[{key_text(key)}] (key)", "a str", key
        if type(count) is not int:
            return f"attempts[{key_text(key)}]", "an int", count
    misfit = None if error is None else _error_misfit(error)
    if misfit is not None:
        return f"error{misfit[0]}", misfit[1], misfit[2]
    for name, value in (("created_at", row[12]), ("updated_at", row[13])):
        if type(value) is not datetime or value.tzinfo is None:
            return name, _AWARE, value
    if row[15] is not None and type(row[15]) is not str:
        return "workflow_name", "a str or None", row[15]
    expires_at = row[17]
    if expires_at is not None and (type(expires_at) is not datetime or expires_at.tzinfo is None):
        return "expires_at", f"None or {_AWARE}", expires_at
    return "version", "an int", row[14]


def _decision_misfit(entry: Any) -> tuple[str, str, Any] | None:
    if type(entry) is not list or len(entry) not in _DECISION_LENGTHS:
        return "", "a Decision", entry
    node, asked_at, answered_at = entry[0], entry[3], entry[4]
    if type(node) is not str:
        return ".node", "a str", node
    if type(asked_at) is not datetime or asked_at.tzinfo is None:
        return ".asked_at", _AWARE, asked_at
    if answered_at is not None and (
        type(answered_at) is not datetime or answered_at.tzinfo is None
    ):
        return ".answered_at", f"None or {_AWARE}", answered_at
    if len(entry) >= 6 and type(entry[5]) is not int:
        return ".step", "an int", entry[5]
    return _answer_misfit(entry) if len(entry) >= 11 else None


def _answer_misfit(entry: list[Any]) -> tuple[str, str, Any] | None:
    """What is wrong with a history entry's schema, deadline and attribution, if anything."""
    schema, deadline, by, via = entry[6], entry[7], entry[9], entry[10]
    if schema is not None and type(schema) is not dict:
        return ".answer_schema", "a dict or None", schema
    if deadline is not None and (type(deadline) is not datetime or deadline.tzinfo is None):
        return ".deadline", f"None or {_AWARE}", deadline
    if by is not None and type(by) is not str:
        return ".answered_by", "a str or None", by
    if via is not None and type(via) is not str:
        return ".answered_via", "a str or None", via
    context = entry[11] if len(entry) > 11 else None
    if context is not None and not (
        type(context) is dict and all(type(k) is str and type(v) is str for k, v in context.items())
    ):
        return ".trace_context", "a dict of str to str or None", context
    return None


def _error_misfit(error: Any) -> tuple[str, str, Any] | None:
    if type(error) is not list or len(error) != 5:
        return "", "an ErrorInfo", error
    for name, value in zip(_ERROR_TEXTS, error, strict=False):
        if type(value) is not str:
            return f".{name}", "a str", value
    if type(error[4]) is not datetime or error[4].tzinfo is None:
        return ".at", _AWARE, error[4]
    return None


_DECISION_PARTS = (
    "node", "payload", "answer", "asked_at", "answered_at", "answer_schema", "deadline",
    "default", "answered_by", "answered_via", "trace_context",
)


def _envelope_parts(s: WorkflowSnapshot, row: list[Any]) -> Iterator[tuple[str, Any]]:
    """The envelope's values with the paths an error message names them by."""
    yield "state", row[3]  # as stored: a Mapping became a dict
    yield "event", s.event
    yield "interrupt", s.interrupt
    yield "metadata", row[11]
    for i, d in enumerate(s.history):
        for name in _DECISION_PARTS:
            yield f"history[{i}].{name}", getattr(d, name)
    yield "current_node", s.current_node
    yield "completed_nodes", s.completed_nodes
    yield "attempts", s.attempts
    if s.error is not None:
        for name in ("node", "type", "message", "traceback", "at"):
            yield f"error.{name}", getattr(s.error, name)
    yield "result", s.result
    yield "created_at", s.created_at
    yield "updated_at", s.updated_at
    yield "version", s.version
    yield "workflow_name", s.workflow_name
    yield "expires_at", s.expires_at


def _from_row(row: Any) -> WorkflowSnapshot:
    if (
        type(row) is not list
        or len(row) != _ENVELOPE_LENGTH
        or row[0] not in _ENVELOPE_VERSIONS
    ):
        if type(row) is list and len(row) == _ENVELOPE_V1_LENGTH and row[0] == 1:
            row = [*row, None, None, None]  # written before runs had names and results
        else:
            raise CorruptSnapshotError("damaged record: not a snapshot of a known layout")
    # What dumps guarantees, checked so a damaged record never loads as a broken snapshot.
    if not _fits(row):
        path, expected, value = _misfit(row)
        raise CorruptSnapshotError(
            f"damaged record: {path} is a {type(value).__name__}, not {expected}"
        )
    # The envelope keeps the dataclass's field order: the fields are passed as they are,
    # but for the history and the error, stored as lists.
    fields = row[1:]
    fields[7] = [Decision(*entry) for entry in row[8]]
    if row[10] is not None:
        fields[9] = ErrorInfo(*row[10])
    return WorkflowSnapshot(*fields)


def _explain_pickle(snapshot: WorkflowSnapshot, exc: BaseException, protocol: int) -> Exception:
    """Name the part of the snapshot pickle refused; never raises anything else."""
    reason = exception_text(exc)
    try:
        where = _unpicklable_path(snapshot, protocol)
    except Exception:  # the snapshot's own code failed again while being looked at
        where = None
    if where is None:
        return SerializationError(f"cannot pickle the snapshot: {reason}")
    return SerializationError(f"cannot pickle {where}: {reason}", path=where)


def _unpicklable_path(snapshot: WorkflowSnapshot, protocol: int) -> str | None:
    def picklable(value: Any) -> bool:
        try:
            pickle.dumps(value, protocol=protocol)
        except Exception:
            return False
        return True

    for path, value in _envelope_parts(snapshot, _envelope(snapshot)):
        if not picklable(value):
            return _innermost_unpicklable(value, path, picklable, set())
    return None


def _innermost_unpicklable(
    value: Any, path: str, picklable: Callable[[Any], bool], active: set[int]
) -> str:
    """The path of the innermost part of ``value`` that pickle refuses (``value`` is one)."""
    kind = type(value)
    children: Iterable[tuple[str, Any]]
    if kind is dict:
        children = dict_children(value, path)
    elif kind is list or kind is tuple or kind is set or kind is frozenset:
        children = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    elif isinstance(getattr(value, "__dict__", None), dict):  # an instance: its attributes
        children = ((f"{path}.{name}", item) for name, item in vars(value).items())
    else:
        return path
    active.add(id(value))
    try:
        for child_path, child in children:
            if id(child) not in active and not picklable(child):
                return _innermost_unpicklable(child, child_path, picklable, active)
    except RecursionError:
        pass
    finally:
        active.discard(id(value))
    return path
