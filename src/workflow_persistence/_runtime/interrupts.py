"""interrupt(): how a node pauses the run to ask a person, and gets the answer later."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from workflow_persistence.errors import WorkflowError

__all__ = ["interrupt"]


class NodeInterrupted(BaseException):
    """Unwinds a node that called interrupt() without an answer yet.

    A BaseException, so a node's ``except Exception`` neither swallows it nor counts it
    as a failure to retry.
    """

    def __init__(self, payload: Any) -> None:
        super().__init__(payload)
        self.payload = payload


@dataclass
class NodeVisit:
    """The answers a node's interrupt() calls get in this visit, in order."""

    node: str
    answers: list[Any] = field(default_factory=list)
    asked: int = 0


current_visit: ContextVar[NodeVisit | None] = ContextVar("workflow_node_visit", default=None)


class visiting:  # a context manager, named like one
    """Make ``visit`` what interrupt() finds while a node runs in this context.

    A context variable, so it follows a node into a worker thread started with
    ``asyncio.to_thread`` (which copies the context) and into tasks the node creates.
    """

    __slots__ = ("token", "visit")

    def __init__(self, visit: NodeVisit) -> None:
        self.visit = visit

    def __enter__(self) -> None:
        self.token = current_visit.set(self.visit)

    def __exit__(self, *exc_info: object) -> None:
        current_visit.reset(self.token)


def interrupt(payload: Any = None) -> Any:
    """Pause the run and ask ``payload``; on resume, return the answer.

    The run is saved and ``start``/``resume`` returns an interrupted RunResult. When
    the run is resumed the node runs again from its top, and this call returns the
    answer given to ``resume``. Several calls in one node are answered in order.
    """
    visit = current_visit.get()
    if visit is None:
        raise WorkflowError(
            "interrupt() can only be called while a workflow node runs (inside a node"
            " started by Workflow.start, resume, astart or aresume, in its thread or task)"
        )
    if visit.asked < len(visit.answers):
        answer = visit.answers[visit.asked]
        visit.asked += 1
        return answer
    visit.asked += 1
    raise NodeInterrupted(payload)
