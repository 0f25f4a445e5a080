"""The approvals inbox through its ASGI app (httpx): pages and API, refusals, escaping.

The runs are real (started by the workflows of tests/inbox_flows.py) and stored in
memory, in SQLite and in PostgreSQL, sync and async.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL
from starlette.requests import Request

from workflow_persistence import (
    AsyncDatabasePersistence,
    DatabasePersistence,
    InMemoryPersistence,
    Persistence,
    Workflow,
)
from workflow_persistence.inbox import Access, create_app
from workflow_persistence.migrations import upgrade

from .inbox_flows import payout_workflow, refund_workflow

XSS = "<script>alert('x')</script> **bold** [link](javascript:alert(1))"

PEOPLE = {
    "ana": Access("ana", {"tenant": "acme"}),
    "bob": Access("bob", {"tenant": "globex"}),
    "eve": Access("eve", {"tenant": "acme"}, answer=False),
    "root": Access("root"),
}


def authorize(request: Request) -> Access | None:
    """The test's sign-in: an ``X-User`` header names one of PEOPLE."""
    return PEOPLE.get(request.headers.get("x-user", ""))


@dataclass
class Setup:
    workflow: Workflow
    store: Persistence
    client: httpx.AsyncClient

    def start(self, workflow_id: str, tenant: str = "acme", **state: Any) -> int:
        state.setdefault("amount", 1)
        result = self.workflow.start(state, workflow_id=workflow_id, metadata={"tenant": tenant})
        assert result.version is not None
        return result.version

    async def csrf(self, user: str = "ana") -> str:
        response = await self.client.get("/api/session", headers={"x-user": user})
        assert response.status_code == 200
        return str(response.json()["csrf_token"])

    async def answer(self, workflow_id: str, body: dict[str, Any], user: str = "ana",
                     csrf: str | None = None) -> httpx.Response:
        token = await self.csrf(user) if csrf is None else csrf
        return await self.client.post(
            f"/api/runs/{workflow_id}/answer", json=body,
            headers={"x-user": user, "X-CSRF-Token": token},
        )


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, new_database_url: Callable[[str], URL]) -> Iterator[
    Persistence
]:
    if request.param == "memory":
        yield InMemoryPersistence()
        return
    url = new_database_url(request.param).render_as_string(hide_password=False)
    upgrade(url)
    persistence = DatabasePersistence(url)
    yield persistence
    persistence.close()


@pytest.fixture
async def setup(store: Persistence) -> AsyncIterator[Setup]:
    workflow = refund_workflow(store)
    app = create_app([workflow], persistence=store, authorize=authorize, secret_key="k" * 32)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
        yield Setup(workflow, store, client)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


# -- the API -----------------------------------------------------------------------------


