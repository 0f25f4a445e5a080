"""Named workflows for the inbox and picture tests, importable by ``serve`` in a subprocess.

``WORKFLOWS`` store their runs where ``$WFP_INBOX_TEST_URL`` points (in memory when it is
unset), so a test and the ``serve`` it starts share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from workflow_persistence import (
    AsyncPersistence,
    DatabasePersistence,
    Event,
    InMemoryPersistence,
    Persistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)

from .flows import Drafted, draft  # the README's first node: draft(amount) -> Drafted


@dataclass
class Approved(Event):
    answer: str


def approve(event: Drafted, state: WorkflowState) -> Approved:
    answer = interrupt({"question": state.get("question", "Approve?"), "draft": event.text})
    state["answer"] = answer
    return Approved(str(answer))


def pay(event: Approved, state: WorkflowState) -> StopEvent:
    if state.get("fail_payment"):
        raise RuntimeError(state.get("failure", "the bank said no"))
    return StopEvent(result=event.answer)


def refund_workflow(persistence: Persistence | AsyncPersistence | None = None) -> Workflow:
    return Workflow([draft, approve, pay], name="refund", persistence=persistence)


@dataclass
class Counted(Event):
    n: int


def begin(event: StartEvent, state: WorkflowState) -> Counted:
    return Counted(0)


def count(event: Counted, state: WorkflowState) -> Counted | StopEvent:
    if event.n >= 2:
        return StopEvent(result=event.n)
    interrupt(f"step {event.n}")
    return Counted(event.n + 1)


def loop_workflow(persistence: Persistence | None = None) -> Workflow:
    return Workflow([begin, count], name="loop", persistence=persistence)


# -- typed answers: a form from the answer's schema -----------------------------------------


@dataclass
class Payout:
    """What the approver decides."""

    approve: bool
    amount: int
    note: str | None = None


def review(event: StartEvent, state: WorkflowState) -> StopEvent:
    decision = interrupt({"question": "Pay out?", "asked": state.get("amount")}, answer=Payout)
    sure = interrupt("Really?", answer=bool)
    return StopEvent(result={"approve": decision.approve and sure, "amount": decision.amount})


def payout_workflow(persistence: Persistence | AsyncPersistence | None = None) -> Workflow:
    return Workflow([review], name="payout", persistence=persistence, types=[Payout],
                    keep_completed=timedelta(days=1))


def _persistence() -> Persistence:
    url = os.environ.get("WFP_INBOX_TEST_URL")
    return InMemoryPersistence() if url is None else DatabasePersistence(url, create_table=False)


_shared = _persistence()
WORKFLOWS = [refund_workflow(_shared), loop_workflow(_shared), payout_workflow(_shared)]
REFUND = WORKFLOWS[0]
