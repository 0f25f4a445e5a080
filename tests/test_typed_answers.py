"""interrupt(answer=T): the schema stored with the question, answers checked before the
claim, the node getting a T back; answered_by and answered_via in the history."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import pydantic
import pytest

from workflow_persistence import (
    AsyncInMemoryPersistence,
    Decision,
    InMemoryPersistence,
    InvalidAnswerError,
    JsonSerializer,
    Persistence,
    StartEvent,
    StopEvent,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)
from workflow_persistence import Workflow as _Workflow
from workflow_persistence._runtime.answers import check_answer, schema_of


@dataclass
class Line:
    sku: str
    qty: int = 1


@dataclass
class Approval:
    approved: bool
    amount: float
    lines: list[Line] = field(default_factory=list)
    note: str | None = None


class Verdict(pydantic.BaseModel):
    ok: bool
    reason: str = pydantic.Field(min_length=2)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def asking(answer_type: Any, **options: Any) -> Any:
    def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        got = interrupt({"question": "Approve?"}, answer=answer_type, **options)
        state["type"] = type(got).__name__
        return StopEvent(result=got)

    return ask


def Workflow(node: Any, persistence: Any = None) -> _Workflow:
    # Kept once completed, so the history can be read; the result is a T: registered.
    return _Workflow(
        [node],
        name="typed",
        persistence=persistence or InMemoryPersistence(),
        keep_completed=timedelta(days=1),
        types=[Approval, Line, Verdict, Color],
    )


def pending(workflow: _Workflow, workflow_id: str) -> Decision:
    store = workflow.persistence
    assert isinstance(store, Persistence)
    return store.load(workflow_id).history[-1]


# -- every kind of answer type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_type", "given", "expected"),
    [
        (
            Approval,
            {"approved": True, "amount": 30, "lines": [{"sku": "a"}]},
            Approval(True, 30.0, [Line("a", 1)]),
        ),
        (Approval, Approval(False, 2.5, note="no"), Approval(False, 2.5, note="no")),
        (Verdict, {"ok": True, "reason": "fine"}, Verdict(ok=True, reason="fine")),
        (Verdict, Verdict(ok=False, reason="nope"), Verdict(ok=False, reason="nope")),
        (Color, "blue", Color.BLUE),
        (Color, Color.RED, Color.RED),
        (bool, True, True),
        (list[int], [1, 2, 3], [1, 2, 3]),
        (list[Line], [{"sku": "x", "qty": 3}], [Line("x", 3)]),
        (Literal["yes", "no"], "no", "no"),
        (int | None, None, None),
        (float, 3, 3.0),
    ],
)
def test_the_node_gets_the_typed_answer(answer_type: Any, given: Any, expected: Any) -> None:
    workflow = Workflow(asking(answer_type))
    run = workflow.start()
    assert run.status == "interrupted"
    assert pending(workflow, run.workflow_id).answer_schema == schema_of(answer_type)
    done = workflow.resume(run.workflow_id, given, expected_version=run.version)
    assert done.status == "completed"
    assert done.result == expected and type(done.result) is type(expected)


def test_the_schema_is_stored_with_the_question_as_json_schema() -> None:
    workflow = Workflow(asking(Approval))
    run = workflow.start()
    schema = pending(workflow, run.workflow_id).answer_schema
    assert schema == {
        "title": "Approval",
        "type": "object",
        "properties": {
            "approved": {"type": "boolean"},
            "amount": {"type": "number"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["approved", "amount"],
        "additionalProperties": False,
        "$defs": {
            "Line": {
                "title": "Line",
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "default": 1}},
                "required": ["sku"],
                "additionalProperties": False,
            }
        },
    }
    # pydantic's own schema for a model, Enum values, a boolean for approve/reject buttons.
    assert schema_of(Verdict) == Verdict.model_json_schema()
    assert schema_of(Color) == {"title": "Color", "enum": ["red", "blue"], "type": "string"}
    assert schema_of(bool) == {"type": "boolean"}


def test_the_answer_is_stored_as_plain_json_with_who_answered() -> None:
    workflow = Workflow(asking(Approval))
    run = workflow.start()
    workflow.resume(run.workflow_id, Approval(True, 1.5, [Line("a")]), answered_by="ana")
    store = workflow.persistence
    assert isinstance(store, Persistence)
    decision = store.load(run.workflow_id).history[-1]
    assert decision.answer == {
        "approved": True, "amount": 1.5, "lines": [{"sku": "a", "qty": 1}], "note": None,
    }
    assert (decision.answered_by, decision.answered_via) == ("ana", "resume")
    assert decision.answered_at is not None


def test_an_untyped_interrupt_is_unchanged() -> None:
    def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=interrupt("any?"))

    workflow = Workflow(ask)
    run = workflow.start()
    decision = pending(workflow, run.workflow_id)
    assert (decision.answer_schema, decision.deadline, decision.default) == (None, None, None)
    answer = {"anything": [1, "goes"]}
    assert workflow.resume(run.workflow_id, answer).result == answer
    store = workflow.persistence
    assert isinstance(store, Persistence)
    assert store.load(run.workflow_id).history[-1].answered_via == "resume"


# -- wrong answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_type", "wrong", "field"),
    [
        (Approval, {"approved": True, "amount": "ten"}, "answer.amount"),
        (Approval, {"amount": 1}, "answer.approved"),
        (Approval, {"approved": True, "amount": 1, "lines": [{"qty": 2}]}, "answer.lines[0].sku"),
        (Approval, {"approved": True, "amount": 1, "extra": 1}, "answer.extra"),
        (Approval, None, "answer"),
        (Verdict, {"ok": "yes", "reason": "fine"}, "answer.ok"),
        (Verdict, {"ok": True, "reason": "x"}, "answer.reason"),  # min_length in the schema
        (Color, "green", "answer"),
        (bool, 1, "answer"),  # JSON's true is not 1
        (bool, "yes", "answer"),
        (list[int], [1, "2"], "answer[1]"),
        (list[int], [1, True], "answer[1]"),
        (Literal["yes", "no"], "maybe", "answer"),
    ],
)
def test_a_wrong_answer_is_refused_and_the_run_stays_at_its_version(
    answer_type: Any, wrong: Any, field: str
) -> None:
    workflow = Workflow(asking(answer_type))
    run = workflow.start()
    store = workflow.persistence
    assert isinstance(store, Persistence)
    before = store.load(run.workflow_id)
    with pytest.raises(InvalidAnswerError) as caught:
        workflow.resume(run.workflow_id, wrong, expected_version=run.version)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert isinstance(caught.value, WorkflowError) and isinstance(caught.value, ValueError)
    after = store.load(run.workflow_id)
    assert after.version == before.version == run.version
    assert after.status == "interrupted"
    assert after.history[-1].answered_at is None


def test_after_a_wrong_answer_a_right_one_resumes() -> None:
    workflow = Workflow(asking(Color))
    run = workflow.start()
    with pytest.raises(InvalidAnswerError):
        workflow.resume(run.workflow_id, "green", expected_version=run.version)
    done = workflow.resume(run.workflow_id, "red", expected_version=run.version)
    assert done.result is Color.RED


def test_a_model_validator_the_schema_cannot_express_fails_the_node() -> None:
    class Strict(pydantic.BaseModel):
        code: str

        @pydantic.field_validator("code")
        @classmethod
        def upper(cls, value: str) -> str:
            if not value.isupper():
                raise ValueError("must be upper case")
            return value

    workflow = Workflow(asking(Strict))
    run = workflow.start()
    with pytest.raises(WorkflowFailedError) as caught:
        workflow.resume(run.workflow_id, {"code": "abc"})
    assert isinstance(caught.value.__cause__, InvalidAnswerError)
    store = workflow.persistence
    assert isinstance(store, Persistence)
    assert store.load(run.workflow_id).status == "failed"


# -- mistakes in the interrupt call -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_type", "options", "words"),
    [
        (bool, {"timeout": timedelta(hours=1)}, "needs default"),
        (bool, {"default": False}, "give it a timeout"),
        (bool, {"timeout": timedelta(hours=1), "default": "no"}, "does not fit"),
        (Approval, {"timeout": timedelta(hours=1), "default": {"approved": True}}, "amount"),
        (bool, {"timeout": timedelta(0), "default": False}, "positive timedelta"),
        (bool, {"timeout": 60, "default": False}, "positive timedelta"),
        (dict[str, int], {}, "not an answer type"),
        (Any, {}, "not an answer type"),
    ],
)
def test_a_bad_interrupt_call_is_a_definition_error(
    answer_type: Any, options: dict[str, Any], words: str
) -> None:
    workflow = Workflow(asking(answer_type, **options))
    with pytest.raises(WorkflowFailedError) as caught:
        workflow.start()
    assert isinstance(caught.value.__cause__, WorkflowDefinitionError)
    assert words in str(caught.value.__cause__)


def test_the_default_is_stored_as_plain_json_and_the_deadline_from_the_timeout() -> None:
    workflow = Workflow(
        asking(Approval, timeout=timedelta(hours=2), default=Approval(False, 0.0))
    )
    run = workflow.start()
    decision = pending(workflow, run.workflow_id)
    assert decision.default == {"approved": False, "amount": 0.0, "lines": [], "note": None}
    assert decision.deadline == decision.asked_at + timedelta(hours=2)


# -- the serializer keeps the new fields, and reads entries without them ------------------------


def test_the_serializer_round_trips_the_new_fields_and_reads_old_entries() -> None:
    serializer = JsonSerializer()
    snapshot = WorkflowSnapshot("typed")
    snapshot.history = [
        Decision("a", "q", answer=True, answer_schema={"type": "boolean"}, answered_by="ana",
                 answered_via="resume"),
        Decision("a", "q2", answer_schema=schema_of(Approval), default={"approved": False}),
        Decision("b", "untyped"),
    ]
    snapshot.history[1].deadline = snapshot.history[1].asked_at + timedelta(minutes=5)
    loaded = serializer.loads(serializer.dumps(snapshot))
    assert loaded.history == snapshot.history
    for before, after in zip(snapshot.history, loaded.history, strict=True):
        assert (after.answered_by, after.answered_via, after.deadline, after.default) == (
            before.answered_by, before.answered_via, before.deadline, before.default,
        )


def test_a_damaged_new_field_is_refused_on_save() -> None:
    from workflow_persistence import SerializationError

    snapshot = WorkflowSnapshot("typed")
    snapshot.history = [Decision("a", "q", answered_by=42)]  # type: ignore[arg-type]
    with pytest.raises(SerializationError) as caught:
        JsonSerializer().dumps(snapshot)
    assert caught.value.path == "history[0].answered_by"


# -- the checker on pydantic's own schemas --------------------------------------------------


def test_the_checker_follows_pydantic_refs_and_nested_models() -> None:
    class Address(pydantic.BaseModel):
        city: str

    class Person(pydantic.BaseModel):
        name: str
        home: Address | None = None
        tags: list[str] = []

    schema = Person.model_json_schema()
    check_answer(schema, {"name": "a", "home": {"city": "b"}, "tags": ["x"]})
    with pytest.raises(InvalidAnswerError) as caught:
        check_answer(schema, {"name": "a", "home": {"city": 3}})
    assert caught.value.field == "answer.home.city"


# -- the async twin ----------------------------------------------------------------------------


async def test_aresume_checks_the_answer_and_builds_the_type() -> None:
    async def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=interrupt("approve?", answer=Approval))

    store = AsyncInMemoryPersistence()
    workflow = _Workflow([ask], name="typed", persistence=store)
    run = await workflow.astart()
    with pytest.raises(InvalidAnswerError) as caught:
        await workflow.aresume(run.workflow_id, {"approved": "yes", "amount": 1})
    assert caught.value.field == "answer.approved"
    assert (await store.load(run.workflow_id)).version == run.version
    done = await workflow.aresume(
        run.workflow_id, {"approved": True, "amount": 1}, answered_by="bo"
    )
    assert done.result == Approval(True, 1.0)
