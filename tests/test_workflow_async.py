"""astart/aresume: the sync runtime's promises on the event loop, async def nodes, plain
nodes off the loop, cancellation, and the errors that point to the other API."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_persistence import (
    AsyncDatabasePersistence,
    AsyncFilePersistence,
    AsyncInMemoryPersistence,
    AsyncPersistence,
    ConflictError,
    Event,
    FilePersistence,
    InMemoryPersistence,
    JsonSerializer,
    RetryPolicy,
    StartEvent,
    StopEvent,
    StoredSnapshotInfo,
    Workflow,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)

from . import flows

# The async database fixtures: each database through its async driver, no leaked connection.
from .test_database_async import store, sync_engine, url  # noqa: F401

#: Long enough for any machine, short enough that a blocked loop fails the test.
BOUND = 20.0


@pytest.fixture(params=["memory", "file"])
def astore(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncPersistence:
    if request.param == "memory":
        return AsyncInMemoryPersistence(serializer=JsonSerializer())
    return AsyncFilePersistence(tmp_path / "runs", serializer=JsonSerializer())


@dataclass
class Drafted(Event):
    text: str


async def draft(event: StartEvent, state: WorkflowState) -> Drafted:
    await asyncio.sleep(0)  # a real await on the loop
    state["draft"] = f"Refund {state['amount']} EUR"
    state["draft_thread"] = threading.get_ident()
    return Drafted(state["draft"])


def approve(event: Drafted, state: WorkflowState) -> StopEvent:  # plain: a worker thread
    answer = interrupt({"question": "Approve?", "draft": event.text})
    state["approved"] = answer == "yes"
    state["approve_thread"] = threading.get_ident()
    return StopEvent(result=state["approved"])


async def test_async_and_plain_nodes_interrupt_and_resume(astore: AsyncPersistence) -> None:
    workflow = Workflow([draft, approve], persistence=astore)
    run = await workflow.astart({"amount": 30}, workflow_id="refund-42", metadata={"u": "ana"})
    assert run.status == "interrupted" and run.interrupt["draft"] == "Refund 30 EUR"
    stored = await astore.load("refund-42")
    assert (stored.status, stored.current_node, stored.metadata) == (
        "interrupted",
        "approve",
        {"u": "ana"},
    )
    run = await workflow.aresume("refund-42", "yes", expected_version=run.version)
    assert run.status == "completed" and run.result is True
    here = threading.get_ident()
    assert run.state["draft_thread"] == here  # an async node is awaited on the loop
    assert run.state["approve_thread"] != here  # a plain node runs in a worker thread
    assert not await astore.exists("refund-42")


async def test_several_interrupts_in_an_async_node_are_answered_in_order(
    astore: AsyncPersistence,
) -> None:
    entries: list[int] = []

    async def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
        entries.append(1)
        state["writes"] = state.get("writes", 0) + 1
        first = interrupt("first?")
        await asyncio.sleep(0)
        second = interrupt("second?")
        return StopEvent(result=(first, second, state["writes"]))

    workflow = Workflow([ask], persistence=astore)
    assert (await workflow.astart(workflow_id="w")).interrupt == "first?"
    assert (await workflow.aresume("w", 1)).interrupt == "second?"
    run = await workflow.aresume("w", 2)
    assert run.result == (1, 2, 1) and len(entries) == 3  # writes before interrupt: once


async def test_retries_then_failure_saved_as_failed_then_resume_retries(
    astore: AsyncPersistence,
) -> None:
    calls: list[str] = []
    fail = [True]

    @RetryPolicy(max_attempts=3, backoff=0.001)
    async def flaky(event: StartEvent, state: WorkflowState) -> StopEvent:
        calls.append("flaky")
        state["touched"] = True
        if fail[0]:
            raise TimeoutError("slow")
        return StopEvent(result="ok")

    workflow = Workflow([flaky], persistence=astore)
    with pytest.raises(WorkflowFailedError) as failed:
        await workflow.astart({"n": 1}, workflow_id="w")
    assert isinstance(failed.value.__cause__, TimeoutError) and len(calls) == 3
    stored = await astore.load("w")
    assert (stored.status, stored.state, stored.attempts) == ("failed", {"n": 1}, {"flaky": 3})
    assert stored.error is not None and stored.error.type == "builtins.TimeoutError"
    fail[0] = False
    assert (await workflow.aresume("w")).result == "ok"
    assert not await astore.exists("w")


class FailsTwice:
    """A plain node that fails on its first two calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, event: StartEvent, state: WorkflowState) -> StopEvent:
        self.calls += 1
        if self.calls < 3:
            raise ConnectionError(f"service unavailable (call {self.calls})")
        return StopEvent(result=self.calls)


