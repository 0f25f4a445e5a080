"""The runtime never strands a run: after start/resume return or raise, the stored run is
interrupted, failed or gone, never "running"; on every backend."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

import workflow_persistence._runtime.machine as runtime
from workflow_persistence import (
    ConflictError,
    CorruptSnapshotError,
    Event,
    JsonSerializer,
    Persistence,
    RetryPolicy,
    SerializationError,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)
from workflow_persistence._snapshot import utc_now

from . import flows


@pytest.fixture
def store(persistence_factory: Callable[..., Persistence]) -> Persistence:
    return persistence_factory(JsonSerializer())


@contextlib.contextmanager
def reading_with(store: Persistence, serializer: Any) -> Iterator[Persistence]:
    """The same storage read and written through another serializer (in memory too)."""
    kept = store.serializer
    store.serializer = serializer
    try:
        yield store
    finally:
        store.serializer = kept


def load_with_stand_ins(store: Persistence, workflow_id: str = "w") -> WorkflowSnapshot:
    """Read a record holding a class that cannot be rebuilt: stand-ins instead."""
    with reading_with(store, JsonSerializer(unknown_classes="stand-in")):
        return store.load(workflow_id)


def stored_status(store: Persistence, workflow_id: str = "w") -> str | None:
    """The stored run's status, or None when it is gone."""
    return store.load(workflow_id).status if store.exists(workflow_id) else None


# -- exceptions that cannot be rendered -----------------------------------------------------


class UnprintableError(Exception):
    def __str__(self) -> str:
        return b"\xff".decode()  # raises UnicodeDecodeError


class UnprintableAndUnreprError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Fixable:
    """A node that raises ``error`` until fixed; then completes."""

    def __init__(self, error: BaseException) -> None:
        self.error: BaseException | None = error
        self.calls = 0

    def __call__(self, event: StartEvent, state: WorkflowState) -> StopEvent:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return StopEvent(result="fixed")


def test_an_exception_whose_str_raises_saves_the_run_as_failed(store: Persistence) -> None:
    node = Fixable(UnprintableError(b"\xff"))
    workflow = Workflow([node], persistence=store)
    with pytest.raises(WorkflowFailedError) as caught:
        workflow.start(workflow_id="w")
    assert isinstance(caught.value.__cause__, UnprintableError)
    assert "UnprintableError(b'\\xff')" in str(caught.value)
    snapshot = store.load("w")
    assert snapshot.status == "failed"
    assert snapshot.error is not None
    assert snapshot.error.type.endswith(".UnprintableError")
    assert snapshot.error.message == (
        "UnprintableError(b'\\xff') [str() raised UnicodeDecodeError]"
    )
    assert "UnprintableError" in snapshot.error.traceback
    node.error = None
    assert workflow.resume("w").result == "fixed"
    assert stored_status(store) is None


def test_an_exception_whose_str_and_repr_raise(store: Persistence) -> None:
    node = Fixable(UnprintableAndUnreprError())
    workflow = Workflow([node], persistence=store)
    with pytest.raises(WorkflowFailedError, match="UnprintableAndUnreprError"):
        workflow.start(workflow_id="w")
    error = store.load("w").error
    assert error is not None
    assert error.message == (
        "<UnprintableAndUnreprError object: str() raised RuntimeError and repr() raised"
        " RuntimeError>"
    )
    node.error = None
    assert workflow.resume("w").result == "fixed"


def test_an_exception_text_with_lone_surrogates_is_stored_escaped(store: Persistence) -> None:
    # os.fsdecode() of a non-UTF-8 file name gives such text; UTF-8 cannot encode it.
    node = Fixable(FileNotFoundError("missing: report-\udcff.csv"))
    workflow = Workflow([node], persistence=store)
    with pytest.raises(WorkflowFailedError):
        workflow.start(workflow_id="w")
    error = store.load("w").error
    assert error is not None
    assert error.message == "missing: report-\\udcff.csv"
    assert "report-\\udcff.csv" in error.traceback
    node.error = None
    assert workflow.resume("w").result == "fixed"


def test_a_huge_exception_text_is_clipped(store: Persistence) -> None:
    text = "head " + "x" * 2_000_000 + " tail"
    workflow = Workflow([Fixable(ValueError(text))], persistence=store)
    with pytest.raises(WorkflowFailedError):
        workflow.start(workflow_id="w")
    error = store.load("w").error
    assert error is not None
    assert len(error.message) < 4_100 and len(error.traceback) < 41_000
    assert error.message.startswith("head ") and error.message.endswith(" tail")
    assert "characters cut" in error.message


