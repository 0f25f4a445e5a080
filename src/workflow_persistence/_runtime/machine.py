"""The run logic of a workflow: one state machine for start/resume and astart/aresume.

The machine is generator code ("sans-I/O", as h11 keeps HTTP): it decides, and yields
each piece of I/O it needs as an op (save, load or delete on the persistence, call this
node, sleep before a retry); a driver performs the op and sends back its result, or
throws its exception in. :func:`run` is the sync driver, :func:`arun` the async one:
they are short loops, so every promise below holds for both, from one copy of the logic.

Every run is claimed in the persistence before a node runs: ``start`` creates its record
(``expected_version=0``, so an id is never reused by accident) and ``resume`` moves it from
"interrupted" or "failed" to "running" with ``expected_version`` set to the version it
loaded. Of two concurrent resumes exactly one claim succeeds; the other raises
ConflictError before any node runs. The database's own compare-and-set carries this, so
it holds across threads, processes and machines.

While a node runs, its state and event as they were when the node was entered are kept
(encoded by the persistence's serializer, which is also a deep copy). If the node pauses or
fails, that is what is saved or retried with, so the node's writes happen once.

A claimed run is never left "running" when the driver returns or raises. Whatever goes
wrong after the claim (a node's exception, KeyboardInterrupt, a cancelled task, a value
that cannot be stored, an exception that cannot even be printed, the runtime's own steps)
is saved as a "failed" snapshot that ``resume`` retries. What can be checked without
running anything (a damaged record, a node the workflow no longer has, an answer that
cannot be stored) is refused before the claim, and the stored run stays as it was. Only a
process that dies, or storage that fails in the middle of a write, leaves a run "running":
that is what ``take_over`` is for.

A completed run's record is deleted with the claim's version, or, with
``keep_completed``, replaced (at that version) by a "completed" snapshot that expires: a
record of what was decided, never resumed again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from workflow_persistence import _telemetry as telemetry
from workflow_persistence import errors
from workflow_persistence._events import Event, StopEvent
from workflow_persistence._snapshot import (
    SNAPSHOT_STATUSES,
    Decision,
    ErrorInfo,
    StoredSnapshotInfo,
    WorkflowSnapshot,
    clip,
    exception_text,
    utc_now,
)
from workflow_persistence.errors import (
    ConflictError,
    InvalidAnswerError,
    SerializationError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
)

from .answers import check_answer, plain_answer
from .interrupts import NodeInterrupted, NodeVisit, Question, visiting

if TYPE_CHECKING:
    from workflow_persistence._serialization.serializers import Serializer
    from workflow_persistence.abc import AsyncPersistence, Persistence

    from .graph import NodeSpec
    from .retry import RetryPolicy

__all__ = ["Machine", "RunResult", "WorkflowState", "arun", "run"]

_log = logging.getLogger("workflow_persistence")

T = TypeVar("T")

#: A running run saved more recently than this is presumed alive: its caller is told to
#: wait, not to take it over.
RECENTLY_SAVED = timedelta(minutes=5)
#: A kept run expires at the latest here: every database's datetime type reaches it.
_LAST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)


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


@dataclass
class _Claim:
    """A run this caller has claimed, and the node it is at.

    ``held`` stays true while the stored record is this caller's "running" snapshot, that
    is until the run is saved as paused or failed, deleted, or lost to a take-over: a
    claim still held when ``start``/``resume`` leaves is saved as failed.
    """

    snapshot: WorkflowSnapshot
    spec: NodeSpec
    event: Event
    state: WorkflowState
    step: int = 0  # nodes completed when this node was entered
    entry: bytes | None = None  # the state and event as the node found them, encoded
    failure: BaseException | None = None  # what to record, when not what is raised
    held: bool = True


# -- the I/O the machine asks for, with its sync and its async face ---------------------------


class Op(Protocol):
    def run(self, persistence: Persistence) -> Any: ...

    async def arun(self, persistence: AsyncPersistence) -> Any: ...


#: What the machine's generators are: they yield ops, get each op's result, return ``T``.
Steps = Generator[Op, Any, T]


@dataclass(slots=True)
class Store:
    """A call on the persistence: ``save``, ``load``, ``delete`` or ``list``."""

    method: Literal["save", "load", "delete", "list"]
    args: tuple[Any, ...]
    options: dict[str, Any]

    def run(self, persistence: Persistence) -> Any:
        return getattr(persistence, self.method)(*self.args, **self.options)

    async def arun(self, persistence: AsyncPersistence) -> Any:
        return await getattr(persistence, self.method)(*self.args, **self.options)


def save(snapshot: WorkflowSnapshot, expected_version: int) -> Store:
    return Store("save", (snapshot,), {"expected_version": expected_version})


@dataclass(slots=True)
class Call:
    """Run a node. On the event loop an ``async def`` node is awaited there; a plain node
    runs in a worker thread, so no node blocks the loop. ``attempt`` and ``workflow_name``
    describe the attempt to tracing."""

    spec: NodeSpec
    event: Event
    state: WorkflowState
    visit: NodeVisit
    attempt: int = 1
    workflow_name: str | None = None

    def run(self, persistence: Persistence) -> Any:
        with self._traced(), visiting(self.visit):
            return self.spec.fn(self.event, self.state)

    async def arun(self, persistence: AsyncPersistence) -> Any:
        # Both before to_thread, which copies the context.
        with self._traced(), visiting(self.visit):
            if self.spec.is_async:
                return await self.spec.fn(self.event, self.state)
            return await asyncio.to_thread(self.spec.fn, self.event, self.state)

    def _traced(self) -> AbstractContextManager[object]:
        return telemetry.node_call(
            self.spec.name,
            self.state.workflow_id,
            self.workflow_name,
            self.attempt,
            NodeInterrupted,
        )


@dataclass(slots=True)
class Sleep:
    seconds: float

    def run(self, persistence: Persistence) -> None:
        time.sleep(self.seconds)

    async def arun(self, persistence: AsyncPersistence) -> None:
        await asyncio.sleep(self.seconds)


# -- the drivers ------------------------------------------------------------------------------


def run(steps: Steps[T], persistence: Persistence) -> T:
    """Run the machine here, each op in this thread on a sync persistence."""
    # A plain loop rather than _Stepper: this one is on every sync call's path.
    send: Callable[[Any], Op] = steps.send
    value: Any = None
    while True:
        try:
            op = send(value)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            value, send = op.run(persistence), steps.send
        except BaseException as exc:  # the machine decides what it means
            value, send = exc, steps.throw


class _Stepper(Generic[T]):
    """Feeds the machine what its last op gave (``value``) or raised (``raised``), and
    iterates over the ops it asks for; ``result`` is what it returned in the end."""

    __slots__ = ("raised", "result", "steps", "value")

    def __init__(self, steps: Steps[T]) -> None:
        self.steps = steps
        self.value: Any = None
        self.raised: BaseException | None = None

    def __iter__(self) -> Iterator[Op]:
        return self

    def __next__(self) -> Op:
        raised, self.raised = self.raised, None
        try:
            if raised is None:
                return self.steps.send(self.value)
            return self.steps.throw(raised)
        except StopIteration as done:
            self.result: T = done.value
            raise StopIteration from None


async def arun(steps: Steps[T], persistence: AsyncPersistence) -> T:
    """Run the machine on the event loop, each op awaited on an async persistence.

    A cancelled task is thrown into the machine like KeyboardInterrupt: the run is saved
    as failed (the awaits that does still work once the task is cancelled), and the
    cancellation goes on.
    """
    stepper = _Stepper(steps)
    for op in stepper:
        try:
            stepper.value = await op.arun(persistence)
        except GeneratorExit:  # this coroutine is closed: no more awaiting
            raise
        except BaseException as exc:  # the machine decides what it means
            stepper.raised = exc
    return stepper.result


# -- the machine ------------------------------------------------------------------------------


class Machine:
    """The run logic of one workflow; each public method gives the steps of one call."""

    def __init__(
        self,
        graph: Mapping[type[Event], NodeSpec],
        by_name: Mapping[str, NodeSpec],
        *,
        name: str | None,
        keep_completed: timedelta | None,
        retry: RetryPolicy,
        serializer: Serializer,
    ) -> None:
        self._graph = graph
        self._by_name = by_name
        self.name = name
        self.keep_completed = keep_completed
        self.retry = retry
        self.serializer = serializer

    # -- claiming ---------------------------------------------------------------------------

    def expire_due(self, limit: int | None) -> Steps[int]:
        """Resume each of this workflow's runs whose question is past its deadline with the
        question's default; how many were resumed.

        Each is claimed at the version it was listed with, so of several processes
        expiring at once exactly one resumes a run; the others skip it (ConflictError). A
        run that cannot be resumed (damaged, a node this workflow lacks) is skipped with
        a warning, so one bad record never holds up the others; a run whose node fails
        was resumed, and is saved as failed as any resume would leave it.
        """
        due: list[StoredSnapshotInfo] = yield Store(
            "list",
            (),
            {
                "workflow_name": self.name,
                "status": "interrupted",
                "deadline_before": utc_now(),
                "limit": limit,
            },
        )
        resumed = 0
        for info in due:
            try:
                yield from self.resume(
                    info.workflow_id,
                    None,
                    expected_version=info.version,
                    take_over=False,
                    via="deadline",
                )
            except (ConflictError, errors.WorkflowNotFoundError):
                continue  # answered, expired by another process, or gone meanwhile
            except WorkflowFailedError as exc:
                _log.warning("expire_due: %s", exc)
            except (errors.CorruptSnapshotError, SerializationError, WorkflowError) as exc:
                _log.warning("expire_due skipped run %r: %s", info.workflow_id, exc)
                continue
            resumed += 1
        return resumed

    def start(self, snapshot: WorkflowSnapshot) -> Steps[RunResult]:
        """Claim a new run (its record must not exist yet), then run it."""
        try:
            snapshot.version = yield save(snapshot, 0)
        except ConflictError as exc:
            raise ConflictError(
                f"a run with id {snapshot.workflow_id!r} is already stored (waiting, failed,"
                " running, or completed and kept); resume it, or start under another id",
                workflow_id=snapshot.workflow_id,
                expected_version=0,
            ) from exc
        return (yield from self._drive(self._claimed(snapshot)))

    def resume(
        self,
        workflow_id: str,
        answer: Any,
        *,
        expected_version: int | None,
        take_over: bool | timedelta,
        answered_by: str | None = None,
        via: str = "resume",
    ) -> Steps[RunResult]:
        """Check the stored run can take ``answer``, claim it, then run it.

        ``via`` is recorded as how the answer came (``"resume"``, or ``"deadline"``
        from expire_due), ``answered_by`` as who gave it.
        """
        snapshot: WorkflowSnapshot = yield Store("load", (workflow_id,), {})
        _refuse_completed(snapshot)
        _check_resumable(snapshot)
        telemetry.resumed(snapshot)
        loaded_version, stored_status = snapshot.version, snapshot.status
        if expected_version is not None and loaded_version != expected_version:
            raise ConflictError(
                f"run {workflow_id!r} has moved on: it is at version {loaded_version}, not"
                f" {expected_version} (status {stored_status!r}); nothing was done",
                workflow_id=workflow_id,
                expected_version=expected_version,
            )
        self._take_answer(snapshot, answer, take_over, answered_by, via)
        spec = self._node_to_resume(snapshot)
        snapshot.workflow_name = self.name
        snapshot.status = "running"
        snapshot.interrupt = None
        snapshot.error = None
        try:
            snapshot.version = yield save(snapshot, loaded_version)
        except ConflictError as exc:
            raise ConflictError(
                f"run {workflow_id!r} was claimed by another resume at the same moment;"
                " this one did nothing",
                workflow_id=workflow_id,
                expected_version=loaded_version,
            ) from exc
        except SerializationError as exc:  # the answer: the claim wrote nothing
            raise SerializationError(
                f"run {workflow_id!r} was not resumed and is stored as it was"
                f" ({stored_status}): {exc}",
                path=exc.path,
            ) from exc
        return (yield from self._drive(self._claimed(snapshot, spec)))

    def _take_answer(
        self,
        snapshot: WorkflowSnapshot,
        answer: Any,
        take_over: bool | timedelta,
        answered_by: str | None,
        via: str,
    ) -> None:
        """Check the run can take ``answer`` (or none) and record it."""
        workflow_id = snapshot.workflow_id
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
            if via == "deadline":
                answer = _due_default(snapshot, pending)
            if pending.answer_schema is not None:
                answer = _fitting(snapshot, pending.answer_schema, answer)
            pending.answer = answer
            pending.answered_at = utc_now()
            pending.answered_by = answered_by
            pending.answered_via = via
        elif answer is not None:  # failed
            raise WorkflowError(
                f"run {workflow_id!r} failed at node {snapshot.current_node!r}; resume"
                " it without an answer to retry that node"
            )

    def _node_to_resume(self, snapshot: WorkflowSnapshot) -> NodeSpec:
        spec = self._by_name.get(snapshot.current_node)  # type: ignore[arg-type]
        if spec is None:
            raise WorkflowDefinitionError(
                f"run {snapshot.workflow_id!r} is at node {snapshot.current_node!r}, which"
                f" this workflow does not have (its nodes: {', '.join(self._by_name)});"
                " resume it with a workflow that has that node. The run is stored as it was"
            )
        if not isinstance(snapshot.event, spec.handles):
            raise WorkflowError(
                f"run {snapshot.workflow_id!r} holds a {type(snapshot.event).__name__} for"
                f" node {spec.name!r}, which handles {spec.handles.__qualname__}"
            )
        return spec

    def _check_take_over(self, snapshot: WorkflowSnapshot, take_over: bool | timedelta) -> None:
        since = snapshot.updated_at
        quiet_for = max(utc_now() - since, timedelta(0))
        if take_over is True or (isinstance(take_over, timedelta) and quiet_for >= take_over):
            return
        head = (
            f"run {snapshot.workflow_id!r} is marked running by another caller and was last"
            f" saved {_rounded(quiet_for)} ago (at {since.isoformat()}); nothing was done."
        )
        raise ConflictError(
            f"{head} {_take_over_advice(quiet_for, take_over)}",
            workflow_id=snapshot.workflow_id,
            expected_version=snapshot.version,
            running_since=since,
        )

    def _claimed(self, snapshot: WorkflowSnapshot, spec: NodeSpec | None = None) -> _Claim:
        state = WorkflowState(
            snapshot.state, workflow_id=snapshot.workflow_id, metadata=snapshot.metadata
        )
        spec = spec or self._by_name[snapshot.current_node]  # type: ignore[index]
        return _Claim(snapshot, spec, snapshot.event, state)  # type: ignore[arg-type]

    # -- running ----------------------------------------------------------------------------

    def _store(self, claim: _Claim, *, settles: bool) -> Steps[None]:
        """Save the claimed run; ``settles``: it is no longer "running" once saved."""
        snapshot = claim.snapshot
        write = save(snapshot, snapshot.version)
        try:
            snapshot.version = yield from _through_outage(write, snapshot)
        except ConflictError as exc:
            claim.held = False
            raise _taken_over(claim.snapshot) from exc
        if settles:
            claim.held = False

    def _drive(self, claim: _Claim) -> Steps[RunResult]:
        """Run the claimed run until it completes or pauses; whatever is raised, the
        stored run is left paused, failed or gone, never "running"."""
        try:
            return (yield from self._advance(claim))
        except GeneratorExit:  # the driver was abandoned: nothing more can be done
            raise
        except BaseException as raised:
            if claim.held:
                yield from self._settle_as_failed(claim, raised)
            raise

    def _advance(self, claim: _Claim) -> Steps[RunResult]:
        """Run nodes from the claimed snapshot until the run completes or pauses.

        After every node the run is saved (the next node, its event and the state it
        will find): a heartbeat for take-over, and where a take-over starts again.
        """
        snapshot = claim.snapshot
        while True:
            self._enter(claim)
            returned = yield from self._run_node(claim)
            if isinstance(returned, RunResult):
                return returned
            snapshot.completed_nodes.append(claim.spec.name)
            if isinstance(returned, StopEvent):
                result = returned.result  # read before the record goes
                yield from self._finish(claim, result)
                return RunResult(snapshot.workflow_id, "completed", dict(claim.state), result)
            yield from self._hand_on(claim, returned)

    def _enter(self, claim: _Claim) -> None:
        """Keep the state and event as the node finds them (the serializer deep-copies)."""
        claim.step = len(claim.snapshot.completed_nodes)
        claim.entry = None
        event = claim.event if getattr(claim.event, "__dataclass_fields__", None) else None
        claim.entry = self.serializer.dumps(
            WorkflowSnapshot(
                claim.snapshot.workflow_id, status="running", state=dict(claim.state), event=event
            )
        )

    def _restore(self, claim: _Claim) -> tuple[WorkflowState, Event]:
        """The state and event as the node found them (an event without fields as it is)."""
        if claim.entry is None:
            raise WorkflowError("the state the node found was never copied")
        kept = self.serializer.loads(claim.entry)
        state = WorkflowState(
            kept.state, workflow_id=kept.workflow_id, metadata=claim.state.metadata
        )
        return state, claim.event if kept.event is None else kept.event

    def _hand_on(self, claim: _Claim, returned: Event) -> Steps[None]:
        """Save the run at the next node: if that cannot be stored, the node failed."""
        snapshot = claim.snapshot
        next_spec = self._graph[type(returned)]
        snapshot.current_node, snapshot.event = next_spec.name, returned
        snapshot.state = dict(claim.state)
        yield from self._store(claim, settles=False)
        claim.spec, claim.event = next_spec, returned

    def _finish(self, claim: _Claim, result: Any) -> Steps[None]:
        """A completed run deletes its record, or is kept, if it still holds the claim."""
        if self.keep_completed is not None:
            yield from self._keep(claim, result, self.keep_completed)
            return
        snapshot = claim.snapshot
        delete = Store("delete", (snapshot.workflow_id,), {"expected_version": snapshot.version})
        try:
            yield from _through_outage(delete, snapshot)
        except ConflictError as exc:
            claim.held = False
            raise _taken_over(snapshot) from exc
        claim.held = False

    def _keep(self, claim: _Claim, result: Any, keep_for: timedelta) -> Steps[None]:
        """Save the run as completed, with its result, until ``keep_for`` from now.

        A result or final state that cannot be stored fails the final node, as a state
        that cannot be stored fails any node: nothing is dropped in silence.
        """
        snapshot = claim.snapshot
        snapshot.status = "completed"
        snapshot.state = dict(claim.state)
        snapshot.current_node = None
        snapshot.event = None
        snapshot.interrupt = None
        snapshot.error = None
        snapshot.result = result
        snapshot.expires_at = _expiry(keep_for)
        yield from self._store(claim, settles=True)

    def _run_node(self, claim: _Claim) -> Steps[RunResult | Event]:
        """Run one node with its retries: its next event, or the run's paused result."""
        spec = claim.spec
        policy = spec.retry or self.retry
        attempts = claim.snapshot.attempts
        answers = [
            d.answer for d in claim.snapshot.history if d.step == claim.step and d.node == spec.name
        ]
        failures = 0
        while True:
            visit = NodeVisit(spec.name, answers)
            attempt = attempts.get(spec.name, 0) + 1
            try:
                returned = yield Call(
                    spec, claim.event, claim.state, visit, attempt, claim.snapshot.workflow_name
                )
            except NodeInterrupted as asked:
                return (yield from self._pause(claim, asked.question))
            except GeneratorExit:
                raise
            except BaseException as exc:  # recorded as failed by _drive, then raised
                attempts[spec.name] = attempts.get(spec.name, 0) + 1
                failures += 1
                # A cancelled node may still run in its worker thread: its visit is not
                # its own to judge any more.
                if not isinstance(exc, asyncio.CancelledError):
                    swallowed = _swallowed_interrupt(spec, visit)
                    if swallowed is not None:
                        raise swallowed from exc
                if policy.retries(exc, failures):
                    yield Sleep(policy.delay(failures))
                    claim.state, claim.event = self._restore(claim)
                    continue
                if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as they are
                    raise
                claim.failure = exc
                raise self._failed(claim, exc) from exc
            attempts[spec.name] = attempts.get(spec.name, 0) + 1
            problem = _swallowed_interrupt(spec, visit) or self._returned_problem(spec, returned)
            if problem is not None:
                raise problem
            return returned  # type: ignore[no-any-return]

    @staticmethod
    def _failed(claim: _Claim, exc: Exception) -> WorkflowFailedError:
        name, workflow_id = claim.spec.name, claim.snapshot.workflow_id
        attempts = claim.snapshot.attempts.get(name, 0)
        return WorkflowFailedError(
            f"node {name!r} of run {workflow_id!r} failed ({type(exc).__name__}:"
            f" {clip(exception_text(exc), 500)}); the run was saved as failed after"
            f" {attempts} attempt{'s' if attempts != 1 else ''}, resume it to retry",
            workflow_id=workflow_id,
            node=name,
        )

    def _returned_problem(self, spec: NodeSpec, returned: object) -> WorkflowDefinitionError | None:
        if not isinstance(returned, Event):
            return _not_an_event(spec, returned)
        if not isinstance(returned, StopEvent) and type(returned) not in self._graph:
            return WorkflowDefinitionError(
                f"node {spec.name!r} returned {type(returned).__qualname__}, which no node handles"
            )
        return None

    def _pause(self, claim: _Claim, question: Question) -> Steps[RunResult]:
        """Save the run as interrupted, with the state and event as the node found them.

        A payload that cannot be stored raises here; the run is then saved as failed at
        this node, with the question left out of its history.
        """
        state, event = self._restore(claim)
        payload = question.payload
        asked_at = utc_now()
        snapshot = claim.snapshot
        snapshot.status = "interrupted"
        snapshot.state = dict(state)
        snapshot.current_node = claim.spec.name
        snapshot.event = event
        snapshot.interrupt = payload
        snapshot.history.append(
            Decision(
                claim.spec.name,
                payload,
                asked_at=asked_at,
                step=claim.step,
                answer_schema=question.answer_schema,
                deadline=None if question.timeout is None else _later(asked_at, question.timeout),
                default=question.default,
                trace_context=telemetry.trace_context(),
            )
        )
        yield from self._store(claim, settles=True)
        return RunResult(
            snapshot.workflow_id,
            "interrupted",
            dict(state),
            interrupt=payload,
            version=snapshot.version,
        )

    # -- failing ----------------------------------------------------------------------------

    def _settle_as_failed(self, claim: _Claim, raised: BaseException) -> Steps[None]:
        """Save the claimed run as failed at its node, so it is never left "running".

        ``raised`` still propagates afterwards. If the failure cannot be saved, that error
        propagates instead, except over KeyboardInterrupt, SystemExit and cancellation,
        which still stop what they stop (with a note), and over a storage failure whose
        own write may have landed (then the record moved on, and the storage error is the
        news).
        """
        try:
            yield from self._save_failure(claim, claim.failure or raised)
        except GeneratorExit:
            raise
        except BaseException as problem:
            if not isinstance(raised, Exception):
                raised.add_note(
                    f"the run could not be saved as failed ({type(problem).__name__}:"
                    f" {clip(exception_text(problem), 500)})"
                )
                return
            lost = isinstance(raised, errors.StorageUnavailableError)
            if isinstance(problem, ConflictError) and lost:
                return
            raise

    def _save_failure(self, claim: _Claim, exc: BaseException) -> Steps[None]:
        """Save a "failed" snapshot at the claim's node, with the best state there is."""
        snapshot = claim.snapshot
        snapshot.status = "failed"
        snapshot.current_node = claim.spec.name
        snapshot.interrupt = None
        snapshot.result = None  # of a completion that could not be kept
        snapshot.expires_at = None
        del snapshot.completed_nodes[claim.step :]
        while snapshot.history and snapshot.history[-1].answered_at is None:
            snapshot.history.pop()  # a question that was never stored as asked
        error = ErrorInfo.from_exception(claim.spec.name, exc)
        problem: Exception | None = None
        for state, event, note in self._failure_contents(claim):
            snapshot.state, snapshot.event = state, event
            snapshot.error = replace(error, message=error.message + note) if note else error
            try:
                yield from self._store(claim, settles=True)
            except (ConflictError, errors.StorageUnavailableError):
                raise
            except Exception as exc_of_save:
                problem = exc_of_save
                continue
            return
        assert problem is not None
        raise problem

    def _failure_contents(self, claim: _Claim) -> Iterator[tuple[dict[str, Any], Any, str]]:
        """What a failed snapshot can hold, best first, with a note for the error message.

        The state and event as the node found them, so a retry starts where the node
        did; if those cannot be rebuilt or stored, as the node left them; failing that,
        none (the run can then only be inspected and deleted, and the error says so).
        """
        try:
            state, event = self._restore(claim)
        except Exception as exc:
            lost = (
                "the state and event as the node found them could not be rebuilt"
                f" ({type(exc).__name__}: {clip(exception_text(exc), 500)})"
            )
        else:
            yield dict(state), event, ""
            lost = "the state and event as the node found them could not be stored"
        yield dict(claim.state), claim.event, f" [{lost}; saved as the node left them]"
        yield {}, None, f" [{lost}, nor as the node left them; they were dropped]"