async def test_a_plain_node_failing_in_its_thread_is_retried_and_kept(
    astore: AsyncPersistence,
) -> None:
    node = FailsTwice()
    workflow = Workflow(
        [node], persistence=astore, retry=RetryPolicy(max_attempts=3), keep_completed=timedelta(1)
    )
    run = await workflow.astart(workflow_id="w")
    assert run.status == "completed" and node.calls == 3
    kept = await astore.load("w")
    assert (kept.status, kept.result, kept.attempts) == ("completed", 3, {"FailsTwice": 3})
    assert kept.expires_at is not None
    with pytest.raises(ConflictError, match="nothing to resume"):
        await workflow.aresume("w")


async def test_start_sync_on_files_and_resume_async_on_the_same_directory(
    tmp_path: Path,
) -> None:
    sync_workflow = flows.approval_workflow(FilePersistence(tmp_path / "runs"))
    run = sync_workflow.start({"amount": 30}, workflow_id="refund-42")
    assert run.status == "interrupted"
    async_workflow = flows.approval_workflow(AsyncFilePersistence(tmp_path / "runs"))  # type: ignore[arg-type]
    run = await async_workflow.aresume("refund-42", "yes")
    assert run.status == "completed" and run.result is True
    assert not FilePersistence(tmp_path / "runs").exists("refund-42")


# -- no node blocks the loop --------------------------------------------------------------------


async def test_a_plain_node_does_not_block_the_event_loop(astore: AsyncPersistence) -> None:
    gate = threading.Event()

    def waits(event: StartEvent, state: WorkflowState) -> StopEvent:
        # Only another task on the loop opens the gate: if this node held the loop, the
        # wait would run out and the run would say so.
        return StopEvent(result=gate.wait(timeout=BOUND))

    async def opener() -> None:
        gate.set()

    workflow = Workflow([waits], persistence=astore)
    run, _ = await asyncio.gather(workflow.astart(workflow_id="w"), opener())
    assert run.result is True


# -- two concurrent aresume ---------------------------------------------------------------------


class BothLoadFirst(AsyncPersistence):
    """Holds each ``load`` until two have loaded: both resumes then race to claim."""

    def __init__(self, inner: AsyncPersistence) -> None:
        self.inner, self.serializer = inner, inner.serializer
        self.loads, self.both = 0, asyncio.Event()

    async def load(self, workflow_id: str) -> WorkflowSnapshot:
        snapshot = await self.inner.load(workflow_id)
        self.loads += 1
        if self.loads == 2:
            self.both.set()
        await asyncio.wait_for(self.both.wait(), BOUND)
        return snapshot

    async def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        return await self.inner.save(snapshot, expected_version=expected_version)

    async def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return await self.inner.delete(workflow_id, expected_version=expected_version)

    async def exists(self, workflow_id: str) -> bool:
        return await self.inner.exists(workflow_id)

    async def list(self, **filters: Any) -> list[StoredSnapshotInfo]:
        return await self.inner.list(**filters)

    async def prune(self, older_than: Any = None, *, status: Any = None) -> int:
        return await self.inner.prune(older_than, status=status)


async def _one_of_two_resumes_proceeds(persistence: AsyncPersistence) -> None:
    effects = flows.SideEffects()

    async def prepare(event: StartEvent, state: WorkflowState) -> flows.Drafted:
        interrupt("go?")
        return flows.Drafted("x")

    def act(event: flows.Drafted, state: WorkflowState) -> StopEvent:
        effects.bump()
        return StopEvent(result="done")

    workflow = Workflow([prepare, act], persistence=BothLoadFirst(persistence))
    await workflow.astart(workflow_id="w")
    outcomes = await asyncio.gather(
        workflow.aresume("w", "yes"), workflow.aresume("w", "yes"), return_exceptions=True
    )
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(done) == 1 and done[0].result == "done"
    assert len(lost) == 1 and isinstance(lost[0], ConflictError), lost
    assert "claimed by another resume" in str(lost[0])  # the compare-and-set decided
    assert effects.count == 1
    assert not await persistence.exists("w")