# -- BaseException from a node, or from the runtime's own steps ------------------------------


class Abort(BaseException):
    """A BaseException of the app's own."""


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), Abort("stop")])
def test_a_base_exception_fails_the_node_and_still_propagates(
    store: Persistence, error: BaseException
) -> None:
    node = Fixable(error)
    workflow = Workflow(
        [node], persistence=store, retry=RetryPolicy(max_attempts=3, retry_on=(BaseException,))
    )
    with pytest.raises(type(error)) as caught:
        workflow.start(workflow_id="w")
    assert caught.value is error  # not wrapped: Ctrl-C and exit still stop the program
    snapshot = store.load("w")
    assert snapshot.status == "failed"
    assert snapshot.attempts == {"Fixable": 1}  # never retried
    assert not RetryPolicy(retry_on=(BaseException,)).retries(error, 1)
    assert snapshot.error is not None and snapshot.error.type.endswith(type(error).__qualname__)
    node.error = None
    assert workflow.resume("w").result == "fixed"
    assert node.calls == 2


def test_a_base_exception_after_an_answer_keeps_the_answer(store: Persistence) -> None:
    stop = [True]

    def confirm(event: StartEvent, state: WorkflowState) -> StopEvent:
        answer = interrupt("sure?")
        if stop[0]:
            raise KeyboardInterrupt
        return StopEvent(result=answer)

    workflow = Workflow([confirm], persistence=store)
    workflow.start(workflow_id="w")
    with pytest.raises(KeyboardInterrupt):
        workflow.resume("w", "yes")
    snapshot = store.load("w")
    assert snapshot.status == "failed" and snapshot.history[-1].answer == "yes"
    stop[0] = False
    assert workflow.resume("w").result == "yes"


@dataclass(frozen=True)
class InterruptedBackoff(RetryPolicy):
    """A policy whose delay is cut short, as by Ctrl-C during the runtime's own wait."""

    def delay(self, failures: int) -> float:
        raise KeyboardInterrupt


def test_a_base_exception_in_the_runtime_s_own_step_fails_the_node(store: Persistence) -> None:
    node = Fixable(TimeoutError("slow"))
    workflow = Workflow([node], persistence=store, retry=InterruptedBackoff(max_attempts=3))
    with pytest.raises(KeyboardInterrupt):
        workflow.start(workflow_id="w")
    snapshot = store.load("w")
    assert snapshot.status == "failed" and snapshot.attempts == {"Fixable": 1}
    assert snapshot.error is not None and snapshot.error.type == "builtins.KeyboardInterrupt"
    node.error = None
    assert workflow.resume("w").result == "fixed"


# -- what a node returns, hands on, or leaves in its state -----------------------------------


def test_a_node_returning_a_non_event_is_failed_not_running(store: Persistence) -> None:
    def sloppy(event: StartEvent, state: WorkflowState) -> Any:
        state["touched"] = True
        return {"not": "an event"}

    with pytest.raises(WorkflowDefinitionError, match="returned dict, not an Event"):
        Workflow([sloppy], persistence=store).start({"n": 1}, workflow_id="w")
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.state, snapshot.completed_nodes) == ("failed", {"n": 1}, [])


@dataclass
class Carried(Event):
    items: list[Any] = field(default_factory=list)


def test_an_event_that_cannot_be_stored_fails_the_node_that_returned_it(
    store: Persistence,
) -> None:
    fixed = [False]

    def begin(event: StartEvent, state: WorkflowState) -> Carried:
        return Carried(["start"])

    def pack(event: Carried, state: WorkflowState) -> Carried | StopEvent:
        if event.items[-1] == "packed":
            return StopEvent(result=event.items)
        event.items.append("seen by pack")  # a node may change its own event
        state["packed"] = True
        return Carried(["packed"] if fixed[0] else [lambda: "not storable"])

    workflow = Workflow([begin, pack], persistence=store, types=[Carried])
    with pytest.raises(SerializationError) as caught:
        workflow.start(workflow_id="w")
    assert caught.value.path is not None and caught.value.path.startswith("event")
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.current_node) == ("failed", "pack")
    assert snapshot.completed_nodes == ["begin"]
    # Saved as the node found them: its changes to its event and state are not kept.
    assert snapshot.event == Carried(["start"]) and snapshot.state == {}
    fixed[0] = True
    assert workflow.resume("w").result == ["packed"]


