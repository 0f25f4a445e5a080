"""The workflow runtime: event-driven nodes, interrupt() and resume(), retries.

Every run is claimed in the persistence before a node runs: ``start`` creates its record
(``expected_version=0``, so an id is never reused by accident) and ``resume`` moves it from
"interrupted" or "failed" to "running" with ``expected_version`` set to the version it
loaded. Of two concurrent resumes exactly one claim succeeds; the other raises
ConflictError before any node runs. The database's own compare-and-set carries this, so
it holds across threads, processes and machines.

While a node runs, the state as it was when the node was entered is kept (encoded by the
persistence's serializer, which is also a deep copy). If the node pauses or fails, that
state is what is saved or retried with, so the node's writes happen once.
"""

from __future__ import annotations

import secrets
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, NoReturn

from ._events import Event, StartEvent, StopEvent
from ._graph import NodeSpec, build_graph
from ._ids import check_workflow_id
from ._interrupts import NodeInterrupted, NodeVisit, current_visit
from ._memory import InMemoryPersistence
from ._retry import NO_RETRY, RetryPolicy
from ._snapshot import Decision, ErrorInfo, WorkflowSnapshot, utc_now
from .abc import Persistence
from .errors import (
    ConflictError,
    InvalidArgumentError,
    PayloadTooLargeError,
    SerializationError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
)

__all__ = ["RunResult", "Workflow", "WorkflowState", "new_workflow_id"]


