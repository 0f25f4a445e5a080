"""The workflows the browser test serves: ``serve --workflows tests.inbox_browser_flows:WORKFLOWS``.

``refund-approval`` asks a typed yes/no question (``answer=bool``, so the page shows
Approve and Reject buttons) with a deadline, and keeps its completed runs so the test can
read the answer back; ``refund`` is the untyped one of the inbox tests (free-text answer).
Both store where ``$WFP_INBOX_TEST_URL`` points, like ``tests.inbox_flows``.
"""

from __future__ import annotations

from datetime import timedelta

from workflow_persistence import (
    AsyncPersistence,
    Persistence,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)

from .flows import Drafted, draft
from .inbox_flows import REFUND

#: How long a refund may wait for its answer, unless the run's state says otherwise.
ANSWER_WITHIN = timedelta(days=2)


def decide(event: Drafted, state: WorkflowState) -> StopEvent:
    approved = interrupt(
        {"question": f"{event.text} to {state['customer']}?", "reason": state["reason"]},
        answer=bool,
        timeout=timedelta(seconds=state.get("seconds", ANSWER_WITHIN.total_seconds())),
        default=False,
    )
    state["approved"] = approved
    return StopEvent(result=approved)


def approval_workflow(persistence: Persistence | AsyncPersistence | None) -> Workflow:
    return Workflow([draft, decide], name="refund-approval", persistence=persistence,
                    keep_completed=timedelta(days=1))


APPROVAL = approval_workflow(REFUND.persistence)
WORKFLOWS = [APPROVAL, REFUND]