def test_a_node_finds_its_event_as_it_was_on_retry_and_on_resume(store: Persistence) -> None:
    failures = [1]

    def begin(event: StartEvent, state: WorkflowState) -> Carried:
        return Carried([])

    @RetryPolicy(max_attempts=2)
    def collect(event: Carried, state: WorkflowState) -> StopEvent:
        event.items.append("once")
        if failures[0]:
            failures[0] -= 1
            raise TimeoutError("slow")
        return StopEvent(result=(event.items, interrupt("done?")))

    workflow = Workflow([begin, collect], persistence=store, types=[Carried])
    assert workflow.start(workflow_id="w").status == "interrupted"
    assert store.load("w").event == Carried([])
    assert workflow.resume("w", "yes").result == (["once"], "yes")


class Gadget:
    """A registered class taking part through __getstate__/__setstate__."""

    broken = False

    def __init__(self, name: str) -> None:
        self.name = name

    def __getstate__(self) -> dict[str, Any]:
        if Gadget.broken:
            raise RuntimeError("cannot take a gadget apart")
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gadget) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]


class Fragile(Gadget):
    """Stores fine, but cannot be rebuilt while ``rebuild_fails``: a serializer that
    cannot give back what it accepted."""

    rebuild_fails = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        if Fragile.rebuild_fails:
            raise RuntimeError("cannot rebuild a fragile gadget")
        super().__setstate__(state)


@pytest.fixture
def gadgets_fixed() -> Iterator[None]:
    yield
    Gadget.broken = False
    Fragile.rebuild_fails = False


@pytest.mark.usefixtures("gadgets_fixed")
@pytest.mark.parametrize("value", ["lambda", "gadget"])
def test_a_state_value_that_cannot_be_stored_fails_the_node(store: Persistence, value: str) -> None:
    def tool(event: StartEvent, state: WorkflowState) -> Carried:
        if value == "lambda" and not state.get("fixed"):
            state["tool"] = lambda: 1
        else:
            state["tool"] = Gadget("wrench")
            Gadget.broken = not state.get("fixed")
        return Carried()

    def use(event: Carried, state: WorkflowState) -> StopEvent:
        return StopEvent(result=state["tool"].name)

    workflow = Workflow([tool, use], persistence=store, types=[Carried, Gadget])
    with pytest.raises(SerializationError) as caught:
        workflow.start({"fixed": False}, workflow_id="w")
    assert caught.value.path == "state['tool']"
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.current_node, snapshot.state) == (
        "failed", "tool", {"fixed": False}
    )
    stored = snapshot.state
    stored["fixed"] = True
    store.save(snapshot)  # an operator fixes the state; then the run goes on
    assert workflow.resume("w").result == "wrench"


@pytest.mark.usefixtures("gadgets_fixed")
def test_a_state_that_cannot_be_rebuilt_is_saved_as_the_node_left_it(store: Persistence) -> None:
    def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["asked"] = True
        return StopEvent(result=interrupt("ok?"))

    workflow = Workflow([ask], persistence=store, types=[Fragile])
    Fragile.rebuild_fails = True
    with pytest.raises(CorruptSnapshotError):
        workflow.start({"part": Fragile("gear")}, workflow_id="w")
    snapshot = load_with_stand_ins(store)  # the record holds a Fragile
    assert (snapshot.status, snapshot.current_node) == ("failed", "ask")
    assert snapshot.state["asked"] is True  # as the node left it: the one it found is lost
    assert snapshot.error is not None and "could not be rebuilt" in snapshot.error.message
    Fragile.rebuild_fails = False
    assert workflow.resume("w").interrupt == "ok?"
    assert workflow.resume("w", "yes").result == "yes"


@pytest.mark.usefixtures("gadgets_fixed")
def test_a_state_neither_rebuilt_nor_stored_is_dropped_and_said_so(store: Persistence) -> None:
    def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["hook"] = lambda: 1
        return StopEvent(result=interrupt("ok?"))

    Fragile.rebuild_fails = True
    with pytest.raises(CorruptSnapshotError):
        Workflow([ask], persistence=store, types=[Fragile]).start(
            {"part": Fragile("gear")}, workflow_id="w"
        )
    snapshot = store.load("w")  # still not "running": failed, and what was lost is named
    assert (snapshot.status, snapshot.state, snapshot.event) == ("failed", {}, None)
    assert snapshot.error is not None
    assert "could not be rebuilt" in snapshot.error.message
    assert "they were dropped" in snapshot.error.message