_DAMAGE_HINT = "; nothing was done. Restore the record from a backup, or delete it"


def _expiry(keep_for: timedelta) -> datetime:
    """When a run completed now and kept for ``keep_for`` expires (at the latest 9999)."""
    return _later(utc_now(), keep_for)


def _later(start: datetime, delay: timedelta) -> datetime:
    """``start + delay``, at the latest the end of 9999 (every database reaches it)."""
    try:
        return min(start + delay, _LAST_EXPIRY)
    except OverflowError:
        return _LAST_EXPIRY


def _refuse_completed(snapshot: WorkflowSnapshot) -> None:
    """A kept completed run has nothing left to run: say so, and when it completed."""
    if snapshot.status != "completed":
        return
    kept = snapshot.expires_at
    until = f"kept until {kept.isoformat()}" if isinstance(kept, datetime) else "kept"
    raise ConflictError(
        f"run {snapshot.workflow_id!r} completed at {snapshot.updated_at.isoformat()} and"
        f" is {until}; there is nothing to resume. load() it to read its result, or start"
        " a new run under another id",
        workflow_id=snapshot.workflow_id,
        expected_version=snapshot.version,
    )


def _fitting(snapshot: WorkflowSnapshot, schema: dict[str, Any], answer: Any) -> Any:
    """``answer`` as plain JSON, if it fits the question's schema; else InvalidAnswerError."""
    plain = plain_answer(answer)
    try:
        check_answer(schema, plain)
    except InvalidAnswerError as exc:
        raise InvalidAnswerError(
            f"run {snapshot.workflow_id!r} was not resumed: the answer does not fit the"
            f" question's answer_schema ({exc}); it is stored as it was, at version"
            f" {snapshot.version}. Answer again with a value that fits",
            field=exc.field,
            workflow_id=snapshot.workflow_id,
        ) from exc
    return plain


