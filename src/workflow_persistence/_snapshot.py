"""What a snapshot holds (API.md section 1): the complete "save game" of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._events import Event

SnapshotStatus = Literal["interrupted", "failed", "running"]
SNAPSHOT_STATUSES: frozenset[str] = frozenset({"interrupted", "failed", "running"})


def utc_now() -> datetime:
    """The library's one clock: timezone-aware UTC, microsecond resolution."""
    return datetime.now(UTC)


@dataclass
class Decision:
    """One interrupt asked by a node and, once resumed, its answer.

    ``step`` is how many nodes had completed when it was asked: it tells the interrupts
    of the node's current visit (replayed, in order, when the node runs again) from those
    of earlier visits of the same node in a loop.
    """

    node: str
    payload: Any
    answer: Any = None
    asked_at: datetime = field(default_factory=utc_now)
    answered_at: datetime | None = None
    step: int = field(default=0, compare=False)


@dataclass
class ErrorInfo:
    """Why a node failed: enough to inspect the failure without the process that saw it."""

    node: str
    type: str
    message: str
    traceback: str
    at: datetime = field(default_factory=utc_now)


@dataclass
class WorkflowSnapshot:
    """The complete state of a paused, failed or running workflow run.

    ``version``, ``created_at`` and ``updated_at`` belong to the store: ``load`` returns
    them as stored, and ``save`` sets ``version`` and ``updated_at`` on the snapshot it
    was given (and ``created_at`` when it created the record).
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


@dataclass(frozen=True, slots=True)
class StoredSnapshotInfo:
    """A stored record as listed, without decoding its data."""

    workflow_id: str
    created_at: datetime
    updated_at: datetime
    version: int
