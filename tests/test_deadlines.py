"""Deadlines: interrupt(timeout=, default=), list(deadline_before=), expire_due on every
backend, and expire_due racing itself from two processes."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from workflow_persistence import (
    AsyncInMemoryPersistence,
    AsyncPersistence,
    DatabasePersistence,
    InMemoryPersistence,
    Persistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    WorkflowState,
    interrupt,
)
from workflow_persistence.cli import main as cli_main

from .test_database_async import store, sync_engine, url  # noqa: F401

#: A deadline that has passed by the time start() returns (it is asked_at + 1 µs, and the
#: save after it takes longer), and one that will not pass during a test.
PASSED = 1
LATER = 3_600_000_000


def decide(event: StartEvent, state: WorkflowState) -> StopEvent:
    approved = interrupt(
        {"question": "Refund?"},
        answer=bool,
        timeout=timedelta(microseconds=state["us"]),
        default=False,
    )
    log = state.get("log")
    if log is not None:  # one line per execution past the question, in any process
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{state.workflow_id}\n")
    return StopEvent(result=approved)


def refunds(persistence: Persistence | AsyncPersistence) -> Workflow:
    return Workflow(
        [decide], name="refunds", persistence=persistence, keep_completed=timedelta(days=1)
    )


def start_runs(workflow: Workflow, overdue: int, waiting: int, **state: Any) -> None:
    for i in range(overdue):
        workflow.start({"us": PASSED, **state}, workflow_id=f"late-{i}")
    for i in range(waiting):
        workflow.start({"us": LATER, **state}, workflow_id=f"open-{i}")


# -- on every backend ---------------------------------------------------------------------


def test_overdue_runs_are_listed_with_deadline_before(persistence: Persistence) -> None:
    workflow = refunds(persistence)
    start_runs(workflow, overdue=2, waiting=1)
    persistence.save(persistence.load("open-0"))  # saved again: the deadline stays
    now = datetime.now(UTC)
    overdue = persistence.list(deadline_before=now)
    assert sorted(i.workflow_id for i in overdue) == ["late-0", "late-1"]
    everything = {i.workflow_id: i for i in persistence.list()}
    for workflow_id, info in everything.items():
        question = persistence.load(workflow_id).history[-1]
        assert info.deadline == question.deadline
        assert info.deadline is not None and info.deadline.tzinfo is not None
    assert everything["open-0"].deadline > now  # type: ignore[operator]
    later = persistence.list(deadline_before=now + timedelta(hours=2), status="interrupted")
    assert len(later) == 3
    assert persistence.list(deadline_before=now, workflow_name="other") == []


def test_expire_due_resumes_overdue_runs_with_the_default_and_not_others(
    persistence: Persistence,
) -> None:
    workflow = refunds(persistence)
    start_runs(workflow, overdue=3, waiting=2)
    assert workflow.expire_due(limit=2) == 2
    assert workflow.expire_due() == 1
    assert workflow.expire_due() == 0
    for i in range(3):
        run = persistence.load(f"late-{i}")
        assert (run.status, run.result) == ("completed", False)
        decision = run.history[-1]
        assert (decision.answer, decision.answered_via, decision.answered_by) == (
            False, "deadline", None,
        )
    for i in range(2):
        run = persistence.load(f"open-{i}")
        assert run.status == "interrupted" and run.history[-1].answered_at is None
    # A completed run has no pending deadline any more.
    assert persistence.list(deadline_before=datetime.now(UTC) + timedelta(days=1)) != []
    assert {i.workflow_id for i in persistence.list(deadline_before=datetime.now(UTC))} == set()
    assert all(i.deadline is None for i in persistence.list(status="completed"))


def test_a_question_answered_in_time_is_not_expired() -> None:
    persistence = InMemoryPersistence()
    workflow = refunds(persistence)
    start_runs(workflow, overdue=1, waiting=0)
    workflow.resume("late-0", True, answered_by="ana")  # late, but answered before expiry
    assert workflow.expire_due() == 0
    decision = persistence.load("late-0").history[-1]
    assert (decision.answer, decision.answered_via, decision.answered_by) == (True, "resume", "ana")


def test_expire_due_needs_a_named_workflow() -> None:
    with pytest.raises(WorkflowError, match="name"):
        Workflow([decide]).expire_due()


def test_the_cli_list_marks_overdue_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with DatabasePersistence(db) as persistence:
        start_runs(refunds(persistence), overdue=1, waiting=1)
    assert cli_main(["list", "--url", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["DEADLINE", "(UTC)"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["late-0"].endswith(" overdue") and not rows["open-0"].endswith(" overdue")
    assert cli_main(["list", "--overdue", "--url", db]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["late-0"]


# -- two processes racing -------------------------------------------------------------------


def _expire_in_child(db: str, barrier: Any, results: Any) -> None:
    persistence = DatabasePersistence(db, create_table=False)
    try:
        workflow = refunds(persistence)
        barrier.wait(timeout=60)
        results.put(workflow.expire_due())
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(repr(exc))
    finally:
        persistence.close()


@pytest.fixture(params=["sqlite-file", "postgresql", "mariadb"])
def shared_url(
    request: pytest.FixtureRequest, tmp_path: Path, new_database_url: Callable[[str], URL]
) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return new_database_url(request.param).render_as_string(hide_password=False)


def test_expire_due_from_two_processes_resumes_each_overdue_run_once(
    shared_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    overdue = 30
    with DatabasePersistence(shared_url) as persistence:
        start_runs(refunds(persistence), overdue=overdue, waiting=3, log=str(log))
    assert not log.exists()  # nothing ran past the question yet
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    children = [
        context.Process(target=_expire_in_child, args=(shared_url, barrier, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    counts = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert all(type(count) is int for count in counts), counts
    assert sum(counts) == overdue
    executions = Counter(log.read_text(encoding="utf-8").split())
    assert executions == Counter({f"late-{i}": 1 for i in range(overdue)})
    with DatabasePersistence(shared_url) as persistence:
        for i in range(overdue):
            run = persistence.load(f"late-{i}")
            assert run.status == "completed" and run.history[-1].answered_via == "deadline"
        waiting = sorted(i.workflow_id for i in persistence.list(status="interrupted"))
        assert waiting == ["open-0", "open-1", "open-2"]


# -- the async twin -------------------------------------------------------------------------


async def start_async(workflow: Workflow, overdue: int, waiting: int) -> None:
    for i in range(overdue):
        await workflow.astart({"us": PASSED}, workflow_id=f"late-{i}")
    for i in range(waiting):
        await workflow.astart({"us": LATER}, workflow_id=f"open-{i}")


async def test_aexpire_due_in_memory() -> None:
    persistence = AsyncInMemoryPersistence()
    workflow = refunds(persistence)
    await start_async(workflow, overdue=2, waiting=1)
    overdue = await persistence.list(deadline_before=datetime.now(UTC))
    assert sorted(i.workflow_id for i in overdue) == ["late-0", "late-1"]
    assert await workflow.aexpire_due() == 2
    assert await workflow.aexpire_due() == 0
    run = await persistence.load("late-1")
    assert run.history[-1].answered_via == "deadline" and run.result is False
    assert (await persistence.load("open-0")).status == "interrupted"


async def test_aexpire_due_on_each_database(store: AsyncPersistence) -> None:  # noqa: F811
    workflow = refunds(store)
    await start_async(workflow, overdue=2, waiting=1)
    listed = await store.list(deadline_before=datetime.now(UTC))
    assert sorted(i.workflow_id for i in listed) == ["late-0", "late-1"]
    assert all(i.deadline is not None for i in listed)
    assert await workflow.aexpire_due(limit=5) == 2
    assert (await store.load("late-0")).history[-1].answered_via == "deadline"
    assert (await store.load("open-0")).status == "interrupted"
