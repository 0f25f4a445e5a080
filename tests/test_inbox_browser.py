"""The inbox in a real browser: Debian's chromium, driven by Playwright, against
``workflow-persistence serve`` running as a process on a loopback port.

Runs are seeded first; then a person logs in with the printed token URL, sees the waiting
runs, opens one, answers it with a button, and sees it leave the list, and the store says
the run completed with that answer. A question holding ``<script>`` and Markdown shows as
text, and a second tab on the same run gets "already answered". Every step leaves a
screenshot under ``$WFP_ARTIFACTS/inbox-browser`` (or pytest's tmp directory; the path is
printed). Without chromium the tests fail, naming what to install: they are never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    expect,
    sync_playwright,
)

from workflow_persistence import DatabasePersistence, WorkflowSnapshot
from workflow_persistence.migrations import upgrade

from .inbox_browser_flows import approval_workflow
from .inbox_flows import refund_workflow
from .test_inbox_serve import serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
USER = "ana@example.test"
#: A question as an LLM might write it, with a script and markup that must stay text.
XSS = (
    "<script>alert(1)</script> **Refund** the [invoice](javascript:alert(2))"
    " <img src=x onerror=alert(3)>"
)
#: The typed (yes/no) runs: id -> the state they start with. 1044's deadline has passed.
REFUNDS = {
    "refund-1042": {"amount": 120, "customer": "Acme GmbH", "reason": "Parcel arrived damaged"},
    "refund-1043": {"amount": 2400, "customer": "Globex Ltd", "reason": "Charged twice"},
    "refund-1044": {"amount": 35, "customer": "Initech", "reason": "Late delivery",
                    "seconds": 0.001},
    "refund-1045": {"amount": 980, "customer": "Umbrella Corp", "reason": "Order cancelled"},
}

Shoot = Callable[[Page, str], None]


@dataclass(frozen=True)
class Served:
    login_url: str  # what serve printed: the address with ?token=
    base: str  # the address without it
    store: DatabasePersistence  # the same database, from the test's side


@pytest.fixture(scope="module")
def artefacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("WFP_ARTIFACTS")
    path = Path(given) / "inbox-browser" if given else tmp_path_factory.mktemp("inbox-browser")
    path.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even while output is captured
            reporter.write_line(f"\ninbox browser test: screenshots in {path}")
    return path


@pytest.fixture
def shoot(artefacts: Path, request: pytest.FixtureRequest) -> Shoot:
    """``shoot(page, "step")``: a full-page screenshot, numbered in the test's order."""
    prefix = request.node.name.removeprefix("test_")
    taken: list[str] = []

    def take(page: Page, step: str) -> None:
        taken.append(step)
        page.screenshot(path=artefacts / f"{prefix}-{len(taken):02d}-{step}.png", full_page=True)

    return take


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's chromium"
            " (apt-get install -y chromium; .ci/browser does it)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        # Playwright's own browser download is not used: Debian's chromium is.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = f"sqlite:///{tmp_path_factory.mktemp('inbox-browser-db') / 'inbox.db'}"
    upgrade(url)
    store = DatabasePersistence(url, create_table=False)
    for workflow_id, state in REFUNDS.items():
        approval_workflow(store).start(state, workflow_id=workflow_id)
    refund_workflow(store).start({"amount": 15, "question": XSS}, workflow_id="refund-xss")
    try:
        with serving(url, "tests.inbox_browser_flows:WORKFLOWS", user=USER) as printed:
            parts = urlsplit(printed)
            yield Served(printed, f"{parts.scheme}://{parts.netloc}", store)
    finally:
        store.close()


def log_in(context: BrowserContext, served: Served) -> Page:
    page = context.new_page()
    page.goto(served.login_url)
    assert page.url == served.base + "/", "the token should leave the address bar"
    return page


def answered(snapshot: WorkflowSnapshot) -> list[tuple[object, object, object]]:
    return [(d.answer, d.answered_by, d.answered_via)
            for d in snapshot.history if d.answered_at is not None]


def test_without_the_token_nothing_is_shown(
    browser: Browser, served: Served, shoot: Shoot
) -> None:
    context = browser.new_context()
    page = context.new_page()
    for path in ("/", "/runs/refund-1042", "/?token=not-the-token"):
        response = page.goto(served.base + path)
        assert response is not None and response.status == 401, path
        assert "refund-1042" not in page.content()
        shoot(page, "refused")
    expect(page.locator("body")).to_contain_text("wrong token")
    page.goto(served.base + "/")
    expect(page.locator("h1")).to_have_text("Sign in required")
    context.close()


