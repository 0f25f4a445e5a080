"""The refund's approval: score the risk (async), then ask a person (a plain node)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from db import engine

from workflow_persistence import (
    AsyncDatabasePersistence,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)


@dataclass
class Scored(Event):
    risk: float


async def score_risk(event: StartEvent, state: WorkflowState) -> Scored:
    """Where a real app awaits a fraud service or a model; awaited on the event loop."""
    amount: Decimal = state["amount"]
    risk = min(1.0, float(amount) / 1000 + (0.3 if state["customer"].endswith(".test") else 0))
    return Scored(risk=round(risk, 2))


def ask_a_person(event: Scored, state: WorkflowState) -> StopEvent:
    """A plain function: the runtime runs it in a worker thread, off the loop."""
    approved = interrupt({
        "question": f"Refund {state['amount']} EUR to {state['customer']}?",
        "risk": event.risk,
    })
    return StopEvent(result=bool(approved))


# The app's Alembic creates the library's table (its packaged branch): create_table=False.
persistence = AsyncDatabasePersistence(engine, create_table=False)
approval = Workflow([score_risk, ask_a_person], name="refund-approval", persistence=persistence)