def new_workflow_id() -> str:
    """A random, unguessable workflow id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


class WorkflowState(dict[str, Any]):
    """The run's variables, as a dict; also tells a node which run it belongs to."""

    def __init__(
        self,
        values: Mapping[str, Any] = (),  # type: ignore[assignment]
        *,
        workflow_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(values)
        self.workflow_id = workflow_id
        self.metadata: Mapping[str, Any] = dict(metadata or {})


@dataclass
class RunResult:
    """Where a run stands after ``start`` or ``resume``.

    ``"completed"``: ``result`` is what the final node put in ``StopEvent(result=...)``.
    ``"interrupted"``: ``interrupt`` is the payload the pausing node asked with, ``state``
    is the state that was saved (as the pausing node found it), and ``version`` the saved
    snapshot's version, to pass as ``resume(..., expected_version=)``.
    """

    workflow_id: str
    status: Literal["completed", "interrupted"]
    state: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    interrupt: Any = None
    version: int | None = None  # of the saved snapshot: resume(..., expected_version=)


class Workflow:
    """A set of nodes, each a callable ``(event, state)`` handling one event type.

    A run begins at the node that handles ``StartEvent`` and ends when a node returns
    ``StopEvent``. A node pauses the run with ``interrupt(payload)``; ``resume`` continues
    it, in this process or any other, with the answer. ``retry`` is the default policy
    for failing nodes (a node may carry its own); ``types`` are the user classes the
    state holds, registered with the persistence's serializer along with the events.
    """

    def __init__(
        self,
        nodes: Iterable[Any],
        *,
        persistence: Persistence | None = None,
        retry: RetryPolicy | None = None,
        types: Iterable[type] = (),
    ) -> None:
        types = tuple(types)
        self._graph = build_graph(nodes, types)
        self._by_name = {spec.name: spec for spec in self._graph.values()}
        self.persistence: Persistence = (
            InMemoryPersistence() if persistence is None else persistence
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

    # -- starting and resuming ----------------------------------------------------------

    def start(
        self,
        state: Mapping[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Begin a run; it returns when the run completes or pauses at an interrupt.

        The id must be new: starting under the id of a stored run raises ConflictError.
        """
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
        )
        try:
            self._save(snapshot, expected_version=0)
        except ConflictError as exc:
            raise ConflictError(
                f"a run with id {workflow_id!r} is already stored; resume it, or start"
                " under another id",
                workflow_id=workflow_id,
                expected_version=0,
            ) from exc
        return self._drive(snapshot)

    def resume(
        self,
        workflow_id: str,
        answer: Any = None,
        *,
        expected_version: int | None = None,
        take_over: bool | timedelta = False,
    ) -> RunResult:
        """Continue a paused run with ``answer``, or retry a failed run's node.

        The run is claimed before any node runs: of two concurrent resumes one proceeds
        and the other raises ConflictError. ``expected_version=run.version`` (from the
        RunResult that showed the question) makes sure the answer goes to that question:
        if the run has moved on since, ConflictError and nothing happens.

        A run still marked "running" (its claimant is busy, or died) raises ConflictError
        saying since when; ``take_over=True`` claims it anyway, and
        ``take_over=timedelta(...)`` only if nothing was saved for at least that long (a
        running run is saved after every node). Taking over re-runs the node that was
        running, so use it only when the claimant is known to be gone.
        """
        snapshot = self.persistence.load(workflow_id)
        loaded_version = snapshot.version
        if expected_version is not None and loaded_version != expected_version:
            raise ConflictError(
                f"run {workflow_id!r} has moved on: it is at version {loaded_version}, not"
                f" {expected_version} (status {snapshot.status!r}); nothing was done",
                workflow_id=workflow_id,
                expected_version=expected_version,
            )
        if snapshot.status == "running":
            self._check_take_over(snapshot, take_over)
            if answer is not None:
                raise WorkflowError(
                    f"run {workflow_id!r} is not waiting for an answer; resume it without one"
                )
        elif snapshot.status == "interrupted":
            pending = snapshot.history[-1] if snapshot.history else None
            if pending is None or pending.answered_at is not None:
                raise WorkflowError(f"run {workflow_id!r} has no pending interrupt to answer")
            pending.answer = answer
            pending.answered_at = utc_now()
        elif snapshot.status == "failed" and answer is not None:
            raise WorkflowError(
                f"run {workflow_id!r} failed at node {snapshot.current_node!r}; resume"
                " it without an answer to retry that node"
            )
        spec = self._by_name.get(snapshot.current_node)  # type: ignore[arg-type]
        if spec is None:
            raise WorkflowDefinitionError(
                f"run {workflow_id!r} is at node {snapshot.current_node!r}, which this"
                f" workflow does not have (its nodes: {', '.join(self._by_name)})"
            )
        if not isinstance(snapshot.event, spec.handles):
            raise WorkflowError(
                f"run {workflow_id!r} holds a {type(snapshot.event).__name__} for node"
                f" {spec.name!r}, which handles {spec.handles.__qualname__}"
            )
        snapshot.status = "running"
        snapshot.interrupt = None
        snapshot.error = None
        try:
            self._save(snapshot, expected_version=loaded_version)
        except ConflictError as exc:
            raise ConflictError(
                f"run {workflow_id!r} was claimed by another resume at the same moment;"
                " this one did nothing",
                workflow_id=workflow_id,
                expected_version=loaded_version,
            ) from exc
        return self._drive(snapshot)

    def _check_take_over(self, snapshot: WorkflowSnapshot, take_over: bool | timedelta) -> None:
        since = snapshot.updated_at
        running_for = utc_now() - since
        if take_over is True or (
            isinstance(take_over, timedelta) and not isinstance(take_over, bool)
            and running_for >= take_over
        ):
            return
        raise ConflictError(
            f"run {snapshot.workflow_id!r} is being run by another caller since"
            f" {since.isoformat()} (for {_rounded(running_for)}); if that caller is gone,"
            " resume with take_over=True",
            workflow_id=snapshot.workflow_id,
            expected_version=snapshot.version,
            running_since=since,
        )

    # -- running ------------------------------------------------------------------------

    def _save(self, snapshot: WorkflowSnapshot, *, expected_version: int) -> None:
        snapshot.version = self.persistence.save(snapshot, expected_version=expected_version)

    def _entry_copy(self, snapshot: WorkflowSnapshot, state: dict[str, Any]) -> bytes:
        """The state as the node finds it, deep-copied by the persistence's serializer."""
        return self.persistence.serializer.dumps(
            WorkflowSnapshot(snapshot.workflow_id, status="running", state=dict(state))
        )

    def _restore(self, entry: bytes, snapshot: WorkflowSnapshot) -> WorkflowState:
        values = self.persistence.serializer.loads(entry).state
        return WorkflowState(values, workflow_id=snapshot.workflow_id, metadata=snapshot.metadata)

    def _drive(self, snapshot: WorkflowSnapshot) -> RunResult:
        """Run nodes from the claimed snapshot until the run completes or pauses.

        After every node the run is saved (the next node, its event and the state it
        will find): a heartbeat for take-over, and where a take-over starts again.
        """
        spec = self._by_name[snapshot.current_node]  # type: ignore[index]
        event: Event = snapshot.event  # type: ignore[assignment]
        state = WorkflowState(
            snapshot.state, workflow_id=snapshot.workflow_id, metadata=snapshot.metadata
        )
        entry = self._entry_copy(snapshot, state)  # stored with the claim: it encodes
        while True:
            outcome = self._run_node(spec, event, state, entry, snapshot)
            if isinstance(outcome, RunResult):
                return outcome
            returned, state = outcome
            snapshot.completed_nodes.append(spec.name)
            if isinstance(returned, StopEvent):
                self._finish(snapshot)
                return RunResult(snapshot.workflow_id, "completed", dict(state), returned.result)
            next_spec = self._graph[type(returned)]
            try:
                snapshot.current_node, snapshot.event = next_spec.name, returned
                snapshot.state = dict(state)
                self._save(snapshot, expected_version=snapshot.version)
                next_entry = self._entry_copy(snapshot, state)
            except ConflictError as exc:
                raise self._taken_over(snapshot) from exc
            except (SerializationError, PayloadTooLargeError) as exc:
                # The node handed on what cannot be stored: it is the node that failed.
                snapshot.completed_nodes.pop()
                self._fail(spec, event, entry, snapshot, exc, raise_as=exc)
            spec, event, entry = next_spec, returned, next_entry

    def _finish(self, snapshot: WorkflowSnapshot) -> None:
        """A completed run deletes its record, if it still holds the claim."""
        try:
            self.persistence.delete(snapshot.workflow_id, expected_version=snapshot.version)
        except ConflictError as exc:
            raise self._taken_over(snapshot) from exc

    @staticmethod
    def _taken_over(snapshot: WorkflowSnapshot) -> ConflictError:
        return ConflictError(
            f"run {snapshot.workflow_id!r} was taken over by another caller while this one"
            " ran it; this one stopped and left the stored run alone",
            workflow_id=snapshot.workflow_id,
            expected_version=snapshot.version,
        )

    def _run_node(
        self,
        spec: NodeSpec,
        event: Event,
        state: WorkflowState,
        entry: bytes,
        snapshot: WorkflowSnapshot,
    ) -> RunResult | tuple[Event, WorkflowState]:
        """Run one node with its retries: its next event, or the run's paused result."""
        policy = spec.retry or self.retry
        step = len(snapshot.completed_nodes)
        answers = [d.answer for d in snapshot.history if d.step == step and d.node == spec.name]
        failures = 0
        while True:
            visit = NodeVisit(spec.name, answers)
            token = current_visit.set(visit)
            try:
                returned = spec.fn(event, state)
            except NodeInterrupted as asked:
                return self._pause(spec, event, entry, snapshot, asked.payload, step)
            except Exception as exc:
                snapshot.attempts[spec.name] = snapshot.attempts.get(spec.name, 0) + 1
                failures += 1
                swallowed = _swallowed_interrupt(spec, visit)
                if swallowed is not None:
                    self._fail(spec, event, entry, snapshot, swallowed, raise_as=swallowed)
                if policy.retries(exc, failures):
                    time.sleep(policy.delay(failures))
                    state = self._restore(entry, snapshot)
                    continue
                self._fail(spec, event, entry, snapshot, exc)
            finally:
                current_visit.reset(token)
            snapshot.attempts[spec.name] = snapshot.attempts.get(spec.name, 0) + 1
            problem = _swallowed_interrupt(spec, visit) or self._returned_problem(spec, returned)
            if problem is not None:
                self._fail(spec, event, entry, snapshot, problem, raise_as=problem)
            return returned, state

    def _returned_problem(self, spec: NodeSpec, returned: object) -> WorkflowDefinitionError | None:
        if not isinstance(returned, Event):
            return WorkflowDefinitionError(
                f"node {spec.name!r} returned {type(returned).__name__}, not an Event;"
                " return the next event, or StopEvent(result=...) to end the run"
            )
        if not isinstance(returned, StopEvent) and type(returned) not in self._graph:
            return WorkflowDefinitionError(
                f"node {spec.name!r} returned {type(returned).__qualname__}, which no node handles"
            )
        return None

    def _pause(
        self,
        spec: NodeSpec,
        event: Event,
        entry: bytes,
        snapshot: WorkflowSnapshot,
        payload: Any,
        step: int,
    ) -> RunResult:
        saved_state = self._restore(entry, snapshot)
        snapshot.status = "interrupted"
        snapshot.state = dict(saved_state)
        snapshot.current_node = spec.name
        snapshot.event = event
        snapshot.interrupt = payload
        snapshot.history.append(Decision(spec.name, payload, asked_at=utc_now(), step=step))
        try:
            self._save(snapshot, expected_version=snapshot.version)
        except ConflictError as exc:
            raise self._taken_over(snapshot) from exc
        except (SerializationError, PayloadTooLargeError) as exc:
            snapshot.history.pop()  # asked with what cannot be stored: the node failed
            self._fail(spec, event, entry, snapshot, exc, raise_as=exc)
        return RunResult(
            snapshot.workflow_id,
            "interrupted",
            dict(saved_state),
            interrupt=payload,
            version=snapshot.version,
        )

    def _fail(
        self,
        spec: NodeSpec,
        event: Event,
        entry: bytes,
        snapshot: WorkflowSnapshot,
        exc: BaseException,
        *,
        raise_as: BaseException | None = None,
    ) -> NoReturn:
        """Save a "failed" snapshot, then raise (WorkflowFailedError unless ``raise_as``)."""
        snapshot.status = "failed"
        snapshot.state = dict(self._restore(entry, snapshot))
        snapshot.current_node = spec.name
        snapshot.event = event
        snapshot.interrupt = None
        snapshot.error = ErrorInfo(
            node=spec.name,
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            at=utc_now(),
        )
        try:
            self._save(snapshot, expected_version=snapshot.version)
        except ConflictError as conflict:
            raise self._taken_over(snapshot) from conflict
        if raise_as is not None:
            raise raise_as
        attempts = snapshot.attempts.get(spec.name, 0)
        raise WorkflowFailedError(
            f"node {spec.name!r} of run {snapshot.workflow_id!r} failed"
            f" ({type(exc).__name__}: {exc}); the run was saved as failed after"
            f" {attempts} attempt{'s' if attempts != 1 else ''}, resume it to retry",
            workflow_id=snapshot.workflow_id,
            node=spec.name,
        ) from exc


def _swallowed_interrupt(spec: NodeSpec, visit: NodeVisit) -> WorkflowDefinitionError | None:
    """A node that caught the pause of its own interrupt() (and went on, or re-raised)."""
    if visit.asked > len(visit.answers):
        return WorkflowDefinitionError(
            f"node {spec.name!r} caught the exception interrupt() raises to pause the"
            " run; let it propagate (catch Exception, not BaseException)"
        )
    return None


def _rounded(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