def test_answer_a_waiting_run_through_the_form(
    browser: Browser, served: Served, shoot: Shoot
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = log_in(context, served)
    rows = page.locator("table.runs tbody tr")
    for workflow_id in [*REFUNDS, "refund-xss"]:
        expect(rows.filter(has_text=workflow_id)).to_have_count(1)
    shoot(page, "waiting-runs")
    overdue = rows.first  # the overdue run leads the page, marked as such
    expect(overdue).to_contain_text("refund-1044")
    expect(overdue.locator(".badge.late")).to_have_text("overdue")
    page.goto(served.base + "/?workflow=refund-approval")  # the picture for the README
    shoot(page, "waiting-refund-approvals")

    page.get_by_role("link", name="Refund 120 EUR to Acme GmbH?").click()
    page.wait_for_url(served.base + "/runs/refund-1042")
    expect(page.locator("h1")).to_have_text("Refund 120 EUR to Acme GmbH?")
    expect(page.locator(".answer button")).to_have_text(["Approve", "Reject"])
    expect(page.locator("table.history")).to_contain_text("waiting")
    shoot(page, "run")

    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(served.base + "/?flash=*")
    expect(page.get_by_role("status")).to_have_text("answer recorded; the run is completed")
    expect(rows.filter(has_text="refund-1043")).to_have_count(1)
    expect(rows.filter(has_text="refund-1042")).to_have_count(0)
    shoot(page, "answered")
    context.close()

    snapshot = served.store.load("refund-1042")  # kept for a day once completed
    assert (snapshot.status, snapshot.result) == ("completed", True)
    assert answered(snapshot) == [(True, USER, "resume")]


def test_a_stale_page_says_already_answered(
    browser: Browser, served: Served, shoot: Shoot
) -> None:
    context = browser.new_context()
    first = log_in(context, served)
    second = context.new_page()
    for tab in (first, second):
        tab.goto(served.base + "/runs/refund-1043")
        expect(tab.get_by_role("button", name="Reject")).to_be_visible()

    first.get_by_role("button", name="Approve").click()
    first.wait_for_url(served.base + "/?flash=*")
    with second.expect_response(lambda r: r.url.endswith("/answer")) as posted:
        second.get_by_role("button", name="Reject").click()
    assert posted.value.status == 409
    expect(second.locator("h1")).to_have_text("Already answered")
    expect(second.locator("main")).to_contain_text("already answered: run 'refund-1043'")
    expect(second.locator("main")).to_contain_text("nothing was done")
    shoot(second, "stale-tab")
    context.close()

    snapshot = served.store.load("refund-1043")
    assert (snapshot.status, snapshot.result) == ("completed", True)
    assert answered(snapshot) == [(True, USER, "resume")]  # the Reject changed nothing


def test_a_question_holding_script_and_markdown_stays_text(
    browser: Browser, served: Served, shoot: Shoot
) -> None:
    # Without the Content-Security-Policy only the escaping keeps the script from running.
    context = browser.new_context(bypass_csp=True)
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    context.on("page", lambda page: page.on("dialog", record))
    page = log_in(context, served)
    link = page.get_by_role("link", name=XSS)
    expect(link).to_have_text(XSS)
    shoot(page, "list")
    link.click()
    page.wait_for_url(served.base + "/runs/refund-xss")
    expect(page.locator("h1")).to_have_text(XSS)
    expect(page.locator("pre.value").first).to_contain_text('"question": "<script>alert(1)')
    assert page.locator("main script, main img, main strong, main a[href^=javascript]").count() == 0
    shoot(page, "run")

    page.get_by_label("Your answer").fill("<img src=x onerror=alert(4)> yes")
    page.get_by_role("button", name="Send answer").click()
    page.wait_for_url(served.base + "/?flash=*")
    expect(page.get_by_role("link", name=XSS)).to_have_count(0)
    assert not served.store.exists("refund-xss")  # completed, and not kept
    assert dialogs == []
    page.evaluate("() => alert('probe')")  # a dialog would have been seen
    assert dialogs == ["probe"]
    context.close()
