"""The workflow runtime (the README's runtime section), on every backend."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_persistence import (
    ConflictError,
    Decision,
    Event,
    InMemoryPersistence,
    JsonSerializer,
    Persistence,
    RetryPolicy,
    RunResult,
    SerializationError,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)

from . import flows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(persistence_factory: Callable[..., Persistence]) -> Persistence:
    return persistence_factory(JsonSerializer())


def _pythonpath() -> str:
    """The repository (for ``tests.flows``), then the caller's path: the code under test."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": _pythonpath(), **env},
        check=False,
    )


# -- the README example ------------------------------------------------------------------------


def test_api_example(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    run = workflow.start({"amount": 30}, workflow_id="refund-42", metadata={"user": "ana"})
    assert run.status == "interrupted" and run.interrupt["question"] == "Approve?"
    assert run.interrupt["draft"] == "Refund 30 EUR"
    run = workflow.resume("refund-42", "yes")
    assert run.status == "completed" and run.result is True
    assert run.state == {"amount": 30, "draft": "Refund 30 EUR", "approved": True}
    assert not store.exists("refund-42")  # a completed run deletes its record


def test_the_saved_snapshot_is_complete(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    workflow.start({"amount": 30}, workflow_id="refund-42", metadata={"user": "ana"})
    snapshot = store.load("refund-42")
    assert snapshot.status == "interrupted"
    assert snapshot.state == {"amount": 30, "draft": "Refund 30 EUR"}
    assert snapshot.current_node == "approve"
    assert snapshot.event == flows.Drafted("Refund 30 EUR")
    assert snapshot.completed_nodes == ["draft"]
    assert snapshot.interrupt == {"question": "Approve?", "draft": "Refund 30 EUR"}
    assert [(d.node, d.payload, d.answer, d.answered_at) for d in snapshot.history] == [
        ("approve", {"question": "Approve?", "draft": "Refund 30 EUR"}, None, None)
    ]
    assert snapshot.history[0].asked_at <= snapshot.updated_at
    assert snapshot.attempts == {"draft": 1}
    assert snapshot.error is None
    assert snapshot.metadata == {"user": "ana"}
    assert snapshot.created_at <= snapshot.updated_at
    assert snapshot.version == 3  # claimed at start (1), saved after draft (2), paused (3)


def test_a_declined_answer_is_recorded_in_history(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    workflow.start({"amount": 5}, workflow_id="w")
    run = workflow.resume("w", "no")
    assert (run.status, run.result) == ("completed", False)


def test_default_ids_are_random_128_bit_hex(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    ids = {workflow.start({"amount": 1}).workflow_id for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_start_never_overwrites_a_stored_run(store: Persistence) -> None:
    workflow = flows.approval_workflow(store)
    workflow.start({"amount": 30}, workflow_id="w")
    with pytest.raises(ConflictError):
        workflow.start({"amount": 999}, workflow_id="w")
    assert store.load("w").state["amount"] == 30


def test_resume_of_an_unknown_id(store: Persistence) -> None:
    with pytest.raises(WorkflowNotFoundError):
        flows.approval_workflow(store).resume("nobody")


# -- interrupts ---------------------------------------------------------------------------------


def test_several_interrupts_in_one_node_are_answered_in_order(store: Persistence) -> None:
    entered: list[str] = []

    def ask_all(event: StartEvent, state: WorkflowState) -> StopEvent:
        entered.append("enter")
        name = interrupt("name?")
        age = interrupt({"ask": "age?", "name": name})
        city = interrupt("city?")
        return StopEvent(result=(name, age, city))

    workflow = Workflow([ask_all], persistence=store)
    run = workflow.start(workflow_id="w")
    assert run.interrupt == "name?"
    run = workflow.resume("w", "Ana")
    assert run.interrupt == {"ask": "age?", "name": "Ana"}
    run = workflow.resume("w", 41)
    assert run.interrupt == "city?"
    history = store.load("w").history
    assert [(d.payload, d.answer) for d in history] == [
        ("name?", "Ana"),
        ({"ask": "age?", "name": "Ana"}, 41),
        ("city?", None),
    ]
    run = workflow.resume("w", "Porto")
    assert (run.status, run.result) == ("completed", ("Ana", 41, "Porto"))
    assert len(entered) == 4  # the node reran from its top after each answer


def test_writes_before_interrupt_happen_once(store: Persistence) -> None:
    def collect(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["items"].append("added before interrupt")
        state["count"] += 1
        interrupt("confirm?")
        interrupt("really?")
        return StopEvent(result=None)

    workflow = Workflow([collect], persistence=store)
    run = workflow.start({"items": [], "count": 0}, workflow_id="w")
    assert run.state == {"items": [], "count": 0}
    assert store.load("w").state == {"items": [], "count": 0}
    workflow.resume("w", True)
    assert store.load("w").state == {"items": [], "count": 0}
    run = workflow.resume("w", True)
    assert run.state == {"items": ["added before interrupt"], "count": 1}


def test_a_loop_repeats_node_names_and_keeps_answers_per_visit(store: Persistence) -> None:
    @dataclass
    class Review(Event):
        round: int

    def begin(event: StartEvent, state: WorkflowState) -> Review:
        return Review(1)

    def review(event: Review, state: WorkflowState) -> Review | StopEvent:
        verdict = interrupt(f"round {event.round}: ok?")
        state.setdefault("verdicts", []).append(verdict)
        if verdict == "again":
            return Review(event.round + 1)
        return StopEvent(result=event.round)

    workflow = Workflow([begin, review], persistence=store, types=[Review])
    workflow.start(workflow_id="w")
    assert workflow.resume("w", "again").interrupt == "round 2: ok?"
    assert workflow.resume("w", "again").interrupt == "round 3: ok?"
    snapshot = store.load("w")
    assert snapshot.completed_nodes == ["begin", "review", "review"]
    run = workflow.resume("w", "fine")
    assert (run.result, run.state["verdicts"]) == (3, ["again", "again", "fine"])


def test_interrupt_outside_a_node_is_an_error() -> None:
    with pytest.raises(WorkflowError, match=r"while a workflow node runs"):
        interrupt("anyone?")


def test_a_node_that_swallows_its_interrupt_is_reported(store: Persistence) -> None:
    def greedy(event: StartEvent, state: WorkflowState) -> StopEvent:
        with contextlib.suppress(BaseException):  # the mistake under test
            interrupt("pause?")
        return StopEvent(result=1)

    with pytest.raises(WorkflowDefinitionError, match="greedy"):
        Workflow([greedy], persistence=store).start(workflow_id="w")


# -- retries and failures -----------------------------------------------------------------------


def test_retry_then_success_counts_every_attempt(store: Persistence) -> None:
    failures_left = [2]

    @RetryPolicy(max_attempts=3)
    def fetch(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["tries"] = state.get("tries", 0) + 1
        if failures_left[0]:
            failures_left[0] -= 1
            raise TimeoutError("slow service")
        return StopEvent(result=state["tries"])

    run = Workflow([fetch], persistence=store).start(workflow_id="w")
    assert run.status == "completed"
    assert run.result == 1  # each attempt began from the state as the node found it


def test_failure_saves_a_failed_snapshot_and_resume_retries(store: Persistence) -> None:
    flaky = flows.Flaky()
    workflow = Workflow([flaky], persistence=store, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(WorkflowFailedError) as caught:
        workflow.start({"writes": 0}, workflow_id="w", metadata={"user": "ana"})
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert (caught.value.workflow_id, caught.value.node) == ("w", "Flaky")
    snapshot = store.load("w")
    assert snapshot.status == "failed"
    assert snapshot.attempts == {"Flaky": 3}
    assert snapshot.state == {"writes": 0}
    assert snapshot.current_node == "Flaky" and snapshot.event == StartEvent()
    error = snapshot.error
    assert error is not None
    assert (error.node, error.type) == ("Flaky", "builtins.ConnectionError")
    assert error.message == "service unavailable (call 3)"
    assert "Traceback" in error.traceback and "ConnectionError" in error.traceback
    flaky.fixed = True
    run = workflow.resume("w")
    assert (run.status, run.result) == ("completed", 1)
    assert flaky.calls == 4
    assert not store.exists("w")


def test_a_failed_run_takes_no_answer(store: Persistence) -> None:
    workflow = Workflow([flows.Flaky()], persistence=store)
    with pytest.raises(WorkflowFailedError):
        workflow.start(workflow_id="w")
    with pytest.raises(WorkflowError, match="without an answer"):
        workflow.resume("w", "yes")
    assert store.load("w").status == "failed"


def test_only_listed_exceptions_are_retried(store: Persistence) -> None:
    calls: list[int] = []

    @RetryPolicy(max_attempts=5, retry_on=(TimeoutError,))
    def strict(event: StartEvent, state: WorkflowState) -> StopEvent:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(WorkflowFailedError):
        Workflow([strict], persistence=store).start(workflow_id="w")
    assert len(calls) == 1


def test_retry_policy_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=0.5, multiplier=3, max_backoff=4)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4, 4]
    assert policy.retries(OSError(), 4) and not policy.retries(OSError(), 5)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_a_node_returning_a_non_event_fails_the_run_naming_it(store: Persistence) -> None:
    def sloppy(event: StartEvent, state: WorkflowState):  # type: ignore[no-untyped-def]
        return "done"

    with pytest.raises(WorkflowDefinitionError, match="sloppy"):
        Workflow([sloppy], persistence=store).start(workflow_id="w")
    snapshot = store.load("w")  # saved as failed, so a fixed deployment can resume it
    assert snapshot.status == "failed" and snapshot.error is not None

    def sloppy_fixed(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result="fixed")

    sloppy_fixed.__name__ = "sloppy"
    assert Workflow([sloppy_fixed], persistence=store).resume("w").result == "fixed"


# -- exactly one resume -------------------------------------------------------------------------


class LoadBarrier(Persistence):
    """The real persistence, but ``load`` waits until every racer has loaded."""

    def __init__(self, inner: Persistence, parties: int) -> None:
        self.inner = inner
        self.serializer = inner.serializer
        self.barrier = threading.Barrier(parties)

    def load(self, workflow_id: str) -> WorkflowSnapshot:
        snapshot = self.inner.load(workflow_id)
        self.barrier.wait(timeout=30)
        return snapshot

    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        return self.inner.save(snapshot, expected_version=expected_version)

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return self.inner.delete(workflow_id, expected_version=expected_version)

    def exists(self, workflow_id: str) -> bool:
        return self.inner.exists(workflow_id)

    def list(self, **kwargs: Any) -> Any:
        return self.inner.list(**kwargs)

    def prune(self, older_than: Any = None, *, status: Any = None) -> int:
        return self.inner.prune(older_than, status=status)


def race_two_resumes(store: Persistence, workflow_id: str) -> tuple[list[Any], int]:
    """Two threads resume one run after both loaded the same version."""
    effects = flows.SideEffects()
    flows.counting_workflow(store, effects, block=False).start(workflow_id=workflow_id)
    racing = flows.counting_workflow(LoadBarrier(store, 2), effects, block=False)
    outcomes: list[Any] = []

    def resume() -> None:
        try:
            outcomes.append(racing.resume(workflow_id, "go"))
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes, effects.count


def test_two_concurrent_resumes_one_wins(store: Persistence) -> None:
    outcomes, side_effects = race_two_resumes(store, "race")
    completed = [o for o in outcomes if isinstance(o, RunResult)]
    conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(completed) == 1 and len(conflicts) == 1, outcomes
    assert completed[0].status == "completed"
    assert side_effects == 1
    assert not store.exists("race")


def test_resuming_a_running_run_says_since_when(store: Persistence) -> None:
    effects = flows.SideEffects()
    workflow = flows.counting_workflow(store, effects, block=True)
    workflow.start(workflow_id="w")
    worker = threading.Thread(target=workflow.resume, args=("w", "go"))
    worker.start()
    assert effects.entered.wait(timeout=30)  # the first resume is inside the node
    try:
        with pytest.raises(ConflictError) as caught:
            workflow.resume("w", "go")
        assert caught.value.running_since == store.load("w").updated_at
        assert "take_over" in str(caught.value)
    finally:
        effects.release.set()
        worker.join(timeout=30)
    assert effects.count == 1


# -- across processes -------------------------------------------------------------------------


def _persistence_code(backend: str, store: Persistence) -> str:
    if backend == "file":
        directory = str(store.directory)  # type: ignore[attr-defined]
        return f"FilePersistence({directory!r})"
    return f"DatabasePersistence({flows.url_of(store)!r}, create_table=False)"


SHARED_BACKENDS = pytest.mark.parametrize("backend", ["file", "sqlite", "postgresql", "mariadb"])


@pytest.fixture
def shared_store(store: Persistence) -> Persistence:
    """A backend other processes can open too (all but memory)."""
    return store


@SHARED_BACKENDS
def test_start_in_one_process_resume_in_another(backend: str, shared_store: Persistence) -> None:
    make = _persistence_code(backend, shared_store)
    header = (
        "from workflow_persistence import FilePersistence, DatabasePersistence\n"
        "from tests import flows\n"
        f"wf = flows.approval_workflow({make})\n"
    )
    started = _python(header + "r = wf.start({'amount': 30}, workflow_id='refund-42')\n"
                      "print(r.status, r.interrupt['question'])")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "interrupted Approve?"
    resumed = _python(header + "r = wf.resume('refund-42', 'yes')\nprint(r.status, r.result)")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "completed True"
    assert not shared_store.exists("refund-42")


@SHARED_BACKENDS
def test_a_dead_claimant_can_be_taken_over(backend: str, shared_store: Persistence) -> None:
    workflow = flows.hanging_workflow(shared_store)
    workflow.start(workflow_id="w")
    make = _persistence_code(backend, shared_store)
    child = subprocess.Popen(
        [sys.executable, "-c",
         "from workflow_persistence import FilePersistence, DatabasePersistence\n"
         "from tests import flows\n"
         f"flows.hanging_workflow({make}).resume('w', 'from-the-dead')\n"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": _pythonpath(), "WFP_TEST_HANG": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "entered"
    finally:
        child.kill()  # the claimant dies inside the node
        child.wait(timeout=30)
    with pytest.raises(ConflictError) as caught:
        workflow.resume("w")
    assert caught.value.running_since is not None
    with pytest.raises(ConflictError):
        workflow.resume("w", take_over=timedelta(hours=1))  # not stale enough yet
    run = workflow.resume("w", take_over=True)
    assert (run.status, run.result) == ("completed", "from-the-dead")


# -- definitions ----------------------------------------------------------------------------------


@dataclass
class Left(Event):
    pass


@dataclass
class Right(Event):
    pass


class NotADataclass(Event):
    pass


def _start_left(event: StartEvent, state: WorkflowState) -> Left:
    return Left()


def _on_left(event: Left, state: WorkflowState) -> StopEvent:
    return StopEvent()


def _also_left(event: Left, state: WorkflowState) -> StopEvent:
    return StopEvent()


def _no_annotation(event, state):  # type: ignore[no-untyped-def]
    return StopEvent()


def _not_an_event(event: int, state: WorkflowState) -> StopEvent:
    return StopEvent()


def _handles_stop(event: StopEvent, state: WorkflowState) -> StopEvent:
    return StopEvent()


def _plain_class(event: NotADataclass, state: WorkflowState) -> StopEvent:
    return StopEvent()


def _returns_unhandled(event: StartEvent, state: WorkflowState) -> Right:
    return Right()


def _one_argument(event: StartEvent) -> StopEvent:
    return StopEvent()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([_start_left, _on_left, _also_left], "_also_left"),
        ([_on_left], "StartEvent"),
        ([_start_left, _no_annotation], "_no_annotation"),
        ([_start_left, _not_an_event], "_not_an_event"),
        ([_start_left, _on_left, _handles_stop], "_handles_stop"),
        ([_start_left, _on_left, _plain_class], "_plain_class"),
        ([_returns_unhandled], "_returns_unhandled"),
        ([_one_argument], "_one_argument"),
        (["not callable"], "not callable"),
        ([], "at least one node"),
        ([_start_left, _on_left, _on_left], "_on_left"),
    ],
)
def test_bad_graphs_are_refused_at_construction(nodes: list[Any], message: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):
        Workflow(nodes)


def test_string_annotations_and_local_event_classes() -> None:
    @dataclass
    class LocalAsked(Event):
        question: str

    def local_start(event: "StartEvent", state: "WorkflowState") -> "LocalAsked":  # noqa: UP037
        return LocalAsked("why?")

    def local_answer(event: "LocalAsked", state: "WorkflowState") -> "StopEvent":  # noqa: UP037
        return StopEvent(result=interrupt(event.question))

    workflow = Workflow([local_start, local_answer], types=[LocalAsked])
    assert workflow.nodes == ["local_start", "local_answer"]
    run = workflow.start(workflow_id="w")
    assert run.interrupt == "why?"
    assert workflow.resume("w", "because").result == "because"


def test_a_callable_instance_is_a_node_named_by_its_class() -> None:
    class Greeter:
        def __call__(self, event: StartEvent, state: WorkflowState) -> StopEvent:
            return StopEvent(result=f"hello {state['name']}")

    workflow = Workflow([Greeter()])
    assert workflow.nodes == ["Greeter"]
    assert workflow.start({"name": "ana"}).result == "hello ana"


def test_workflow_registers_its_events_with_the_serializer() -> None:
    persistence = InMemoryPersistence()
    flows.approval_workflow(persistence)
    assert persistence.serializer.is_registered(flows.Drafted)  # type: ignore[attr-defined]


def test_persistence_defaults_to_memory() -> None:
    workflow = Workflow([flows.draft, flows.approve])
    assert isinstance(workflow.persistence, InMemoryPersistence)
    workflow.start({"amount": 1}, workflow_id="w")
    assert workflow.resume("w", "yes").result is True


def test_state_knows_its_run() -> None:
    seen: dict[str, Any] = {}

    def look(event: StartEvent, state: WorkflowState) -> StopEvent:
        seen.update(id=state.workflow_id, meta=dict(state.metadata))
        return StopEvent()

    Workflow([look]).start(workflow_id="w", metadata={"tenant": "acme"})
    assert seen == {"id": "w", "meta": {"tenant": "acme"}}


def test_decisions_keep_their_api_shape() -> None:
    decision = Decision("node", {"q": 1}, "yes")
    assert (decision.node, decision.payload, decision.answer) == ("node", {"q": 1}, "yes")
    assert decision.answered_at is None and decision.asked_at.tzinfo is not None


def test_the_demo_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workflow_persistence.cli", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "interrupted" in result.stdout and "completed" in result.stdout
    assert (tmp_path / "workflow_persistence.db").exists()


# -- failures the runtime itself meets -------------------------------------------------------


@dataclass
class Handed(Event):
    pass


def test_unstorable_state_fails_the_node_that_wrote_it(store: Persistence) -> None:
    fixed = [False]

    def writer(event: StartEvent, state: WorkflowState) -> Handed:
        state["callback"] = "ok" if fixed[0] else (lambda: 1)
        return Handed()

    def reader(event: Handed, state: WorkflowState) -> StopEvent:
        return StopEvent(result=state["callback"])

    workflow = Workflow([writer, reader], persistence=store, types=[Handed])
    with pytest.raises(SerializationError) as caught:
        workflow.start(workflow_id="w")
    assert caught.value.path == "state['callback']"
    snapshot = store.load("w")  # not stranded as "running": failed, and resumable
    assert (snapshot.status, snapshot.current_node) == ("failed", "writer")
    assert snapshot.error is not None and "callback" in snapshot.error.message
    fixed[0] = True
    assert workflow.resume("w").result == "ok"


def test_an_unstorable_interrupt_payload_fails_the_node(store: Persistence) -> None:
    def asker(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=interrupt({"reply_to": print}))

    with pytest.raises(SerializationError):
        Workflow([asker], persistence=store).start(workflow_id="w")
    snapshot = store.load("w")
    assert (snapshot.status, snapshot.current_node, snapshot.history) == ("failed", "asker", [])


def test_an_interrupt_caught_and_reraised_fails_the_node(store: Persistence) -> None:
    def clumsy(event: StartEvent, state: WorkflowState) -> StopEvent:
        try:
            interrupt("pause?")
        except BaseException as exc:
            raise ValueError("wrapped") from exc
        return StopEvent()

    with pytest.raises(WorkflowDefinitionError, match="clumsy"):
        Workflow([clumsy], persistence=store).start(workflow_id="w")
    assert store.load("w").status == "failed"


def test_a_running_run_is_saved_after_every_node(store: Persistence) -> None:
    seen: list[tuple[str, str | None, list[str]]] = []

    def first(event: StartEvent, state: WorkflowState) -> Handed:
        state["n"] = 1
        return Handed()

    def second(event: Handed, state: WorkflowState) -> StopEvent:
        stored = store.load(state.workflow_id)
        seen.append((stored.status, stored.current_node, stored.completed_nodes))
        assert stored.state == {"n": 1} and stored.event == Handed()
        return StopEvent()

    Workflow([first, second], persistence=store, types=[Handed]).start(workflow_id="w")
    assert seen == [("running", "second", ["first"])]


def test_an_answer_can_be_bound_to_its_question(store: Persistence) -> None:
    def two_questions(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=(interrupt("first?"), interrupt("second?")))

    workflow = Workflow([two_questions], persistence=store)
    first = workflow.start(workflow_id="w")
    assert first.version is not None
    second = workflow.resume("w", "a", expected_version=first.version)
    assert second.interrupt == "second?"
    # A duplicate of the first answer (a double click) must not answer the second question.
    with pytest.raises(ConflictError, match="moved on"):
        workflow.resume("w", "a", expected_version=first.version)
    assert store.load("w").history[-1].answered_at is None
    assert workflow.resume("w", "b", expected_version=second.version).result == ("a", "b")


def test_a_claimant_that_was_taken_over_does_not_delete_the_run(store: Persistence) -> None:
    effects = flows.SideEffects()
    workflow = flows.counting_workflow(store, effects, block=True)
    workflow.start(workflow_id="w")
    outcome: list[BaseException | RunResult] = []

    def slow_claimant() -> None:
        try:
            outcome.append(workflow.resume("w", "go"))
        except ConflictError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=slow_claimant)
    worker.start()
    assert effects.entered.wait(timeout=30)
    effects.entered.clear()
    # Taken over (as if the claimant were dead); the new claimant pauses the run again.
    quick = flows.counting_workflow(store, effects, block=False)
    assert quick.resume("w", take_over=True).status == "completed"
    quick.start(workflow_id="w")  # a new run under the same id, waiting for an answer
    effects.release.set()
    worker.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError)
    assert store.load("w").status == "interrupted"  # the old claimant left it alone


def test_a_node_without_named_parameters_is_refused() -> None:
    def anything(*args: Any) -> StopEvent:
        return StopEvent()

    with pytest.raises(WorkflowDefinitionError, match="anything"):
        Workflow([anything])


# -- named workflows and kept completed runs --------------------------------------------------


def test_a_named_workflow_stores_its_name_on_every_snapshot(store: Persistence) -> None:
    fail = [True]
    running: list[tuple[str, str | None]] = []

    def check(event: StartEvent, state: WorkflowState) -> Handed:
        if fail[0]:
            raise ValueError("ledger offline")
        return Handed()

    def ask(event: Handed, state: WorkflowState) -> StopEvent:
        stored = store.load(state.workflow_id)
        running.append((stored.status, stored.workflow_name))
        return StopEvent(result=interrupt("Approve?"))

    workflow = Workflow([check, ask], name="refunds", persistence=store, types=[Handed])
    with pytest.raises(WorkflowFailedError):
        workflow.start(workflow_id="w")
    failed = store.load("w")
    assert (failed.status, failed.workflow_name) == ("failed", "refunds")
    fail[0] = False
    assert workflow.resume("w").status == "interrupted"
    assert running == [("running", "refunds")]
    assert store.load("w").workflow_name == "refunds"
    [info] = store.list(workflow_name="refunds")
    assert (info.workflow_id, info.status, info.workflow_name) == ("w", "interrupted", "refunds")
    assert store.list(workflow_name="other") == []
    # A workflow stamps its own name on what it saves: one renamed in a deploy takes over.
    renamed = Workflow([check, ask], name="refunds-v2", persistence=store, types=[Handed])
    assert renamed.resume("w", "yes").result == "yes"
    assert running[-1] == ("running", "refunds-v2")
    assert Workflow([check, ask], persistence=store, types=[Handed]).name is None


@pytest.mark.parametrize("name", ["", "x" * 256, 5, b"refunds", ["refunds"]])
def test_a_bad_workflow_name_is_refused_at_construction(name: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="name"):
        Workflow([flows.draft, flows.approve], name=name)


def test_a_workflow_name_of_255_characters_is_stored(store: Persistence) -> None:
    name = "n" * 254 + "🚀"
    Workflow([flows.draft, flows.approve], name=name, persistence=store).start(
        {"amount": 1}, workflow_id="w"
    )
    assert store.load("w").workflow_name == name
    assert [i.workflow_name for i in store.list()] == [name]


@pytest.mark.parametrize(
    "keep", [timedelta(0), timedelta(seconds=-1), 7, "7d", True, datetime.now(UTC)]
)
def test_a_bad_keep_completed_is_refused_at_construction(keep: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="keep_completed"):
        Workflow([flows.draft, flows.approve], keep_completed=keep)


def kept_approval(store: Persistence, keep: timedelta = timedelta(days=7)) -> Workflow:
    return Workflow(
        [flows.draft, flows.approve], name="refunds", keep_completed=keep, persistence=store
    )


def test_a_kept_completed_run_holds_its_result_and_history(store: Persistence) -> None:
    workflow = kept_approval(store)
    workflow.start({"amount": 30}, workflow_id="refund-42", metadata={"assignee": "maria"})
    before = datetime.now(UTC)
    run = workflow.resume("refund-42", "yes")
    after = datetime.now(UTC)
    assert run == RunResult(
        "refund-42",
        "completed",
        {"amount": 30, "draft": "Refund 30 EUR", "approved": True},
        True,
    )
    kept = store.load("refund-42")
    assert kept.status == "completed" and kept.result is True
    assert (kept.current_node, kept.interrupt, kept.event, kept.error) == (None, None, None, None)
    assert kept.state == run.state and kept.metadata == {"assignee": "maria"}
    assert kept.completed_nodes == ["draft", "approve"]
    assert [(d.node, d.answer) for d in kept.history] == [("approve", "yes")]
    assert kept.history[0].answered_at is not None
    assert kept.workflow_name == "refunds"
    assert kept.expires_at is not None
    assert before + timedelta(days=7) - timedelta(seconds=1) <= kept.expires_at
    assert kept.expires_at <= after + timedelta(days=7) + timedelta(seconds=1)
    assert store.exists("refund-42")
    [info] = store.list(status="completed")
    assert (info.workflow_id, info.workflow_name, info.current_node) == (
        "refund-42", "refunds", None,
    )
    assert info.expires_at == kept.expires_at
    assert store.list(status="interrupted") == []


def test_a_run_completed_without_an_interrupt_is_kept_too(store: Persistence) -> None:
    def total(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=sum(state["items"]))

    run = Workflow([total], keep_completed=timedelta(hours=1), persistence=store).start(
        {"items": [1, 2]}, workflow_id="w"
    )
    assert (run.status, run.result) == ("completed", 3)
    kept = store.load("w")
    assert (kept.status, kept.result, kept.history, kept.workflow_name) == (
        "completed", 3, [], None,
    )


def test_resuming_a_kept_run_says_it_completed_and_when(store: Persistence) -> None:
    workflow = kept_approval(store)
    workflow.start({"amount": 30}, workflow_id="w")
    workflow.resume("w", "yes")
    kept = store.load("w")
    with pytest.raises(ConflictError, match="completed") as caught:
        workflow.resume("w", "no")
    assert kept.updated_at.isoformat() in str(caught.value)
    assert caught.value.workflow_id == "w"
    with pytest.raises(ConflictError, match="completed"):
        workflow.resume("w")  # without an answer either
    with pytest.raises(ConflictError, match="already stored"):
        workflow.start({"amount": 1}, workflow_id="w")
    again = store.load("w")
    assert (again.status, again.version, again.result) == ("completed", kept.version, True)


def test_a_kept_run_that_expired_is_gone(store: Persistence) -> None:
    workflow = kept_approval(store)
    workflow.start({"amount": 30}, workflow_id="w")
    workflow.resume("w", "yes")
    kept = store.load("w")
    kept.expires_at = datetime.now(UTC) - timedelta(seconds=1)  # as if 7 days went by
    store.save(kept)
    assert not store.exists("w")
    with pytest.raises(WorkflowNotFoundError):
        store.load("w")
    with pytest.raises(WorkflowNotFoundError):
        workflow.resume("w", "yes")
    assert store.list() == []
    run = workflow.start({"amount": 5}, workflow_id="w")  # the id is free again
    fresh = workflow.start({"amount": 5}, workflow_id="fresh")
    assert run.status == "interrupted" and run.version == fresh.version  # counted anew


def test_a_very_long_keep_ends_in_the_year_9999(store: Persistence) -> None:
    def done(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result="ok")

    Workflow([done], keep_completed=timedelta.max, persistence=store).start(workflow_id="w")
    assert store.load("w").expires_at == datetime(9999, 12, 31, tzinfo=UTC)


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    """The README's first Python blocks (sync, async, listing), in one fresh process."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)[:3]
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["refund-43 refunds approve Approve?"]
    assert done.stderr == ""  # no warning either (an unclosed connection, say)


def test_list_what_waits_for_a_user(store: Persistence) -> None:
    """The README's second example."""
    workflow = Workflow([flows.draft, flows.approve], name="refunds", persistence=store)
    workflow.start({"amount": 30}, workflow_id="refund-42", metadata={"assignee": "maria"})
    workflow.start({"amount": 70}, workflow_id="refund-43", metadata={"assignee": "ben"})
    workflow.start({"amount": 90}, workflow_id="refund-44", metadata={"assignee": "maria"})
    workflow.resume("refund-44", "no")
    waiting = store.list(status="interrupted", metadata={"assignee": "maria"})
    assert [(i.workflow_id, i.current_node) for i in waiting] == [("refund-42", "approve")]
    assert waiting[0].interrupt == {"question": "Approve?", "draft": "Refund 30 EUR"}