def _due_default(snapshot: WorkflowSnapshot, pending: Decision) -> Any:
    """The default answer of a question whose deadline has passed; else ConflictError."""
    deadline = pending.deadline
    if not isinstance(deadline, datetime) or deadline > utc_now():
        raise ConflictError(
            f"run {snapshot.workflow_id!r} has no question past its deadline; nothing was"
            " done",
            workflow_id=snapshot.workflow_id,
            expected_version=snapshot.version,
        )
    return pending.default


def _check_resumable(snapshot: WorkflowSnapshot) -> None:
    """Refuse a loaded snapshot whose fields have the wrong types, before any claim.

    A serializer other than the default (or a damaged record) may hand back anything;
    resuming it would fail half-way through, with the run claimed.
    """
    problem = _damage(snapshot)
    if problem is not None:
        raise errors.CorruptSnapshotError(
            f"run {snapshot.workflow_id!r} cannot be resumed: its stored snapshot is damaged"
            f" ({problem}){_DAMAGE_HINT}"
        )


def _damage(s: WorkflowSnapshot) -> str | None:
    """What is wrong with the snapshot's fields, or None."""
    if (  # the common case, quickly: it runs on every resume
        s.status in _STATUSES
        and isinstance(s.state, dict)
        and isinstance(s.metadata, dict)
        and isinstance(s.current_node, str)
        and isinstance(s.event, Event)
        and _is_names(s.completed_nodes)
        and _is_attempts(s.attempts)
        and _is_history(s.history)
        and (s.error is None or isinstance(s.error, ErrorInfo))
        and (s.expires_at is None or isinstance(s.expires_at, datetime))
    ):
        return None
    checks: tuple[tuple[str, object, bool, str], ...] = (
        ("status", s.status, s.status in _STATUSES, "'interrupted', 'failed' or 'running'"),
        ("state", s.state, isinstance(s.state, dict), "a dict"),
        ("metadata", s.metadata, isinstance(s.metadata, dict), "a dict"),
        ("current_node", s.current_node, isinstance(s.current_node, str), "a node name"),
        ("event", s.event, isinstance(s.event, Event), "an Event"),
        ("completed_nodes", s.completed_nodes, _is_names(s.completed_nodes), "a list of names"),
        ("attempts", s.attempts, _is_attempts(s.attempts), "a dict of names to counts"),
        ("history", s.history, _is_history(s.history), "a list of Decision"),
        ("error", s.error, s.error is None or isinstance(s.error, ErrorInfo), "an ErrorInfo"),
        ("expires_at", s.expires_at, False, "a datetime"),
    )
    for name, value, good, wanted in checks:
        if not good:
            shown = repr(value[:60]) if type(value) is str else f"of type {type(value).__name__}"
            return f"{name} is {shown}, not {wanted}"
    return None  # unreachable: one of the checks above failed


