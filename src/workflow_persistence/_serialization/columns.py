"""The queryable columns of a stored run, taken from its snapshot when it is saved.

``data`` is the truth; these columns repeat what an app asks of waiting runs (status,
workflow, node, question, metadata, expiry) so a list is one indexed query that never
decodes ``data``. The question and metadata are kept as plain JSON: datetimes as ISO 8601
text, Decimal and UUID as text, tuples and sets as lists, dataclasses and pydantic models
as objects of their fields. Rendering never fails a save: what cannot be rendered becomes
its text form.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from workflow_persistence._ids import encodable
from workflow_persistence._snapshot import WorkflowSnapshot, printable

__all__ = [
    "MAX_JSON_TEXT",
    "SnapshotColumns",
    "columns_of",
    "json_text",
    "metadata_text",
    "pending_deadline",
    "plain_json",
]

#: Longest JSON text a column keeps (characters); a longer rendering is cut and kept as
#: a JSON string, so a huge question never doubles the size of a save.
MAX_JSON_TEXT = 64 * 1024
#: Longest text value kept when metadata is too long to keep whole.
MAX_METADATA_VALUE = 1024
_MAX_DEPTH = 100  # as deep as the default serializer stores


class SnapshotColumns(NamedTuple):
    """What a save writes beside the encoded snapshot (a tuple: built on every save)."""

    status: str
    workflow_name: str | None
    current_node: str | None
    interrupt: str | None  # JSON text, None when the run asks nothing
    run_metadata: str  # JSON text of an object
    expires_at: datetime | None
    deadline: datetime | None = None  # of the pending question, if it has one


def columns_of(snapshot: WorkflowSnapshot) -> SnapshotColumns:
    """The columns of ``snapshot`` (already checked by the serializer)."""
    interrupt = snapshot.interrupt
    status = snapshot.status
    metadata = snapshot.metadata
    return SnapshotColumns(
        status=status if type(status) is str else str.__str__(status),
        workflow_name=snapshot.workflow_name,
        current_node=snapshot.current_node,
        interrupt=None if interrupt is None else json_text(interrupt),
        run_metadata=metadata_text(metadata) if metadata else "{}",
        expires_at=snapshot.expires_at,
        deadline=pending_deadline(snapshot),
    )


def pending_deadline(snapshot: WorkflowSnapshot) -> datetime | None:
    """When the waiting run's question is due for its default answer, if it has a deadline."""
    if snapshot.status != "interrupted" or not snapshot.history:
        return None
    pending = snapshot.history[-1]
    return pending.deadline if pending.answered_at is None else None


def json_text(value: Any) -> str:
    """``value`` as compact JSON text that every database's JSON type accepts.

    A rendering longer than MAX_JSON_TEXT is cut and kept as a JSON string.
    """
    text = _full_text(value)
    if len(text) > MAX_JSON_TEXT:
        text = json.dumps(text[: MAX_JSON_TEXT - 64] + "...", ensure_ascii=False)
    return text


def metadata_text(metadata: Mapping[str, Any]) -> str:
    """The metadata as a JSON object, always one, so every record can be filtered.

    Metadata too long to keep whole keeps its short scalar values (what filters compare:
    text up to MAX_METADATA_VALUE characters, numbers, booleans) and leaves out the rest.
    """
    text = _full_text(metadata)
    if len(text) <= MAX_JSON_TEXT:
        return text
    kept: dict[str, Any] = {}
    room = MAX_JSON_TEXT - 2
    for key, value in _plain(metadata, 0).items():
        if type(value) is str and len(value) > MAX_METADATA_VALUE:
            continue
        if not (value is None or type(value) in (str, int, float, bool)):
            continue
        entry = len(json.dumps({key: value}, ensure_ascii=False)) - 1  # plus a comma
        if entry > room:
            break
        kept[key] = value
        room -= entry
    return json.dumps(kept, ensure_ascii=False, separators=(",", ":"))


def _full_text(value: Any) -> str:
    try:
        text = _encode(value)
    except (TypeError, ValueError, RecursionError):
        return _slow_text(value)
    # JSON with NUL or lone surrogates is refused by PostgreSQL's jsonb; the slow path
    # cleans them. encode() finds surrogates at C speed.
    if "\\u0000" in text or not encodable(text):
        return _slow_text(value)
    return text


def _fast_default(value: Any) -> Any:
    """json's hook for what it does not know; the slow path handles the rest."""
    kind = type(value)
    if kind is datetime or kind is date or kind is time:
        return value.isoformat()
    if kind is Decimal or kind is uuid.UUID:
        return str(value)
    if kind is set or kind is frozenset:
        return list(value)
    raise TypeError  # anything else: the careful walk


# One encoder built up front: json.dumps with options builds a new one on every call.
_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_fast_default
).encode


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON values (dict, list, str, int, float, bool, None)."""
    return _plain(value, 0)


def _slow_text(value: Any) -> str:
    return json.dumps(_plain(value, 0), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _plain(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return _text_form(value)
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return _clean_text(value) if kind is str else value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {_key(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, bool | int | str | float):  # subclasses: their plain value
        return _plain(_builtin_value(value), depth)
    fields = _fields(value)
    if fields is not None:
        return {_key(k): _plain(v, depth + 1) for k, v in fields.items()}
    return _text_form(value)


def _builtin_value(value: Any) -> Any:
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return value


def _fields(value: Any) -> dict[str, Any] | None:
    """A dataclass's or pydantic model's fields, or a stand-in's stored fields."""
    try:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            from .codec import UnresolvedObject

            if type(value) is UnresolvedObject:
                stored = value.fields
                return stored if isinstance(stored, dict) else {"value": stored}
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        dump = getattr(value, "model_dump", None)
        if callable(dump) and hasattr(type(value), "__pydantic_fields__"):
            dumped = dump(mode="python")
            return dumped if isinstance(dumped, dict) else None
    except Exception:  # a model's own code: fall back to the text form
        return None
    return None


def _key(key: Any) -> str:
    if type(key) is str:
        return _clean_text(key)
    plain = _plain(key, _MAX_DEPTH)  # scalars only: a key is never a container here
    return plain if type(plain) is str else json.dumps(plain)


def _clean_text(text: str) -> str:
    text = printable(text)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _text_form(value: Any) -> str:
    try:
        text = str(value)
    except Exception:
        try:
            text = object.__repr__(value)
        except Exception:
            text = f"<{type(value).__name__}>"
    return _clean_text(text)