async def test_two_concurrent_aresume_one_proceeds(astore: AsyncPersistence) -> None:
    await _one_of_two_resumes_proceeds(astore)


async def test_two_concurrent_aresume_one_proceeds_on_each_database(
    store: AsyncDatabasePersistence,  # noqa: F811 - the fixture imported above
) -> None:
    await _one_of_two_resumes_proceeds(store)


# -- cancellation -----------------------------------------------------------------------------


async def _cancel_mid_node(persistence: AsyncPersistence, plain: bool) -> None:
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    release = asyncio.Event()

    def plain_node(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["inside"] = True
        loop.call_soon_threadsafe(entered.set)
        gate.wait(timeout=BOUND)
        return StopEvent(result="late")

    async def async_node(event: StartEvent, state: WorkflowState) -> StopEvent:
        state["inside"] = True
        entered.set()
        await release.wait()
        return StopEvent(result="late")

    workflow = Workflow([plain_node if plain else async_node], persistence=persistence)
    task = asyncio.create_task(workflow.astart({"n": 1}, workflow_id="w"))
    await asyncio.wait_for(entered.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()  # let the abandoned thread end
    stored = await persistence.load("w")
    assert (stored.status, stored.state) == ("failed", {"n": 1})  # never "running"
    assert stored.error is not None and stored.error.type == "asyncio.exceptions.CancelledError"
    release.set()
    assert (await workflow.aresume("w")).result == "late"


@pytest.mark.parametrize("plain", [True, False], ids=["plain-node", "async-node"])
async def test_a_cancelled_run_is_saved_as_failed(astore: AsyncPersistence, plain: bool) -> None:
    await _cancel_mid_node(astore, plain)


async def test_a_cancelled_run_is_saved_as_failed_on_each_database(
    store: AsyncDatabasePersistence,  # noqa: F811 - the fixture imported above
) -> None:
    await _cancel_mid_node(store, plain=False)


# -- construction and the other API -------------------------------------------------------------


class AsyncCallable:
    async def __call__(self, event: StartEvent, state: WorkflowState) -> StopEvent:
        return StopEvent(result="called")


async def test_an_async_callable_instance_is_awaited() -> None:
    workflow = Workflow([AsyncCallable()])
    assert isinstance(workflow.persistence, AsyncInMemoryPersistence)  # the default for async
    assert (await workflow.astart()).result == "called"


def test_async_nodes_with_a_sync_persistence_are_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"'draft' is async def.*AsyncPersistence"):
        Workflow([draft, approve], persistence=InMemoryPersistence())
    with pytest.raises(WorkflowDefinitionError, match="AsyncCallable"):
        Workflow([AsyncCallable()], persistence=InMemoryPersistence())


def test_start_and_resume_on_an_async_persistence_name_astart_and_aresume() -> None:
    workflow = Workflow([draft, approve], persistence=AsyncInMemoryPersistence())
    with pytest.raises(WorkflowError, match=r"await workflow\.astart"):
        workflow.start()
    with pytest.raises(WorkflowError, match=r"await workflow\.aresume"):
        workflow.resume("w", "yes")


async def test_astart_and_aresume_on_a_sync_persistence_name_start_and_resume() -> None:
    workflow = flows.approval_workflow(InMemoryPersistence())
    with pytest.raises(WorkflowError, match=r"workflow\.start\(\.\.\.\) instead of astart"):
        await workflow.astart()
    with pytest.raises(WorkflowError, match=r"workflow\.resume\(\.\.\.\) instead of aresume"):
        await workflow.aresume("w", "yes")


async def test_a_sync_node_returning_a_coroutine_fails_clearly_without_a_warning() -> None:
    async def later() -> StopEvent:
        return StopEvent()

    class Disguised:  # a sync wrapper around an async function
        def __call__(self, event: StartEvent, state: WorkflowState) -> Any:
            return later()

    workflow = Workflow([Disguised()], persistence=AsyncInMemoryPersistence())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WorkflowDefinitionError, match=r"returned coroutine.*async def"):
            await workflow.astart(workflow_id="w")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert (await workflow.persistence.load("w")).status == "failed"  # type: ignore[misc]


def test_interrupt_outside_a_node_says_where_it_works() -> None:
    with pytest.raises(WorkflowError, match="astart"):
        interrupt("?")