#: How long a claimed run's write is tried again through an outage (a failover takes
#: well under a second): the node's work is done, and a write given up on would leave the
#: run failed or running at that node, to be run again.
OUTAGE_SECONDS = 5.0


def _through_outage(op: Store, snapshot: WorkflowSnapshot) -> Steps[Any]:
    """Make ``op``, a claimed run's save or completing delete, through a short outage.

    A write whose connection broke may have landed: a conflict on a later try is checked
    against what is stored. Any other error on a later try (a caller's transaction that
    the outage ended, say) gives way to the first outage error, which is the news.
    """
    first: errors.StorageUnavailableError | None = None
    delay, given_up_at = 0.05, 0.0
    while True:
        try:
            return (yield op)
        except errors.StorageUnavailableError as exc:
            if first is None:
                first, given_up_at = exc, time.monotonic() + OUTAGE_SECONDS
            if time.monotonic() + delay > given_up_at:
                raise
        except ConflictError:
            if first is None:
                raise
            landed = yield from _landed(op, snapshot)
            if landed is None:
                raise
            return landed
        except Exception:
            if first is None:
                raise
            raise first from None
        yield Sleep(delay)
        delay = min(delay * 2, 1.0)


def _landed(op: Store, snapshot: WorkflowSnapshot) -> Steps[Any]:
    """What ``op`` returned, if an earlier try of it landed before its connection broke;
    None if the stored record shows another writer's hand."""
    try:
        stored: WorkflowSnapshot = yield Store("load", (snapshot.workflow_id,), {})
    except errors.WorkflowNotFoundError:
        return True if op.method == "delete" else None
    if op.method == "delete":
        return None
    expected = op.options["expected_version"]
    ours = (stored.status, stored.current_node) == (snapshot.status, snapshot.current_node)
    return expected + 1 if ours and stored.version == expected + 1 else None


