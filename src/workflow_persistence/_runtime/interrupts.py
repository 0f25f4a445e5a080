"""interrupt(): how a node pauses the run to ask a person, and gets the answer later."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar, overload

from workflow_persistence.errors import InvalidAnswerError, WorkflowDefinitionError, WorkflowError

from .answers import build_answer, check_answer, plain_answer, schema_of

__all__ = ["interrupt"]

T = TypeVar("T")


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


NO_DEFAULT: Final = _NoDefault()


@dataclass(frozen=True, slots=True)
class Question:
    """What a pending interrupt asks: its payload, and the answer's schema and deadline."""

    payload: Any
    answer_schema: dict[str, Any] | None = None
    timeout: timedelta | None = None
    default: Any = None


class NodeInterrupted(BaseException):
    """Unwinds a node that called interrupt() without an answer yet.

    A BaseException, so a node's ``except Exception`` neither swallows it nor counts it
    as a failure to retry.
    """

    def __init__(self, question: Question) -> None:
        super().__init__(question.payload)
        self.question = question


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


@overload
def interrupt(
    payload: Any = None,
    *,
    answer: None = None,
    timeout: timedelta | None = None,
    default: Any = NO_DEFAULT,
) -> Any: ...


@overload
def interrupt(
    payload: Any = None,
    *,
    answer: type[T],
    timeout: timedelta | None = None,
    default: Any = NO_DEFAULT,
) -> T: ...


@overload
def interrupt(
    payload: Any = None,
    *,
    answer: Any,
    timeout: timedelta | None = None,
    default: Any = NO_DEFAULT,
) -> Any: ...


def interrupt(
    payload: Any = None,
    *,
    answer: Any = None,
    timeout: timedelta | None = None,
    default: Any = NO_DEFAULT,
) -> Any:
    """Pause the run and ask ``payload``; on resume, return the answer.

    The run is saved and ``start``/``resume`` returns an interrupted RunResult. When
    the run is resumed the node runs again from its top, and this call returns the
    answer given to ``resume``. Several calls in one node are answered in order.

    ``answer=T`` (a dataclass, a pydantic model, an Enum, str, int, float, bool, or
    Optional/list/Literal of those) stores T's JSON Schema with the question, so clients
    can render a form; ``resume`` then refuses an answer that does not fit (with
    InvalidAnswerError, the run untouched) and this call returns a ``T``. With
    ``timeout=timedelta(...)`` the question has a deadline, and ``Workflow.expire_due``
    answers it with ``default`` once it passes. A timeout without a default, or a default
    that does not fit ``T``, raises WorkflowDefinitionError here.
    """
    visit = current_visit.get()
    if visit is None:
        raise WorkflowError(
            "interrupt() can only be called while a workflow node runs (inside a node"
            " started by Workflow.start, resume, astart or aresume, in its thread or task)"
        )
    schema = None if answer is None else schema_of(answer)
    default = _checked_deadline(schema, timeout, default)
    if visit.asked < len(visit.answers):
        given = visit.answers[visit.asked]
        visit.asked += 1
        if answer is None:
            return given
        try:
            return build_answer(answer, given)
        except Exception as exc:  # a model's own validators: the schema let it through
            raise InvalidAnswerError(
                f"the answer {given!r} fits the question's schema but {answer!r} refused it:"
                f" {exc}"
            ) from exc
    visit.asked += 1
    raise NodeInterrupted(Question(payload, schema, timeout, default))


def _checked_deadline(schema: dict[str, Any] | None, timeout: object, default: Any) -> Any:
    """The default to store (plain JSON for a typed question); refuse a bad pair."""
    if timeout is None:
        if default is not NO_DEFAULT:
            raise WorkflowDefinitionError(
                "interrupt(default=...) is the answer given when the question's deadline"
                " passes; give it a timeout=timedelta(...) too"
            )
        return None
    if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
        raise WorkflowDefinitionError(
            f"interrupt(timeout=...) must be a positive timedelta, not {timeout!r}"
        )
    if default is NO_DEFAULT:
        raise WorkflowDefinitionError(
            "interrupt(timeout=...) needs default=...: the answer expire_due gives the run"
            " when nobody answered in time"
        )
    if schema is None:
        return default
    plain = plain_answer(default)
    try:
        check_answer(schema, plain, path="default")
    except InvalidAnswerError as exc:
        raise WorkflowDefinitionError(
            f"interrupt(default=...) does not fit the answer type: {exc}"
        ) from exc
    return plain