def test_an_interrupt_payload_that_cannot_be_stored_leaves_no_question(
    store: Persistence,
) -> None:
    def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        first = interrupt("first?")
        return StopEvent(result=(first, interrupt({"reply_to": print})))

    workflow = Workflow([ask], persistence=store)
    workflow.start(workflow_id="w")
    with pytest.raises(SerializationError):
        workflow.resume("w", "a")
    snapshot = store.load("w")
    assert snapshot.status == "failed"
    assert [(d.payload, d.answer) for d in snapshot.history] == [("first?", "a")]


def test_a_result_that_cannot_be_stored_still_completes(store: Persistence) -> None:
    def finish(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=print)  # the result is handed back, not stored

    run = Workflow([finish], persistence=store).start(workflow_id="w")
    assert (run.status, run.result) == ("completed", print)
    assert stored_status(store) is None


def test_a_result_that_cannot_be_kept_fails_the_final_node(store: Persistence) -> None:
    fixed = [False]

    def finish(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["finished"] = True
        return StopEvent(result="receipt" if fixed[0] else print)

    workflow = Workflow([finish], keep_completed=timedelta(days=1), persistence=store)
    with pytest.raises(SerializationError) as caught:
        workflow.start({"n": 1}, workflow_id="w")
    assert caught.value.path is not None and "result" in caught.value.path
    snapshot = store.load("w")  # never dropped in silence: the final node failed
    assert (snapshot.status, snapshot.current_node) == ("failed", "finish")
    assert (snapshot.result, snapshot.expires_at, snapshot.state) == (None, None, {"n": 1})
    assert snapshot.completed_nodes == []
    fixed[0] = True
    assert workflow.resume("w").result == "receipt"
    kept = store.load("w")
    assert (kept.status, kept.result, kept.error) == ("completed", "receipt", None)


def test_a_kept_run_taken_over_is_left_to_its_new_claimant(store: Persistence) -> None:
    entered, release = threading.Event(), threading.Event()
    blocking = [True]

    def act(event: StartEvent, state: WorkflowState) -> StopEvent:
        answer = interrupt("go?")
        if blocking[0]:  # the first claimant is held here until the take-over is done
            entered.set()
            release.wait(timeout=30)
        return StopEvent(result=f"{answer} by {'first' if blocking[0] else 'second'}")

    workflow = Workflow([act], keep_completed=timedelta(days=1), persistence=store)
    workflow.start(workflow_id="w")
    outcome: list[BaseException | object] = []

    def claimant() -> None:
        try:
            outcome.append(workflow.resume("w", "yes"))
        except ConflictError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=claimant)
    worker.start()
    assert entered.wait(timeout=30)
    blocking[0] = False
    assert workflow.resume("w", take_over=True).result == "yes by second"
    release.set()
    worker.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError)
    kept = store.load("w")  # the first claimant neither kept its result nor failed the run
    assert (kept.status, kept.result) == ("completed", "yes by second")


# -- what is checked before the claim: the stored run stays as it was -----------------------