#: What a run may be resumed from (a tuple: ``in`` compares, never hashes); a kept
#: "completed" run is refused before these checks.
_STATUSES = tuple(sorted(SNAPSHOT_STATUSES - {"completed"}))


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(type(item) is str for item in value)


def _is_attempts(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    for name, count in value.items():
        if type(name) is not str or type(count) is not int or count < 0:
            return False
    return True


def _is_history(value: object) -> bool:
    if not isinstance(value, list):
        return False
    for d in value:
        if not isinstance(d, Decision) or type(d.node) is not str or type(d.step) is not int:
            return False
    return True


def _taken_over(snapshot: WorkflowSnapshot) -> ConflictError:
    return ConflictError(
        f"run {snapshot.workflow_id!r} was taken over by another caller while this one"
        " ran it; this one stopped and left the stored run alone",
        workflow_id=snapshot.workflow_id,
        expected_version=snapshot.version,
    )


def _take_over_advice(quiet_for: timedelta, take_over: bool | timedelta) -> str:
    """What to do about a run another caller holds, given how long it has been quiet."""
    if isinstance(take_over, timedelta):
        return (
            f"take_over={_rounded(take_over)} takes it over only once nothing has been saved"
            " for that long: wait, and resume again later"
        )
    if quiet_for < RECENTLY_SAVED:
        return (
            "A running run is saved after every node, so its caller is most likely still"
            " running it: wait for it to pause or finish. Taking it over now would run its"
            " node a second time. If its caller may have died, resume with"
            " take_over=timedelta(minutes=10) (or longer than your slowest node): it is"
            " taken over only once nothing has been saved for that long"
        )
    return (
        "A running run is saved after every node, so its caller has probably died (or its"
        " node is slow). Resume with take_over=timedelta(...) longer than your slowest node"
        " to take it over only if still nothing is saved for that long, or with"
        " take_over=True once you know its caller is gone; the node that was running runs"
        " again"
    )


def _not_an_event(spec: NodeSpec, returned: object) -> WorkflowDefinitionError:
    if inspect.isawaitable(returned):
        if inspect.iscoroutine(returned):
            returned.close()  # never to be awaited: no "never awaited" warning either
        return WorkflowDefinitionError(
            f"node {spec.name!r} returned {type(returned).__name__}, not an Event: it is"
            " asynchronous but does not say so (a sync wrapper around an async"
            " function?); define it with async def, or mark it with"
            " inspect.markcoroutinefunction, and run the workflow with astart/aresume"
        )
    return WorkflowDefinitionError(
        f"node {spec.name!r} returned {type(returned).__name__}, not an Event;"
        " return the next event, or StopEvent(result=...) to end the run"
    )


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