async def test_api_lists_shows_and_answers_a_waiting_run(setup: Setup) -> None:
    version = setup.start("r-1", amount=30)
    setup.start("r-2", tenant="globex")
    listed = await setup.client.get("/api/runs", headers={"x-user": "ana"})
    assert listed.status_code == 200
    runs = listed.json()["runs"]
    assert [r["workflow_id"] for r in runs] == ["r-1"]  # only ana's tenant
    assert runs[0]["question"] == {"question": "Approve?", "draft": "Refund 30 EUR"}
    assert runs[0]["version"] == version

    shown = (await setup.client.get("/api/runs/r-1", headers={"x-user": "ana"})).json()
    assert shown["status"] == "interrupted"
    assert shown["completed_nodes"] == ["draft"]
    assert shown["state"]["amount"] == 30
    assert "class n1 current" in shown["mermaid"]

    answered = await setup.answer("r-1", {"version": version, "answer": "yes"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"
    assert not setup.store.exists("r-1")
    again = await setup.answer("r-1", {"version": version, "answer": "yes"})
    assert again.status_code == 404  # the completed run left the store
    assert "already answered" in again.json()["detail"]


async def test_api_stale_version_is_409_and_answers_nothing(setup: Setup) -> None:
    version = setup.start("r-1")
    stale = await setup.answer("r-1", {"version": version - 1, "answer": "yes"})
    assert stale.status_code == 409
    assert "already answered" in stale.json()["detail"]
    snapshot = setup.store.load("r-1")
    assert snapshot.version == version and snapshot.status == "interrupted"
    assert snapshot.history[-1].answered_at is None


async def test_api_authorization_refusals(setup: Setup) -> None:
    version = setup.start("r-1")
    assert (await setup.client.get("/api/runs")).status_code == 401
    assert (await setup.client.get("/api/runs/r-1")).status_code == 401
    assert (await setup.client.get("/api/runs/r-1", headers={"x-user": "bob"})).status_code == 404
    missing = await setup.client.get("/api/runs/nope", headers={"x-user": "bob"})
    assert missing.status_code == 404  # the same as another tenant's run: ids do not leak
    not_his = await setup.answer("r-1", {"version": version, "answer": "y"}, user="bob")
    assert not_his.status_code == 404
    read_only = await setup.answer("r-1", {"version": version, "answer": "yes"}, user="eve")
    assert read_only.status_code == 403
    assert (await setup.client.get("/api/runs/r-1", headers={"x-user": "eve"})).status_code == 200
    assert setup.store.load("r-1").version == version


async def test_api_csrf_refusals(setup: Setup) -> None:
    version = setup.start("r-1")
    body = {"version": version, "answer": "yes"}
    assert (await setup.answer("r-1", body, csrf="")).status_code == 403
    assert (await setup.answer("r-1", body, csrf="0" * 64)).status_code == 403
    other = await setup.csrf("root")  # a token of another user's session
    assert (await setup.answer("r-1", body, csrf=other)).status_code == 403
    setup.client.cookies.clear()  # a token without its session cookie
    token = await setup.csrf()
    setup.client.cookies.clear()
    assert (await setup.answer("r-1", body, csrf=token)).status_code == 403
    assert setup.store.load("r-1").version == version


async def test_api_list_pages_with_the_cursor(setup: Setup) -> None:
    for i in range(5):
        setup.start(f"r-{i}")
    seen: list[str] = []
    url = "/api/runs?limit=2"
    while True:
        page = (await setup.client.get(url, headers={"x-user": "ana"})).json()
        seen += [r["workflow_id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        url = f"/api/runs?limit=2&cursor={page['next_cursor']}"
    assert sorted(seen) == [f"r-{i}" for i in range(5)]
    assert len(seen) == 5
    bad = await setup.client.get("/api/runs?cursor=garbage", headers={"x-user": "ana"})
    assert bad.status_code == 400
    bad = await setup.client.get("/api/runs?meta=bad%20key=1", headers={"x-user": "ana"})
    assert bad.status_code == 400


async def test_api_retry_a_failed_run(setup: Setup) -> None:
    version = setup.start("r-1", fail_payment=True, failure=XSS)
    failed = await setup.answer("r-1", {"version": version, "answer": "yes"})
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    snapshot = setup.store.load("r-1")
    listed = (await setup.client.get("/api/runs?status=failed", headers={"x-user": "ana"})).json()
    assert [r["workflow_id"] for r in listed["runs"]] == ["r-1"]
    token = await setup.csrf()
    retry = await setup.client.post(
        "/api/runs/r-1/retry", json={"version": snapshot.version},
        headers={"x-user": "ana", "X-CSRF-Token": token},
    )
    assert retry.status_code == 200 and retry.json()["status"] == "failed"
    stale = await setup.client.post(
        "/api/runs/r-1/retry", json={"version": snapshot.version},
        headers={"x-user": "ana", "X-CSRF-Token": token},
    )
    assert stale.status_code == 409


# -- the pages ---------------------------------------------------------------------------


async def test_pages_list_show_and_answer_through_the_form(setup: Setup) -> None:
    version = setup.start("r/1", amount=7)  # a slash in the id
    page = await setup.client.get("/", headers={"x-user": "ana"})
    assert page.status_code == 200
    assert 'href="/runs/r%2F1"' in page.text
    run = await setup.client.get("/runs/r%2F1", headers={"x-user": "ana"})
    assert run.status_code == 200
    assert f'name="version" value="{version}"' in run.text
    assert 'class="node current"' in run.text and "<svg" in run.text
    form = {"csrf_token": csrf_of(run.text), "version": str(version), "answer": "yes"}
    done = await setup.client.post("/runs/r%2F1/answer", data=form, headers={"x-user": "ana"})
    assert done.status_code == 303
    assert "completed" in done.headers["location"]
    assert not setup.store.exists("r/1")
    twice = await setup.client.post("/runs/r%2F1/answer", data=form, headers={"x-user": "ana"})
    assert twice.status_code == 404
    assert "already answered" in twice.text
    empty = await setup.client.get("/", headers={"x-user": "ana"})
    assert "r/1" not in empty.text


async def test_pages_refuse_without_csrf_or_access(setup: Setup) -> None:
    version = setup.start("r-1")
    assert (await setup.client.get("/")).status_code == 401
    run = await setup.client.get("/runs/r-1", headers={"x-user": "ana"})
    form = {"version": str(version), "answer": "yes"}
    refused = await setup.client.post("/runs/r-1/answer", data=form, headers={"x-user": "ana"})
    assert refused.status_code == 403
    form["csrf_token"] = "f" * 64
    refused = await setup.client.post("/runs/r-1/answer", data=form, headers={"x-user": "ana"})
    assert refused.status_code == 403
    form["csrf_token"] = csrf_of(run.text)
    other = await setup.client.post("/runs/r-1/answer", data=form, headers={"x-user": "bob"})
    assert other.status_code in (403, 404)  # bob's token differs, and the run is not his
    eve = await setup.client.get("/runs/r-1", headers={"x-user": "eve"})
    assert eve.status_code == 200 and "/answer" not in eve.text
    assert setup.store.load("r-1").version == version


async def test_pages_a_stale_form_answers_nothing(setup: Setup) -> None:
    version = setup.start("r-1")
    run = await setup.client.get("/runs/r-1", headers={"x-user": "ana"})
    form = {"csrf_token": csrf_of(run.text), "version": str(version - 1), "answer": "yes"}
    stale = await setup.client.post("/runs/r-1/answer", data=form, headers={"x-user": "ana"})
    assert stale.status_code == 409
    assert "Already answered" in stale.text
    assert setup.store.load("r-1").version == version


async def test_every_value_is_escaped(setup: Setup) -> None:
    setup.start("r-1", question=XSS, note=XSS)
    for url in ("/", "/runs/r-1"):
        page = await setup.client.get(url, headers={"x-user": "ana"})
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(" in page.text
        assert "**bold**" in page.text  # markdown shows as the text it is
        assert 'href="javascript' not in page.text
    version = setup.store.load("r-1").version
    await setup.answer("r-1", {"version": version, "answer": XSS})
    # The answer and the failure text of a failed run too.
    setup.start("r-2", fail_payment=True, failure=XSS)
    await setup.answer("r-2", {"version": setup.store.load("r-2").version, "answer": XSS})
    page = await setup.client.get("/runs/r-2", headers={"x-user": "ana"})
    assert "<script>" not in page.text
    assert page.text.count("&lt;script&gt;") >= 3  # question, answer, error


async def test_security_headers_on_every_response(setup: Setup) -> None:
    setup.start("r-1")
    for url in ("/", "/runs/r-1", "/api/runs", "/api/openapi.json", "/static/inbox.css"):
        response = await setup.client.get(url, headers={"x-user": "ana"})
        assert response.status_code == 200, url
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    setup.client.cookies.clear()
    page = await setup.client.get("/", headers={"x-user": "ana"})
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "<script" not in page.text  # no JavaScript needed, none shipped


async def test_mounted_under_a_prefix_links_stay_inside() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    store = InMemoryPersistence()
    workflow = refund_workflow(store)
    workflow.start({"amount": 1}, workflow_id="r-1", metadata={"tenant": "acme"})
    host = Starlette(routes=[Mount("/inbox", create_app(workflow, persistence=store,
                                                        authorize=authorize))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host),
                                 base_url="http://host.test") as client:
        page = await client.get("/inbox/", headers={"x-user": "ana"})
        assert 'href="/inbox/runs/r-1"' in page.text
        assert 'href="/inbox/static/inbox.css"' in page.text
        assert "path=/inbox/" in page.headers["set-cookie"].lower()
        css = await client.get("/inbox/static/inbox.css")
        assert css.status_code == 200 and "--ink" in css.text


async def test_async_persistence_and_async_authorize(
    new_database_url: Callable[[str], URL],
) -> None:
    url = new_database_url("sqlite").render_as_string(hide_password=False)
    upgrade(url)
    store = AsyncDatabasePersistence(url)
    workflow = refund_workflow(store)
    run = await workflow.astart({"amount": 1}, workflow_id="a-1", metadata={"tenant": "acme"})

    async def sign_in(request: Request) -> Access | None:
        return authorize(request)

    app = create_app(workflow, persistence=store, authorize=sign_in)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        token = (await client.get("/api/session", headers={"x-user": "ana"})).json()["csrf_token"]
        done = await client.post("/api/runs/a-1/answer", json={"version": run.version,
                                                                "answer": "yes"},
                                 headers={"x-user": "ana", "X-CSRF-Token": token})
        assert done.status_code == 200 and done.json()["status"] == "completed"
    assert not await store.exists("a-1")
    await store.aclose()


# -- typed answers: the form from the schema, 422 for a wrong answer -------------------------


@pytest.fixture
async def typed(store: Persistence) -> AsyncIterator[Setup]:
    workflow = payout_workflow(store)
    app = create_app([workflow], persistence=store, authorize=authorize, secret_key="k" * 32)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://inbox.test") as client:
        yield Setup(workflow, store, client)


async def test_a_typed_question_gets_fields_then_buttons_and_records_who(typed: Setup) -> None:
    version = typed.start("p-1", amount=40)
    page = await typed.client.get("/runs/p-1", headers={"x-user": "ana"})
    assert 'name="field:approve" value="true"' in page.text  # a checkbox
    assert 'name="field:amount" type="number" step="1"' in page.text
    assert 'name="field:note" type="text"' in page.text
    form = {"csrf_token": csrf_of(page.text), "version": str(version),
            "field:approve": "true", "field:amount": "40", "field:note": ""}
    bad = await typed.client.post("/runs/p-1/answer", data={**form, "field:amount": "forty"},
                                  headers={"x-user": "ana"})
    assert bad.status_code == 422 and "not a whole number" in bad.text
    done = await typed.client.post("/runs/p-1/answer", data=form, headers={"x-user": "ana"})
    assert done.status_code == 303

    second = await typed.client.get("/runs/p-1", headers={"x-user": "ana"})
    assert 'value="true" class="approve">Approve</button>' in second.text
    assert 'value="false" class="reject">Reject</button>' in second.text
    version = typed.store.load("p-1").version
    form = {"csrf_token": csrf_of(second.text), "version": str(version), "answer": "false"}
    done = await typed.client.post("/runs/p-1/answer", data=form, headers={"x-user": "ana"})
    assert done.status_code == 303
    kept = typed.store.load("p-1")  # a kept completed run: its history stays
    assert kept.status == "completed"
    assert kept.result == {"approve": False, "amount": 40}
    assert [(d.answered_by, d.answered_via) for d in kept.history] == [("ana", "resume")] * 2
    assert kept.history[1].answer is False
    again = await typed.client.post("/runs/p-1/answer", data=form, headers={"x-user": "ana"})
    assert again.status_code == 409 and "Already answered" in again.text


async def test_api_a_wrong_answer_is_422_and_the_run_stays(typed: Setup) -> None:
    version = typed.start("p-1", amount=40)
    shown = (await typed.client.get("/api/runs/p-1", headers={"x-user": "ana"})).json()
    assert shown["answer_schema"]["required"] == ["approve", "amount"]
    wrong_answer = {"approve": "maybe", "amount": 3}
    wrong = await typed.answer("p-1", {"version": version, "answer": wrong_answer})
    assert wrong.status_code == 422
    assert "approve" in wrong.json()["detail"]
    snapshot = typed.store.load("p-1")
    assert snapshot.version == version and snapshot.status == "interrupted"
    right = await typed.answer("p-1", {"version": version,
                                       "answer": {"approve": True, "amount": 3}})
    assert right.status_code == 200 and right.json()["status"] == "interrupted"
    assert typed.store.load("p-1").history[0].answered_by == "ana"
