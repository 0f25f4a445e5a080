"""OpenTelemetry: spans, links across a pause, and metrics, read from the SDK's in-memory
exporter and metric reader; and the library without the API installed at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_globals
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from workflow_persistence import (
    AsyncPersistence,
    ConflictError,
    Event,
    InMemoryPersistence,
    Persistence,
    RetryPolicy,
    SessionPersistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
    observe_waiting_runs,
)
from workflow_persistence import _telemetry as telemetry
from workflow_persistence._storage.database_async import AsyncDatabasePersistence

from . import flows
from .test_database_async import store, sync_engine, url  # noqa: F401
from .test_workflow_async import astore  # noqa: F401

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Telemetry:
    """An SDK installed as the app's global providers, recording in memory."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.spans.get_finished_spans()
        return [s for s in found if name is None or s.name == f"workflow_persistence.{name}"]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.finished(name)
        return span

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


def _set_globals(tracer_provider: Any, meter_provider: Any) -> None:
    # The API lets an app set its providers once; tests start afresh as the API's own
    # test utilities do, by resetting that guard.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_globals._METER_PROVIDER_SET_ONCE = Once()
    metrics_globals._METER_PROVIDER = None
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        metrics.set_meter_provider(meter_provider)


def install_sdk() -> Telemetry:
    """Fresh SDK providers as the globals: what a new process of the app configures."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    _set_globals(tracer_provider, MeterProvider(metric_readers=[reader]))
    return Telemetry(exporter, reader)


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    yield install_sdk()
    _set_globals(None, None)


@dataclass
class Asked(Event):
    question: str


def prepare(event: StartEvent, state: WorkflowState) -> Asked:
    state["prepared"] = True
    return Asked("Approve?")


def decide(event: Asked, state: WorkflowState) -> StopEvent:
    return StopEvent(result=interrupt(event.question))


def approval(persistence: Persistence | AsyncPersistence) -> Workflow:
    return Workflow([prepare, decide], name="approval", persistence=persistence)


def attrs(item: Any) -> dict[str, Any]:
    """A span's, event's, link's or data point's attributes (the SDK types them Optional)."""
    return dict(item.attributes or {})


def snapshot_of(workflow_id: str) -> WorkflowSnapshot:
    return WorkflowSnapshot(
        workflow_id,
        status="interrupted",
        state={"amount": 30, "note": "x" * 500},
        current_node="prepare",
        event=StartEvent(),
        interrupt="Approve?",
        workflow_name="approval",
    )


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


# -- spans of a run ------------------------------------------------------------------------


def test_start_span_holds_node_spans_and_checkpoint_saves(otel: Telemetry) -> None:
    run = approval(InMemoryPersistence()).start({}, workflow_id="refund-1")
    assert run.status == "interrupted"

    start = otel.one("start")
    assert start.parent is None
    assert start.attributes == {
        "workflow_persistence.workflow.id": "refund-1",
        "workflow_persistence.workflow.name": "approval",
        "workflow_persistence.status": "interrupted",
        "workflow_persistence.version": run.version,
    }
    nodes = otel.finished("node")
    assert [attrs(n)["workflow_persistence.node"] for n in nodes] == ["prepare", "decide"]
    assert [attrs(n)["workflow_persistence.status"] for n in nodes] == [
        "completed",
        "interrupted",
    ]
    for node in nodes:
        assert parent_of(node) == start.context.span_id
        assert attrs(node)["workflow_persistence.node.attempt"] == 1
        assert attrs(node)["workflow_persistence.workflow.name"] == "approval"
        assert node.status.status_code is StatusCode.UNSET  # a question is no error
    saves = otel.finished("save")
    assert [attrs(s)["workflow_persistence.status"] for s in saves] == [
        "running",  # the claim
        "running",  # the checkpoint after prepare
        "interrupted",
    ]
    assert [attrs(s)["workflow_persistence.version"] for s in saves] == [1, 2, 3]
    for save in saves:
        assert parent_of(save) == start.context.span_id
        assert attrs(save)["workflow_persistence.backend"] == "memory"
        assert attrs(save)["workflow_persistence.workflow.id"] == "refund-1"
        assert attrs(save)["workflow_persistence.bytes"] > 0
    assert {s.context.trace_id for s in otel.finished()} == {start.context.trace_id}


def test_a_save_made_by_a_node_is_under_that_node_span(otel: Telemetry) -> None:
    audit = InMemoryPersistence()

    def record(event: StartEvent, state: WorkflowState) -> StopEvent:
        audit.save(snapshot_of("audit-1"))
        return StopEvent(result=None)

    Workflow([record]).start()
    node = otel.one("node")
    (inner,) = [s for s in otel.finished("save") if parent_of(s) == node.context.span_id]
    assert attrs(inner)["workflow_persistence.workflow.id"] == "audit-1"


def test_storage_spans_name_the_operation_backend_and_record(
    otel: Telemetry, backend: str, persistence: Persistence
) -> None:
    snapshot = snapshot_of("stored-1")
    version = persistence.save(snapshot)
    loaded = persistence.load("stored-1")
    assert persistence.exists("stored-1")
    assert len(persistence.list(status="interrupted")) == 1
    assert persistence.prune() == 0
    assert persistence.delete("stored-1")

    expected = {"memory": ("memory", None), "file": ("file", None)}.get(
        backend, ("mysql" if backend == "mariadb" else backend, backend)
    )
    names = [s.name.removeprefix("workflow_persistence.") for s in otel.finished()]
    assert names == ["save", "load", "exists", "list", "prune", "delete"]
    for span in otel.finished():
        assert attrs(span)["workflow_persistence.backend"] == expected[0]
        assert attrs(span).get("db.system.name") == expected[1]
        if expected[1] is not None:
            assert attrs(span)["db.collection.name"] == "workflow_interrupts"
            assert span.kind is SpanKind.CLIENT
        else:
            assert span.kind is SpanKind.INTERNAL
    save, load = otel.one("save"), otel.one("load")
    assert attrs(save)["workflow_persistence.version"] == version == loaded.version
    assert attrs(save)["workflow_persistence.bytes"] == attrs(load)[
        "workflow_persistence.bytes"
    ] == len(persistence.serializer.dumps(loaded))
    assert attrs(load)["workflow_persistence.status"] == "interrupted"
    assert attrs(load)["workflow_persistence.node"] == loaded.current_node
    assert attrs(otel.one("list"))["workflow_persistence.count"] == 1
    assert attrs(otel.one("delete"))["workflow_persistence.count"] == 1


def test_session_persistence_spans_name_the_database(
    otel: Telemetry, db_kind: str, engine: Engine
) -> None:
    with Session(engine) as session, session.begin():
        SessionPersistence(session).save(snapshot_of("in-session"))
    span = otel.one("save")
    assert attrs(span)["db.system.name"] == db_kind
    assert attrs(span)["workflow_persistence.backend"] == engine.dialect.name


# -- errors --------------------------------------------------------------------------------


def test_failing_node_attempts_and_the_failed_run_record_the_exception(otel: Telemetry) -> None:
    def flaky(event: StartEvent, state: WorkflowState) -> StopEvent:
        raise ValueError("the ledger is closed")

    workflow = Workflow([flaky], retry=RetryPolicy(max_attempts=2))
    with pytest.raises(WorkflowFailedError):
        workflow.start(workflow_id="fails-1")

    attempts = otel.finished("node")
    assert [attrs(a)["workflow_persistence.node.attempt"] for a in attempts] == [1, 2]
    for attempt in attempts:
        assert attempt.status.status_code is StatusCode.ERROR
        assert attrs(attempt)["error.type"] == "builtins.ValueError"
        (event,) = attempt.events
        assert event.name == "exception"
        assert attrs(event)["exception.message"] == "the ledger is closed"
    start = otel.one("start")
    assert start.status.status_code is StatusCode.ERROR
    assert attrs(start)["workflow_persistence.status"] == "failed"
    assert attrs(start)["workflow_persistence.node"] == "flaky"
    assert attrs(start)["error.type"] == "workflow_persistence.errors.WorkflowFailedError"
    assert attrs(otel.finished("save")[-1])["workflow_persistence.status"] == "failed"


def test_storage_errors_are_recorded_on_their_span(otel: Telemetry) -> None:
    persistence = InMemoryPersistence()
    with pytest.raises(WorkflowNotFoundError):
        persistence.load("nobody")
    persistence.save(snapshot_of("taken"))
    with pytest.raises(ConflictError):
        persistence.save(snapshot_of("taken"), expected_version=0)

    load = otel.one("load")
    assert load.status.status_code is StatusCode.ERROR
    assert attrs(load)["error.type"] == "workflow_persistence.errors.WorkflowNotFoundError"
    assert load.events[0].name == "exception"
    conflict = otel.finished("save")[-1]
    assert attrs(conflict)["error.type"] == "workflow_persistence.errors.ConflictError"
    (point,) = [
        p
        for p in otel.metric_points("workflow_persistence.operation.duration")
        if attrs(p).get("error.type") == "workflow_persistence.errors.ConflictError"
    ]
    assert point.count == 1


# -- the story across a pause --------------------------------------------------------------


def test_resume_links_to_the_paused_run_from_a_fresh_tracer_provider(
    otel: Telemetry, backend: str, persistence_factory: Any
) -> None:
    before = approval(persistence_factory())
    run = before.start({}, workflow_id="waits-a-week")
    paused = otel.one("start")
    stored = before.persistence.load("waits-a-week").history[-1]  # type: ignore[union-attr]
    assert stored.trace_context is not None
    assert stored.trace_context["traceparent"] == (
        f"00-{paused.context.trace_id:032x}-{paused.context.span_id:016x}"
        f"-{paused.context.trace_flags:02x}"
    )

    later = install_sdk()  # another process, days later: new providers, new trace
    try:
        # The same store (a new persistence object on it, but for memory), a new Workflow.
        after = approval(before.persistence if backend == "memory" else persistence_factory())
        result = after.resume(
            "waits-a-week", "yes", expected_version=run.version
        )
        assert result.status == "completed" and result.result == "yes"
        resume = later.one("resume")
        assert resume.parent is None
        assert resume.context.trace_id != paused.context.trace_id
        (link,) = resume.links
        assert (link.context.trace_id, link.context.span_id) == (
            paused.context.trace_id,
            paused.context.span_id,
        )
        assert link.attributes == {
            "workflow_persistence.node": "decide",
            "workflow_persistence.link": "asked",
        }
        assert attrs(resume)["workflow_persistence.status"] == "completed"
        assert attrs(resume)["workflow_persistence.workflow.name"] == "approval"
        assert attrs(resume)["workflow_persistence.waited"] >= 0
        assert otel.finished("resume") == []
    finally:
        _set_globals(None, None)


def test_each_pause_of_a_run_links_its_resume_to_the_span_that_asked(otel: Telemetry) -> None:
    def twice(event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result=(interrupt("first?"), interrupt("second?")))

    workflow = Workflow([twice], persistence=InMemoryPersistence())
    workflow.start(workflow_id="two-questions")
    workflow.resume("two-questions", 1)
    workflow.resume("two-questions", 2)
    start = otel.one("start")
    first, second = otel.finished("resume")
    assert [lk.context.span_id for lk in first.links] == [start.context.span_id]
    assert [lk.context.span_id for lk in second.links] == [first.context.span_id]


def test_nothing_is_traced_or_stored_while_no_sdk_is_configured() -> None:
    _set_globals(None, None)
    persistence = InMemoryPersistence()
    approval(persistence).start({}, workflow_id="untraced")
    assert persistence.load("untraced").history[-1].trace_context is None
    assert telemetry.storage_call(persistence, "save") is telemetry.OFF


def test_a_damaged_trace_context_is_ignored_on_resume(otel: Telemetry) -> None:
    persistence = InMemoryPersistence()
    approval(persistence).start({}, workflow_id="odd-context")
    snapshot = persistence.load("odd-context")
    snapshot.history[-1].trace_context = {"traceparent": "not a traceparent"}
    persistence.save(snapshot)
    assert approval(persistence).resume("odd-context", "yes").status == "completed"
    assert otel.one("resume").links == ()


# -- async --------------------------------------------------------------------------------


async def _assert_async_run_nests(otel: Telemetry, persistence: AsyncPersistence) -> None:
    workflow = approval(persistence)
    run = await workflow.astart({}, workflow_id="async-1")
    start = otel.one("start")
    result = await workflow.aresume("async-1", "yes", expected_version=run.version)
    assert result.status == "completed"
    resume = otel.one("resume")
    assert [lk.context.span_id for lk in resume.links] == [start.context.span_id]
    for span in otel.finished():
        if span.name.endswith((".save", ".load", ".delete", ".node")):
            assert parent_of(span) in (start.context.span_id, resume.context.span_id), span.name
    assert len(otel.finished("node")) == 3
    assert {parent_of(s) for s in otel.finished("load")} == {resume.context.span_id}


async def test_astart_and_aresume_nest_spans_on_memory_and_files(
    otel: Telemetry,
    astore: AsyncPersistence,  # noqa: F811
) -> None:
    await _assert_async_run_nests(otel, astore)


async def test_astart_and_aresume_nest_spans_through_the_async_drivers(
    otel: Telemetry,
    store: AsyncDatabasePersistence,  # noqa: F811
) -> None:
    await _assert_async_run_nests(otel, store)
    assert attrs(otel.one("load"))["db.system.name"] in ("postgresql", "mariadb", "sqlite")


# -- metrics -------------------------------------------------------------------------------


def test_durations_and_payload_sizes_are_recorded_by_operation(otel: Telemetry) -> None:
    persistence = InMemoryPersistence()
    for _ in range(3):
        persistence.save(snapshot_of("measured"))
    persistence.load("measured")
    size = len(persistence.serializer.dumps(persistence.load("measured")))

    durations = {
        attrs(p)["workflow_persistence.operation"]: p
        for p in otel.metric_points("workflow_persistence.operation.duration")
    }
    assert durations["save"].count == 3 and durations["load"].count == 2
    assert 0 < durations["save"].sum < 5
    assert durations["save"].attributes["workflow_persistence.backend"] == "memory"
    sizes = {
        attrs(p)["workflow_persistence.operation"]: p
        for p in otel.metric_points("workflow_persistence.payload.size")
    }
    assert sizes["load"].count == 2 and sizes["load"].sum == 2 * size
    assert sizes["save"].count == 3
    assert sizes["save"].max <= size + 16  # versions and times of a few bytes differ


def test_waiting_runs_gauge_counts_by_workflow(otel: Telemetry, persistence: Persistence) -> None:
    approval_runs = approval(persistence)
    for n in range(3):
        approval_runs.start({}, workflow_id=f"approval-{n}")
    flows.approval_workflow(persistence).start({"amount": 5}, workflow_id="unnamed")
    approval_runs.resume("approval-0", "yes")

    observe_waiting_runs(persistence)
    values = {
        attrs(p).get("workflow_persistence.workflow.name"): p.value
        for p in otel.metric_points("workflow_persistence.runs.waiting")
    }
    assert values == {"approval": 2, None: 1}
    assert telemetry.waiting_runs(persistence) == {"approval": 2, None: 1}


# -- without the API -----------------------------------------------------------------------


def test_without_the_api_installed_the_library_works_as_before(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        from workflow_persistence import (
            FilePersistence, InMemoryPersistence, observe_waiting_runs
        )
        from workflow_persistence import _telemetry
        from tests import flows

        assert not _telemetry.API_INSTALLED
        for persistence in (InMemoryPersistence(), FilePersistence(sys.argv[1])):
            workflow = flows.approval_workflow(persistence)
            run = workflow.start({"amount": 30}, workflow_id="r")
            assert run.status == "interrupted"
            assert persistence.load("r").history[-1].trace_context is None
            assert workflow.resume("r", "yes").result is True
            assert persistence.list() == [] and persistence.prune() == 0
        try:
            observe_waiting_runs(InMemoryPersistence())
        except ImportError as exc:
            assert "workflow-persistence[otel]" in str(exc)
        else:
            raise AssertionError("observe_waiting_runs worked without the API")
        assert not any(name.startswith("opentelemetry") for name in sys.modules)
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent)])}
    command = [sys.executable, "-c", script, str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
