"""A claimed run's writes ride out a short outage, so no node runs again.

The persistence here is the real in-memory backend with one write made to fail the way
a failover fails it: before the write reaches the store, or after it landed (the answer
lost with the connection).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from workflow_persistence import (
    Event,
    InMemoryPersistence,
    StartEvent,
    StopEvent,
    StorageUnavailableError,
    Workflow,
    WorkflowSnapshot,
    WorkflowState,
    interrupt,
)


class Failover(InMemoryPersistence):
    """After ``skip`` calls of one method, fails the next ``times``: ``"before"`` the write
    reaches the store or ``"after"`` it landed."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: dict[str, tuple[str, int, int]] = {}

    def _outage(self, method: str, write: Any) -> Any:
        when, skip, times = self.plan.get(method, ("", 0, 0))
        if skip or not times:
            self.plan[method] = (when, max(skip - 1, 0), times)
            return write()
        self.plan[method] = (when, 0, times - 1)
        if when == "after":
            write()
        raise StorageUnavailableError(f"{method}: the connection broke ({when} the write)")

    def save(self, snapshot: WorkflowSnapshot, *, expected_version: int | None = None) -> int:
        return self._outage(  # type: ignore[no-any-return]
            "save", lambda: super(Failover, self).save(snapshot, expected_version=expected_version)
        )

    def delete(self, workflow_id: str, *, expected_version: int | None = None) -> bool:
        return self._outage(  # type: ignore[no-any-return]
            "delete",
            lambda: super(Failover, self).delete(workflow_id, expected_version=expected_version),
        )


@dataclass
class Approved(Event):
    answer: str


def flow(store: Failover, ran: Counter[str]) -> Workflow:
    def ask(event: StartEvent, state: WorkflowState) -> Approved:
        answer = interrupt("go?")
        ran["ask"] += 1
        return Approved(answer)

    def act(event: Approved, state: WorkflowState) -> StopEvent:
        ran["act"] += 1
        return StopEvent(result=event.answer)

    return Workflow([ask, act], persistence=store)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(("method", "times"), [("save", 1), ("save", 3), ("delete", 2)])
def test_a_completing_run_writes_through_an_outage_and_runs_each_node_once(
    method: str, times: int, when: str
) -> None:
    store, ran = Failover(), Counter[str]()
    workflow = flow(store, ran)
    workflow.start(workflow_id="r")
    # The claim goes through; then the checkpoint after "ask", or the final delete, fails.
    store.plan[method] = (when, 1 if method == "save" else 0, times)
    result = workflow.resume("r", "yes")
    assert (result.status, result.result) == ("completed", "yes")
    assert ran == Counter(ask=1, act=1)
    assert not store.exists("r")
    assert store.plan[method][1:] < (1, times)  # the outage really happened


def test_a_long_outage_still_fails_the_run_for_a_later_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workflow_persistence._runtime import machine

    monkeypatch.setattr(machine, "OUTAGE_SECONDS", 0.2)
    store, ran = Failover(), Counter[str]()
    workflow = flow(store, ran)
    workflow.start(workflow_id="r")
    store.plan["delete"] = ("before", 0, 1000)
    with pytest.raises(StorageUnavailableError):
        workflow.resume("r", "yes")
    store.plan.clear()
    assert store.load("r").status == "failed"
