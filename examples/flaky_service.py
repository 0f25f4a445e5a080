"""A node that calls a flaky service: it retries, fails, is inspected, and is resumed.

    python examples/flaky_service.py                  # local SQLite file flaky.db

The payment service is down: the node is tried three times, then the run is saved as
"failed" with the error. An operator looks at it with the command line; once the
service is back, ``resume(workflow_id)`` retries the node and the run completes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

from workflow_persistence import (
    DatabasePersistence,
    Event,
    RetryPolicy,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowFailedError,
    WorkflowState,
)


class PaymentService:
    """Stands in for a remote service that is down until someone fixes it."""

    up = False
    calls = 0

    @classmethod
    def charge(cls, amount: int) -> str:
        cls.calls += 1
        if not cls.up:
            raise ConnectionError("payment service unavailable (HTTP 503)")
        return f"charge-{amount}-ok"


@dataclass
class Invoiced(Event):
    amount: int


def invoice(event: StartEvent, state: WorkflowState) -> Invoiced:
    state["invoice"] = f"INV-{state['order']}"
    return Invoiced(amount=state["amount"])


@RetryPolicy(max_attempts=3, backoff=0.05)  # this node's own policy
def charge(event: Invoiced, state: WorkflowState) -> StopEvent:
    state["receipt"] = PaymentService.charge(event.amount)
    return StopEvent(result=state["receipt"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:///flaky.db")
    args = parser.parse_args()
    persistence = DatabasePersistence(args.url)
    workflow = Workflow([invoice, charge], persistence=persistence)

    try:
        workflow.start({"order": 1017, "amount": 30}, workflow_id="order-1017")
    except WorkflowFailedError as exc:
        print(f"failed: {exc}")
        print(f"the node was called {PaymentService.calls} times; the cause: {exc.__cause__!r}")

    print("\n$ workflow-persistence show order-1017")
    shown = subprocess.run(  # noqa: S603 - our own CLI, our own arguments
        [sys.executable, "-m", "workflow_persistence.cli", "show", "order-1017", "--url", args.url],
        capture_output=True, text=True, check=True,
    )
    print(shown.stdout)

    PaymentService.up = True  # the service is back
    run = workflow.resume("order-1017")
    print(f"resumed: {run.status}, receipt {run.result}")
    persistence.close()


if __name__ == "__main__":
    main()
