"""``Workflow``: a set of nodes, and the calls that start and resume its runs.

The run logic lives once, in the state machine of ``machine.py``; ``start``/``resume``
drive it in the calling thread on a sync persistence, ``astart``/``aresume`` on the
event loop on an async one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

from sqlalchemy.orm import Session

from workflow_persistence import _telemetry as telemetry
from workflow_persistence._events import StartEvent
from workflow_persistence._ids import check_workflow_id
from workflow_persistence._snapshot import WorkflowSnapshot
from workflow_persistence._storage.database import DatabasePersistence
from workflow_persistence._storage.memory import InMemoryPersistence
from workflow_persistence._storage.offloaded import AsyncInMemoryPersistence
from workflow_persistence._storage.session import AsyncSessionPersistence, SessionPersistence
from workflow_persistence.abc import AsyncPersistence, Persistence
from workflow_persistence.errors import (
    InvalidArgumentError,
    WorkflowDefinitionError,
    WorkflowError,
)

from .graph import build_graph
from .machine import Machine, RunResult, Steps, WorkflowState, arun, run
from .picture import Picture, graph_picture, mermaid
from .retry import NO_RETRY, RetryPolicy

if TYPE_CHECKING:  # SQLAlchemy's asyncio needs greenlet, an extra: imported when used
    from sqlalchemy.ext.asyncio import AsyncSession

    from workflow_persistence._storage.database_async import AsyncDatabasePersistence

__all__ = [
    "ResumeOptions",
    "RunResult",
    "StartOptions",
    "Workflow",
    "WorkflowState",
    "new_workflow_id",
    "workflows_by_name",
]

#: The longest a workflow name may be: the length of its column.
MAX_NAME_LENGTH = 255


def new_workflow_id() -> str:
    """A random, unguessable workflow id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