def test_an_answer_that_cannot_be_stored_leaves_the_question_open(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    workflow.start({"amount": 30}, workflow_id="w")
    before = store.load("w")
    with pytest.raises(SerializationError, match="was not resumed") as caught:
        workflow.resume("w", lambda: "yes")
    assert caught.value.path == "history[0].answer"
    after = store.load("w")
    assert (after.status, after.version) == ("interrupted", before.version)
    assert after.history[-1].answered_at is None
    assert workflow.resume("w", "yes").result is True


def test_a_run_at_a_node_the_workflow_lost_is_left_as_it_was(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    workflow.start({"amount": 30}, workflow_id="w")
    version = store.load("w").version

    def review(event: flows.Drafted, state: WorkflowState) -> StopEvent:
        return StopEvent(result=interrupt("Review?"))

    renamed = Workflow([flows.draft, review], persistence=store)  # "approve" was renamed
    with pytest.raises(WorkflowDefinitionError, match=r"'approve'.*has that node"):
        renamed.resume("w", "yes")
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.version) == ("interrupted", version)
    assert workflow.resume("w", "yes").result is True  # once the node is back


class Tampering:
    """The default serializer, but ``loads`` damages fields of what it returns, as a
    damaged record or a custom serializer may."""

    def __init__(self, **damage: Any) -> None:
        self.inner = JsonSerializer()
        self.damage = damage

    def register(self, *types: type) -> None:
        self.inner.register(*types)

    def dumps(self, snapshot: WorkflowSnapshot) -> bytes:
        return self.inner.dumps(snapshot)

    def loads(self, data: bytes) -> WorkflowSnapshot:
        snapshot = self.inner.loads(data)
        for name, value in self.damage.items():
            setattr(snapshot, name, value)
        return snapshot


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ({"completed_nodes": 5}, "completed_nodes is of type int"),
        ({"completed_nodes": ["draft", 3]}, "completed_nodes is of type list"),
        ({"attempts": [1]}, "attempts is of type list"),
        ({"attempts": {"draft": "1"}}, "attempts"),
        ({"history": [{"node": "approve"}]}, "history"),
        ({"current_node": 7}, "current_node is of type int"),
        ({"state": ["a"]}, "state is of type list"),
        ({"metadata": "user"}, "metadata is 'user'"),
        ({"event": {"text": "hi"}}, "event is of type dict"),
        ({"error": "boom"}, "error is 'boom'"),
        ({"status": ["failed"]}, "status is of type list"),
        ({"expires_at": "tomorrow"}, "expires_at is 'tomorrow'"),
    ],
)
def test_a_snapshot_with_fields_of_the_wrong_type_is_refused_before_the_claim(
    store: Persistence, damage: dict[str, Any], named: str
) -> None:
    flows.approval_workflow(store).start({"amount": 30}, workflow_id="w")
    version = store.load("w").version
    with (
        reading_with(store, Tampering(**damage)) as damaged,
        pytest.raises(CorruptSnapshotError, match="cannot be resumed") as caught,
    ):
        flows.approval_workflow(damaged).resume("w", "yes")
    assert named in str(caught.value)
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.version) == ("interrupted", version)


# -- advice when another caller holds the run ----------------------------------------------


def _held_run(store: Persistence) -> tuple[Workflow, flows.SideEffects, threading.Thread]:
    effects = flows.SideEffects()
    workflow = flows.counting_workflow(store, effects, block=True)
    workflow.start(workflow_id="w")
    worker = threading.Thread(target=workflow.resume, args=("w", "go"))
    worker.start()
    assert effects.entered.wait(timeout=30)  # the first resume is inside the node
    return workflow, effects, worker


def test_a_run_saved_seconds_ago_is_not_to_be_taken_over(store: Persistence) -> None:
    workflow, effects, worker = _held_run(store)
    try:
        with pytest.raises(ConflictError) as caught:
            workflow.resume("w")
        with pytest.raises(ConflictError) as not_yet:
            workflow.resume("w", take_over=timedelta(minutes=10))
    finally:
        effects.release.set()
        worker.join(timeout=30)
    message = str(caught.value)
    assert "most likely still running it: wait" in message
    assert "take_over=True" not in message  # a live claimant is not to be taken over
    assert "take_over=timedelta(minutes=10)" in message
    assert "API.md" not in message
    assert "take_over=10m takes it over only once nothing has been saved" in str(not_yet.value)
    assert effects.count == 1


def test_a_run_quiet_for_long_may_be_taken_over(
    store: Persistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow = flows.hanging_workflow(store)
    workflow.start(workflow_id="w")
    snapshot = store.load("w")  # as a claimant that died inside the node left it:
    snapshot.status, snapshot.interrupt = "running", None
    snapshot.history[-1].answer, snapshot.history[-1].answered_at = "go", utc_now()
    store.save(snapshot)
    later = utc_now() + timedelta(hours=3)
    monkeypatch.setattr(runtime, "utc_now", lambda: later)
    with pytest.raises(ConflictError) as caught:
        workflow.resume("w")
    message = str(caught.value)
    assert "last saved 3h ago" in message and "probably died" in message
    assert "take_over=timedelta(" in message and "take_over=True" in message
    assert caught.value.running_since == store.load("w").updated_at
    monkeypatch.undo()
    assert workflow.resume("w", take_over=timedelta(seconds=0)).result == "go"
