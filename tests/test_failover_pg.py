"""A PostgreSQL failover under load: a primary and its synchronous standby, the library on
a multi-host URL (``host=a,b`` with ``target_session_attrs=read-write``).

While four threads save, load and resume runs, the standby is promoted and the primary
stopped. During the switch the only error is StorageUnavailableError; afterwards the same
persistence serves again without a restart (its leased connections to the old primary are
found broken and replaced), every save that returned a version is there with it, and
every run being resumed finishes or is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from workflow_persistence import (
    AsyncDatabasePersistence,
    DatabasePersistence,
    StartEvent,
    StopEvent,
    StorageUnavailableError,
    Workflow,
    WorkflowNotFoundError,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)

from .topology_pg import FailoverPair, failover_pair

THREADS = 4
RUNS_PER_THREAD = 400  # more than a thread resumes during the test
AFTER_SWITCH = 40  # calls each thread must make without error once the switch is over
#: A call a worker makes: a method name and its arguments.
Op = tuple[str, tuple[Any, ...]]
TIMEOUT = 10.0  # the persistence's timeout: a call hung on the old primary ends by then


@pytest.fixture
def pair() -> Iterator[FailoverPair]:
    """A fresh pair per test: the switch leaves the standby alone as the primary."""
    with failover_pair() as started:
        yield started


@dataclass
class Tally:
    """What one thread (or task) saw."""

    acked: dict[str, int] = field(default_factory=dict)  # id -> version a save returned
    unsure: set[str] = field(default_factory=set)  # a later save of it failed
    resumed: set[str] = field(default_factory=set)  # resume returned "completed"
    cut_off: set[str] = field(default_factory=set)  # resume raised mid-switch
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, error
    unexpected: list[str] = field(default_factory=list)
    calls_after: int = 0  # successful rounds after the switch
    back_at: float = 0.0  # when a round first succeeded again after the last failure

    def saving(self, workflow_id: str) -> None:
        self.unsure.add(workflow_id)

    def saved(self, workflow_id: str, version: int) -> None:
        self.acked[workflow_id] = version
        self.unsure.discard(workflow_id)

    def failed(self, began: float, step: str, exc: Exception, stop: threading.Event) -> None:
        if isinstance(exc, StorageUnavailableError):
            self.failures.append((began, time.monotonic(), f"{step}: {exc}"))
            self.calls_after = 0
        else:  # anything else fails the test
            self.unexpected.append(f"{step}: {type(exc).__name__}: {exc}")
            stop.set()

    def succeeded(self, switched: threading.Event) -> None:
        if self.failures and self.failures[-1][1] > self.back_at:
            self.back_at = time.monotonic()
        if switched.is_set():
            self.calls_after += 1


class Scenario:
    """The runs, the side effect of their node, and what each worker saw."""

    def __init__(self) -> None:
        self.executed: Counter[str] = Counter()
        self.runs = [[f"run-{t}-{n}" for n in range(RUNS_PER_THREAD)] for t in range(THREADS)]
        self.tallies = [Tally() for _ in range(THREADS)]
        self.switched = threading.Event()  # the primary is stopped
        self.stop = threading.Event()

    def workflow(self, persistence: object) -> Workflow:
        executed = self.executed

        def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
            answer = interrupt("go?")
            executed[state.workflow_id] += 1  # the side effect: once per run, ideally
            return StopEvent(result=answer)

        return Workflow([ask], persistence=persistence, name="failover")  # type: ignore[arg-type]

    def worker(self, index: int) -> Generator[Op, Any, None]:
        """One worker's rounds: save a record twice, load it, resume a run. Each call is
        yielded as ``(method, args)`` for a driver to make (sync or async) and send back
        its result or throw its exception in."""
        tally = self.tallies[index]
        pending = iter(self.runs[index])
        round_ = 0
        while not self.stop.is_set():
            round_ += 1
            workflow_id = f"save-{index}-{round_}"
            began = time.monotonic()
            step = "save"
            try:
                for n in (1, 2):
                    tally.saving(workflow_id)
                    snapshot = WorkflowSnapshot(workflow_id, state={"n": n})
                    tally.saved(workflow_id, (yield "save", (snapshot, n - 1)))
                step = "load"
                loaded = yield "load", (workflow_id,)
                assert (loaded.version, loaded.state) == (2, {"n": 2})
                step = "resume"
                run_id = next(pending, None)
                if run_id is not None:
                    tally.cut_off.add(run_id)
                    assert (yield "resume", (run_id, "yes")).status == "completed"
                    tally.cut_off.discard(run_id)
                    tally.resumed.add(run_id)
            except Exception as exc:
                tally.failed(began, step, exc, self.stop)
                continue
            tally.succeeded(self.switched)

    def switch_over(self, pair: FailoverPair) -> str:
        """Promote the standby, stop the primary, wait until every worker is served
        again; the figures."""
        time.sleep(1.0)  # normal service before the switch
        began = time.monotonic()
        pair.standby.promote()
        promoted = time.monotonic()
        pair.primary.stop("fast")
        self.switched.set()
        stopped = time.monotonic()
        deadline = stopped + 60
        tallies = self.tallies
        while not self.stop.is_set() and any(t.calls_after < AFTER_SWITCH for t in tallies):
            if time.monotonic() > deadline:
                self.stop.set()
                pytest.fail(f"not served again within 60 s: {[t.failures[-3:] for t in tallies]}")
            time.sleep(0.05)
        self.stop.set()
        assert [text for t in tallies for text in t.unexpected] == []
        failures = sorted(f for t in tallies for f in t.failures)
        assert failures, "the switch went unnoticed: nothing was tested"
        assert [f for f in failures if f[1] < began] == []  # only the switch fails calls
        unavailable = max(t.back_at for t in tallies) - began
        return (
            f"promoted in {promoted - began:.2f} s, old primary stopped"
            f" {stopped - promoted:.2f} s later; {len(failures)} StorageUnavailableError,"
            f" the last worker served again {unavailable:.2f} s after the switch began;"
            f" {sum(len(t.acked) for t in tallies)} records saved,"
            f" {sum(len(t.resumed) for t in tallies)} runs resumed"
        )

    def check(self, store: DatabasePersistence) -> str:
        """Nothing acknowledged is lost, every run resumed finishes; the figures."""
        # Every save that returned a version is there with it (a later save that failed
        # may or may not have landed).
        for tally in self.tallies:
            for workflow_id, version in tally.acked.items():
                stored = store.load(workflow_id)
                assert stored.state == {"n": stored.version}
                allowed = {version, version + 1} if workflow_id in tally.unsure else {version}
                assert stored.version in allowed, workflow_id
        # Runs cut off mid-resume: finished, or resumed again, or taken over.
        workflow = self.workflow(store)
        found: Counter[str] = Counter()
        cut_off = {run_id for t in self.tallies for run_id in t.cut_off}
        for run_id in cut_off:
            try:
                stored = store.load(run_id)
            except WorkflowNotFoundError:
                found["completed"] += 1  # its completion landed before the connection broke
                continue
            found[stored.status] += 1
            if stored.status == "running":  # the claim landed, nothing after it
                result = workflow.resume(run_id, take_over=True)
            else:  # "interrupted": the claim did not land; "failed": settled as failed
                result = workflow.resume(run_id, "yes" if stored.status == "interrupted" else None)
            assert result.status == "completed"
        resumed = {run_id for t in self.tallies for run_id in t.resumed}
        executed = self.executed
        for run_id in resumed | cut_off:
            assert not store.exists(run_id)  # completed: nothing left waiting or running
            assert executed[run_id] >= 1  # none lost
        # Every run's node ran once: a resume whose node had run writes its completion
        # through the switch (the runtime tries it again for a few seconds, and checks
        # whether a try whose connection broke had landed), so none is run again.
        assert all(executed[run_id] == 1 for run_id in resumed)
        again = sum(1 for run_id in cut_off if executed[run_id] > 1)
        assert again == 0, f"{again} runs ran their node again"
        return f"runs cut off mid-resume, as found afterwards: {dict(found)}; {again} ran again"


def test_failover_under_load(pair: FailoverPair) -> None:
    scenario = Scenario()
    store = DatabasePersistence(pair.url(), timeout=TIMEOUT)
    workflow = scenario.workflow(store)
    for mine in scenario.runs:
        for workflow_id in mine:
            workflow.start(workflow_id=workflow_id)
    calls: dict[str, Callable[..., Any]] = {
        "save": lambda snapshot, expected: store.save(snapshot, expected_version=expected),
        "load": store.load,
        "resume": workflow.resume,
    }

    def work(index: int) -> None:
        ops = scenario.worker(index)
        with contextlib.suppress(StopIteration):
            name, args = next(ops)
            while True:
                try:
                    result = calls[name](*args)
                except Exception as exc:
                    name, args = ops.throw(exc)
                else:
                    name, args = ops.send(result)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        figures = scenario.switch_over(pair)
    finally:
        scenario.stop.set()
        for thread in threads:
            thread.join()
    print(f"\nfailover, DatabasePersistence: {figures}; {scenario.check(store)}")
    store.close()


async def test_async_failover_under_load(pair: FailoverPair) -> None:
    scenario = Scenario()
    store = AsyncDatabasePersistence(pair.url(), timeout=TIMEOUT)
    workflow = scenario.workflow(store)
    for mine in scenario.runs:
        for workflow_id in mine:
            await workflow.astart(workflow_id=workflow_id)
    calls: dict[str, Callable[..., Awaitable[Any]]] = {
        "save": lambda snapshot, expected: store.save(snapshot, expected_version=expected),
        "load": store.load,
        "resume": workflow.aresume,
    }

    async def work(index: int) -> None:
        ops = scenario.worker(index)
        with contextlib.suppress(StopIteration):
            name, args = next(ops)
            while True:
                try:
                    result = await calls[name](*args)
                except Exception as exc:
                    name, args = ops.throw(exc)
                else:
                    name, args = ops.send(result)

    tasks = [asyncio.create_task(work(n)) for n in range(THREADS)]
    try:
        figures = await asyncio.to_thread(scenario.switch_over, pair)
    finally:
        scenario.stop.set()
        await asyncio.gather(*tasks)
        await store.aclose()
    with DatabasePersistence(pair.url(), timeout=TIMEOUT) as checker:
        print(f"\nfailover, AsyncDatabasePersistence: {figures}; {scenario.check(checker)}")
