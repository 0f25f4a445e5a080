"""What a snapshot holds: the complete "save game" of a run."""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._events import Event

SnapshotStatus = Literal["interrupted", "failed", "running", "completed"]
SNAPSHOT_STATUSES: frozenset[str] = frozenset({"interrupted", "failed", "running", "completed"})
#: The status a stored record is listed with when its data could not be read (a record
#: written before its columns existed and that the migration could not decode).
UNKNOWN_STATUS = "unknown"


def utc_now() -> datetime:
    """The library's one clock: timezone-aware UTC, microsecond resolution."""
    return datetime.now(UTC)


@dataclass
class Decision:
    """One interrupt asked by a node and, once resumed, its answer.

    ``step`` is how many nodes had completed when it was asked: it tells the interrupts
    of the node's current visit (replayed, in order, when the node runs again) from those
    of earlier visits of the same node in a loop.

    A typed question (``interrupt(..., answer=T)``) keeps the JSON Schema of its answer in
    ``answer_schema``, so any client can render a form; one asked with a ``timeout`` keeps
    its ``deadline`` and the ``default`` answer given when it passes. Once answered,
    ``answered_by`` says who answered (as given to ``resume``) and ``answered_via`` how:
    ``"resume"``, or ``"deadline"`` for the default given by ``expire_due``.
    """

    node: str
    payload: Any
    answer: Any = None
    asked_at: datetime = field(default_factory=utc_now)
    answered_at: datetime | None = None
    step: int = field(default=0, compare=False)
    answer_schema: dict[str, Any] | None = None
    deadline: datetime | None = None
    default: Any = None
    answered_by: str | None = None
    answered_via: str | None = None


#: Longest message and traceback an ErrorInfo keeps (characters): a failure must stay
#: storable, whatever an exception's text holds.
MAX_ERROR_MESSAGE = 4_000
MAX_ERROR_TRACEBACK = 40_000


@dataclass
class ErrorInfo:
    """Why a node failed: enough to inspect the failure without the process that saw it."""

    node: str
    type: str
    message: str
    traceback: str
    at: datetime = field(default_factory=utc_now)

    @classmethod
    def from_exception(cls, node: str, exc: BaseException) -> ErrorInfo:
        """Describe ``exc`` in text that can always be stored.

        A failure must be recorded whatever the exception does: its ``str()`` may raise
        or hold lone surrogates, its text may be huge. Neither stops the description.
        """
        return cls(
            node=node,
            type=exception_type_name(exc),
            message=clip(exception_text(exc), MAX_ERROR_MESSAGE),
            traceback=clip(_traceback_text(exc), MAX_ERROR_TRACEBACK),
            at=utc_now(),
        )


def exception_type_name(exc: BaseException) -> str:
    """``module.QualName`` of the exception's class."""
    cls = type(exc)
    try:
        return printable(f"{cls.__module__}.{cls.__qualname__}")
    except Exception:  # a __module__ that is not text, and formats badly
        return printable(cls.__qualname__)


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, else ``repr(exc)``, else a placeholder: never raises."""
    failures: list[str] = []
    for render in (str, repr):
        try:
            text = render(exc)
        except BaseException as problem:  # a broken __str__ may raise anything
            failures.append(f"{render.__name__}() raised {type(problem).__name__}")
            continue
        text = printable(text)
        return f"{text} [{failures[0]}]" if failures else text
    return f"<{type(exc).__name__} object: {' and '.join(failures)}>"


def _traceback_text(exc: BaseException) -> str:
    try:
        return printable("".join(_traceback.format_exception(exc)))
    except BaseException as problem:  # formatting runs the exception's code
        return f"<the traceback could not be formatted: {type(problem).__name__}>"


def printable(text: str) -> str:
    """Plain ``str`` that encodes as UTF-8: lone surrogates become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


@dataclass
class WorkflowSnapshot:
    """The complete state of a paused, failed, running or kept completed workflow run.

    ``version``, ``created_at`` and ``updated_at`` belong to the store: ``load`` returns
    them as stored, and ``save`` sets ``version`` and ``updated_at`` on the snapshot it
    was given (and ``created_at`` when it created the record). ``workflow_name`` is the
    ``Workflow``'s name; ``result`` what a kept ``"completed"`` run returned; after
    ``expires_at`` the record counts as gone.
    """

    workflow_id: str
    status: SnapshotStatus = "interrupted"
    state: dict[str, Any] = field(default_factory=dict)
    current_node: str | None = None
    event: Event | None = None
    completed_nodes: list[str] = field(default_factory=list)
    interrupt: Any = None
    history: list[Decision] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    error: ErrorInfo | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    version: int = 0
    workflow_name: str | None = None
    result: Any = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredSnapshotInfo:
    """A stored record as listed, without decoding its data.

    ``interrupt`` and ``metadata`` are plain-JSON renderings of the snapshot's question and
    metadata (datetimes as ISO 8601 text, Decimal and UUID as text, tuples and sets as
    lists, dataclasses and models as objects), for display and filtering: the record's
    data stays the truth. ``deadline`` is when the pending question's default answer is
    due (``interrupt(..., timeout=...)``), None when it has none.
    """

    workflow_id: str
    created_at: datetime
    updated_at: datetime
    version: int
    status: str = UNKNOWN_STATUS
    workflow_name: str | None = None
    current_node: str | None = None
    interrupt: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    deadline: datetime | None = None
