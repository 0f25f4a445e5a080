"""A purchase that needs a manager's approval: the run pauses, survives, and continues.

    python examples/approval.py                       # local SQLite file approval.db
    python examples/approval.py --url postgresql://postgres@127.0.0.1/test

The first half starts the run and stops at the manager's question; the second half is
what a later request (a web hook, a button in an admin page) does: resume it by id.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from decimal import Decimal

from workflow_persistence import (
    DatabasePersistence,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)


@dataclass
class Quoted(Event):
    vendor: str
    total: Decimal


@dataclass
class Approved(Event):
    by: str


def request_quote(event: StartEvent, state: WorkflowState) -> Quoted:
    total = Decimal(state["unit_price"]) * state["quantity"]
    state["total"] = total
    return Quoted(vendor=state["vendor"], total=total)


def manager_approval(event: Quoted, state: WorkflowState) -> Approved | StopEvent:
    decision = interrupt(
        {"question": f"Buy from {event.vendor} for {event.total} EUR?", "total": event.total}
    )
    if decision["approved"]:
        return Approved(by=decision["manager"])
    return StopEvent(result=f"rejected by {decision['manager']}: {decision.get('reason')}")


def place_order(event: Approved, state: WorkflowState) -> StopEvent:
    ordered = f"ordered {state['quantity']} x {state['item']}"
    return StopEvent(result=f"{ordered}, approved by {event.by}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:///approval.db")
    args = parser.parse_args()
    persistence = DatabasePersistence(args.url)
    workflow = Workflow([request_quote, manager_approval, place_order], persistence=persistence)

    run = workflow.start(
        {"item": "laptop", "quantity": 3, "unit_price": "1249.90", "vendor": "ACME"},
        metadata={"user": "ana", "department": "engineering"},
    )
    print(f"run {run.workflow_id}: {run.status}, asking: {run.interrupt['question']}")

    # ... later, maybe in another process: the manager clicks "approve".
    paused = persistence.load(run.workflow_id)
    print(f"stored at version {paused.version}, waiting at node {paused.current_node!r}")
    run = workflow.resume(run.workflow_id, {"approved": True, "manager": "maria"})
    print(f"run {run.workflow_id}: {run.status}: {run.result}")
    persistence.close()


if __name__ == "__main__":
    main()
