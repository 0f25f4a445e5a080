"""A property-based run of the inbox's OpenAPI document (schemathesis): whatever a client
sends that the document allows, or nearly, the API answers without a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from starlette.requests import Request

from workflow_persistence import InMemoryPersistence
from workflow_persistence.inbox import Access, create_app
from workflow_persistence.inbox._security import SESSION_COOKIE, Csrf

from .inbox_flows import loop_workflow, refund_workflow

KEY = b"schemathesis" * 3
SESSION = "fixed-session"
TOKEN = Csrf(KEY).token(SESSION, "root")


def authorize(request: Request) -> Access | None:
    return Access("root") if request.headers.get("x-user") == "root" else None


store = InMemoryPersistence()
refund, loop = refund_workflow(store), loop_workflow(store)
for i in range(3):
    refund.start({"amount": i}, workflow_id=f"r-{i}", metadata={"tenant": "acme"})
loop.start(workflow_id="l-0")
app = create_app([refund, loop], persistence=store, authorize=authorize, secret_key=KEY)
schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,  # the same examples on every run
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_never_answers_5xx(case: Any) -> None:
    # Signed in, with a valid CSRF token, so the answer and retry code runs too.
    case.headers = {
        **(case.headers or {}),
        "x-user": "root",
        "X-CSRF-Token": TOKEN,
        "Cookie": f"{SESSION_COOKIE}={SESSION}",
    }
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    assert response.headers["x-content-type-options"] == ["nosniff"]