class Workflow:
    """A set of nodes, each a callable ``(event, state)`` handling one event type.

    A run begins at the node that handles ``StartEvent`` and ends when a node returns
    ``StopEvent``. A node pauses the run with ``interrupt(payload)``; ``resume`` continues
    it, in this process or any other, with the answer. ``retry`` is the default policy
    for failing nodes (a node may carry its own); ``types`` are the user classes the
    state holds, registered with the persistence's serializer along with the events.

    ``name`` is stored with every snapshot of its runs (``workflow_name``), so one store
    can hold the runs of several workflows and list them apart. A completed run deletes
    its record, unless ``keep_completed=timedelta(...)``: then it is saved as
    ``"completed"`` with its result and history, and expires that long after.

    With an :class:`AsyncPersistence` the runs are started and resumed with ``await
    astart(...)``/``await aresume(...)``, and nodes may be ``async def``; a workflow
    with ``async def`` nodes needs one (given none, it keeps its runs in an
    ``AsyncInMemoryPersistence``).
    """

    def __init__(
        self,
        nodes: Iterable[Any],
        *,
        name: str | None = None,
        keep_completed: timedelta | None = None,
        persistence: Persistence | AsyncPersistence | None = None,
        retry: RetryPolicy | None = None,
        types: Iterable[type] = (),
    ) -> None:
        self.name = _checked_name(name)
        self.keep_completed = _checked_keep_completed(keep_completed)
        types = tuple(types)
        self._graph = build_graph(nodes, types)
        self._by_name = {spec.name: spec for spec in self._graph.values()}
        self.persistence = _checked_persistence(
            persistence, [spec.name for spec in self._graph.values() if spec.is_async]
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise WorkflowDefinitionError("retry must be a RetryPolicy")
        self.retry = NO_RETRY if retry is None else retry
        events = set(self._graph)
        for spec in self._graph.values():
            events.update(spec.returns or ())
        register = getattr(self.persistence.serializer, "register", None)
        if register is not None:
            register(*sorted(events, key=lambda cls: cls.__qualname__), *types)

    @property
    def nodes(self) -> list[str]:
        return list(self._by_name)

    def picture(self, snapshot: WorkflowSnapshot | None = None) -> Picture:
        """The graph's nodes and edges, with ``snapshot``'s progress marked (for drawing)."""
        return graph_picture(self._graph, snapshot)

    def to_mermaid(self, snapshot: WorkflowSnapshot | None = None) -> str:
        """The graph as a Mermaid ``flowchart``: nodes, and the events that lead between
        them (as each node's return annotation declares them). Given a run's snapshot,
        its completed nodes and the node it stands at are marked (classes ``completed``,
        ``current``, ``failed``), so a reader sees where the run is."""
        return mermaid(self.picture(snapshot))

    # -- starting and resuming ----------------------------------------------------------

    def start(
        self, state: Mapping[str, Any] | None = None, **options: Unpack[StartOptions[Session]]
    ) -> RunResult:
        """Begin a run; it returns when the run completes or pauses at an interrupt.

        ``workflow_id`` (default: a new random one) must be new: starting under the id of
        a stored run raises ConflictError. ``metadata`` is stored with the run. A state or
        metadata that cannot be stored raises SerializationError and stores nothing.

        ``session``: a SQLAlchemy ``Session`` whose transaction the run's writes join
        (the claim, every checkpoint, the final snapshot or the delete), so they commit
        or roll back with the app's own rows; the workflow never commits. It needs a
        workflow whose persistence is a DatabasePersistence (its serializer and model
        are used).
        """
        persistence = self._sync_persistence("start", options)
        workflow_id, steps = self._starting(state, options)
        with telemetry.run_call("start", self.name, workflow_id) as call:
            return call.finished(run(steps, persistence))

    async def astart(
        self,
        state: Mapping[str, Any] | None = None,
        **options: Unpack[StartOptions[AsyncSession]],
    ) -> RunResult:
        """:meth:`start` on the event loop, for a workflow with an AsyncPersistence;
        ``session`` is an ``AsyncSession`` and needs an AsyncDatabasePersistence."""
        persistence = self._async_persistence("astart", options)
        workflow_id, steps = self._starting(state, options)
        with telemetry.run_call("start", self.name, workflow_id) as call:
            return call.finished(await arun(steps, persistence))

    def resume(
        self, workflow_id: str, answer: Any = None, **options: Unpack[ResumeOptions[Session]]
    ) -> RunResult:
        """Continue a paused run with ``answer``, or retry a failed run's node.

        The run is claimed before any node runs: of two concurrent resumes one proceeds
        and the other raises ConflictError. ``expected_version=run.version`` (from the
        RunResult that showed the question) makes sure the answer goes to that question:
        if the run has moved on since, ConflictError and nothing happens.

        A run still marked "running" (its claimant is busy, or died) raises ConflictError
        saying since when. ``take_over=timedelta(...)`` claims it only if nothing was
        saved for at least that long (a running run is saved after every node, so pick
        more than your slowest node takes): the safe way to recover from a dead claimant.
        ``take_over=True`` claims it at once; use it only when the claimant is known to be
        gone, since taking over re-runs the node that was running.

        ``session``: as for :meth:`start`. Of two resumes in two transactions, the second
        waits for the first to commit and then raises ConflictError.

        ``answered_by`` (who answered: a user name, an email) is recorded with the answer
        in the run's history. A question asked with ``interrupt(..., answer=T)`` takes
        only an answer that fits ``T``: any other raises InvalidAnswerError naming the
        part that does not fit, before the run is claimed, so it stays as it was.
        """
        persistence = self._sync_persistence("resume", options)
        steps = self._resuming(workflow_id, answer, options)
        with telemetry.run_call("resume", self.name, workflow_id) as call:
            return call.finished(run(steps, persistence))

    async def aresume(
        self,
        workflow_id: str,
        answer: Any = None,
        **options: Unpack[ResumeOptions[AsyncSession]],
    ) -> RunResult:
        """:meth:`resume` on the event loop, for a workflow with an AsyncPersistence.

        Of two concurrent ``aresume`` calls (in one process or many) exactly one proceeds.
        """
        persistence = self._async_persistence("aresume", options)
        steps = self._resuming(workflow_id, answer, options)
        with telemetry.run_call("resume", self.name, workflow_id) as call:
            return call.finished(await arun(steps, persistence))

    def expire_due(self, *, limit: int | None = None) -> int:
        """Answer every overdue question of this workflow's runs with its default.

        A question asked with ``interrupt(..., timeout=..., default=...)`` is overdue once
        its deadline passed; each such run (at most ``limit``) is resumed with the
        default, its history recording ``answered_via="deadline"``. Safe to run from
        several processes at once (a cron job, a worker per machine): each run is claimed
        as ``resume`` claims it, so exactly one of them resumes it. Returns how many runs
        this call resumed. The runs are found by the workflow's ``name``, which it needs.
        """
        persistence = self._sync_persistence("expire_due", {})
        return run(self._expiring(limit), persistence)

    async def aexpire_due(self, *, limit: int | None = None) -> int:
        """:meth:`expire_due` on the event loop, for a workflow with an AsyncPersistence."""
        persistence = self._async_persistence("aexpire_due", {})
        return await arun(self._expiring(limit), persistence)

    # -- what the calls share -----------------------------------------------------------

    def _expiring(self, limit: int | None) -> Steps[int]:
        if self.name is None:
            raise WorkflowError(
                "expire_due finds a workflow's overdue runs by its name: give the workflow"
                " one, Workflow(nodes, name=...), as the runs were started with"
            )
        return self._machine().expire_due(limit)

    def _machine(self) -> Machine:
        return Machine(
            self._graph,
            self._by_name,
            name=self.name,
            keep_completed=self.keep_completed,
            retry=self.retry,
            serializer=self.persistence.serializer,
        )

    def _starting(
        self, state: Mapping[str, Any] | None, options: StartOptions[Any]
    ) -> tuple[str, Steps[RunResult]]:
        """Check the arguments of ``start``; the new run's id, and the steps that claim and
        run it."""
        workflow_id = options.get("workflow_id")
        metadata = options.get("metadata")
        workflow_id = new_workflow_id() if workflow_id is None else check_workflow_id(workflow_id)
        if state is not None and not isinstance(state, Mapping):
            raise InvalidArgumentError(f"state must be a mapping, not {type(state).__name__}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidArgumentError(f"metadata must be a mapping, not {type(metadata).__name__}")
        snapshot = WorkflowSnapshot(
            workflow_id,
            status="running",
            state=dict(state or {}),
            current_node=self._graph[StartEvent].name,
            event=StartEvent(),
            metadata=dict(metadata or {}),
            workflow_name=self.name,
        )
        return workflow_id, self._machine().start(snapshot)

    def _resuming(
        self, workflow_id: str, answer: Any, options: ResumeOptions[Any]
    ) -> Steps[RunResult]:
        """Check the arguments of ``resume``; the steps that claim and run the run."""
        take_over = options.get("take_over", False)
        if not isinstance(take_over, bool | timedelta):
            raise InvalidArgumentError(
                f"take_over must be a bool or a timedelta, not {type(take_over).__name__}"
            )
        answered_by = options.get("answered_by")
        if answered_by is not None and type(answered_by) is not str:
            raise InvalidArgumentError(
                f"answered_by must be a str or None, not {type(answered_by).__name__}"
            )
        return self._machine().resume(
            workflow_id,
            answer,
            expected_version=options.get("expected_version"),
            take_over=take_over,
            answered_by=answered_by,
        )

    def _sync_persistence(
        self, call: str, options: StartOptions[Any] | ResumeOptions[Any]
    ) -> Persistence:
        """Where ``start``/``resume`` write: the persistence, or the caller's session."""
        persistence = self.persistence
        if isinstance(persistence, AsyncPersistence):
            raise WorkflowError(
                f"this workflow keeps its runs in an async persistence"
                f" ({type(persistence).__name__}); call `await workflow.a{call}(...)`"
                f" instead of {call}() (astart/aresume run on the event loop)"
            )
        session = _checked_options(call, options)
        if session is None:
            return persistence
        joined = _joined(call, persistence, DatabasePersistence, session, Session)
        return SessionPersistence(session, serializer=joined.serializer, model=joined.model)

    def _async_persistence(
        self, call: str, options: StartOptions[Any] | ResumeOptions[Any]
    ) -> AsyncPersistence:
        """Where ``astart``/``aresume`` write: the persistence, or the caller's session."""
        persistence = self.persistence
        if not isinstance(persistence, AsyncPersistence):
            raise WorkflowError(
                f"this workflow keeps its runs in a sync persistence"
                f" ({type(persistence).__name__}); call workflow.{call[1:]}(...) instead of"
                f" {call}() (start/resume), or give the workflow an async persistence such"
                " as AsyncDatabasePersistence"
            )
        session = _checked_options(call, options)
        if session is None:
            return persistence
        from sqlalchemy.ext.asyncio import AsyncSession

        from workflow_persistence._storage.database_async import AsyncDatabasePersistence

        joined = _joined(call, persistence, AsyncDatabasePersistence, session, AsyncSession)
        return AsyncSessionPersistence(session, serializer=joined.serializer, model=joined.model)


S = TypeVar("S")
B = TypeVar("B", "DatabasePersistence", "AsyncDatabasePersistence")


def _checked_options(call: str, options: StartOptions[S] | ResumeOptions[S]) -> S | None:
    """Refuse keywords the call does not take (as Python would); the session, if given."""
    known = StartOptions.__optional_keys__ if "start" in call else ResumeOptions.__optional_keys__
    for key in options:
        if key not in known:
            raise TypeError(f"{call}() got an unexpected keyword argument {key!r}")
    return options.get("session")


def _joined(
    call: str, persistence: object, wanted: type[B], session: object, session_type: type
) -> B:
    """The database persistence whose serializer and model a session's writes use."""
    if not isinstance(session, session_type):
        raise InvalidArgumentError(
            f"{call}(session=...) takes a SQLAlchemy {session_type.__name__}, not"
            f" {type(session).__name__}"
        )
    if not isinstance(persistence, wanted):
        raise InvalidArgumentError(
            f"{call}(session=...) writes the run in your {type(session).__name__}'s"
            f" transaction, which needs a workflow whose persistence is a"
            f" {wanted.__name__} (its serializer and table are used), not"
            f" {type(persistence).__name__}"
        )
    return persistence


class StartOptions(TypedDict, Generic[S], total=False):
    """The keyword arguments of ``start`` (``S``: Session) and ``astart`` (AsyncSession)."""

    workflow_id: str | None
    metadata: Mapping[str, Any] | None
    session: S | None


class ResumeOptions(TypedDict, Generic[S], total=False):
    """The keyword arguments of ``resume`` (``S``: Session) and ``aresume`` (AsyncSession)."""

    expected_version: int | None
    take_over: bool | timedelta
    session: S | None
    answered_by: str | None


def _checked_persistence(
    persistence: Persistence | AsyncPersistence | None, async_nodes: list[str]
) -> Persistence | AsyncPersistence:
    """The workflow's persistence; ``async def`` nodes can only run with an async one."""
    if persistence is None:
        return AsyncInMemoryPersistence() if async_nodes else InMemoryPersistence()
    if async_nodes and not isinstance(persistence, AsyncPersistence):
        raise WorkflowDefinitionError(
            f"node{'s' if len(async_nodes) > 1 else ''} {', '.join(map(repr, async_nodes))}"
            f" {'are' if len(async_nodes) > 1 else 'is'} async def, which runs only on the"
            f" event loop with an async persistence, not {type(persistence).__name__}; give"
            " the workflow an AsyncPersistence (AsyncDatabasePersistence,"
            " AsyncFilePersistence, ...) and run it with astart/aresume"
        )
    return persistence


def workflows_by_name(workflows: object) -> dict[str, Workflow]:
    """A Workflow, or an iterable of them, keyed by name: what the inbox and the command
    line are handed. Each needs its own name, since stored runs say which they belong to."""
    found = [workflows] if isinstance(workflows, Workflow) else None
    if found is None:
        try:
            found = list(workflows)  # type: ignore[call-overload]
        except TypeError:
            found = None
    if not found or not all(isinstance(w, Workflow) for w in found):
        raise InvalidArgumentError(
            f"expected a Workflow or a non-empty iterable of Workflows, not {workflows!r:.80}"
        )
    named: dict[str, Workflow] = {}
    for workflow in found:
        if workflow.name is None or workflow.name in named:
            problem = "has no name" if workflow.name is None else "shares its name"
            raise InvalidArgumentError(
                f"a workflow with nodes {workflow.nodes} {problem}; give each"
                " Workflow(..., name=...) its own name, stored with its runs"
            )
        named[workflow.name] = workflow
    return named


def _checked_name(name: object) -> str | None:
    """The workflow's name, stored in a VARCHAR(255) column beside each of its runs."""
    if name is None:
        return None
    if type(name) is not str:
        raise WorkflowDefinitionError(f"name must be None or a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise WorkflowDefinitionError(
            f"name must be 1 to {MAX_NAME_LENGTH} characters long, not {len(name)}"
        )
    return name


def _checked_keep_completed(keep: object) -> timedelta | None:
    if keep is None:
        return None
    if not isinstance(keep, timedelta) or keep <= timedelta(0):
        raise WorkflowDefinitionError(
            f"keep_completed must be None (completed runs are deleted) or a positive"
            f" timedelta, such as timedelta(days=7), not {keep!r}"
        )
    return keep
