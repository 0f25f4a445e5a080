"""The FastAPI example (examples/fastapi_app) as a user runs it, over real HTTP.

On each database: the example's own ``alembic upgrade heads`` (a subprocess, the app's
plain ``DATABASE_URL``), then uvicorn serving ``main:app`` on a free loopback port, then
requests with httpx. What the database holds afterwards is read directly.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from .conftest import DATABASES
from .hostapp.support import ALEMBIC, cli_env, connected, run, url_text

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app"
STARTUP_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_listening(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll the port until uvicorn accepts, failing at once if it exits."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.poll() is not None:
            pytest.fail(f"uvicorn exited {server.returncode}:\n{log.read_text()}", pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not listen within {STARTUP_SECONDS} s:\n"
                            f"{log.read_text()}", pytrace=False)
            time.sleep(0.05)  # the next poll, not a guess at readiness


@dataclass
class Served:
    kind: str
    url: URL  # with the sync driver, for looking into the database
    env: dict[str, str]
    http: httpx.Client

    def alembic(self, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run([ALEMBIC, *args], cwd=EXAMPLE, env=self.env, expect_ok=expect_ok)

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with connected(self.url) as connection:
            return [tuple(r) for r in connection.execute(sa.text(sql), params)]

    def create(self, order_id: str, amount: str = "30.00") -> httpx.Response:
        body = {"order_id": order_id, "customer": "ana@example.com", "amount": amount}
        return self.http.post("/refunds", json=body)

    def waiting(self) -> dict[str, dict[str, Any]]:
        response = self.http.get("/approvals")
        assert response.status_code == 200, response.text
        return {item["id"]: item for item in response.json()}


@pytest.fixture(scope="module", params=DATABASES)
def served(
    request: pytest.FixtureRequest,
    new_database_url: Callable[[str], URL],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """The example migrated by its own Alembic and served by uvicorn on one database."""
    kind = str(request.param)
    url = new_database_url(kind)
    # What a user puts in DATABASE_URL: no driver; the library picks the async one.
    plain = url.set(drivername=url.get_backend_name())
    env = cli_env({"DATABASE_URL": url_text(plain)})
    log = tmp_path_factory.mktemp(f"uvicorn-{kind}") / "server.log"
    run([ALEMBIC, "upgrade", "heads"], cwd=EXAMPLE, env=env)
    port = free_port()
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=EXAMPLE, env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(server, port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield Served(kind, url, env, http)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_upgrade_heads_made_both_branches_tables(served: Served) -> None:
    with connected(served.url) as connection:
        tables = set(sa.inspect(connection).get_table_names())
    assert tables == {"refunds", "workflow_interrupts", "alembic_version"}
    # Both branches at their heads: the library's and the app's own first revision.
    assert sorted(served.rows("SELECT version_num FROM alembic_version")) == [
        ("f256721210b2",), ("wfp_0003",)
    ]
    current = served.alembic("current").stdout.split()
    assert "wfp_0003" in current
    assert "f256721210b2" in current


def test_a_refund_waits_for_approval_then_is_approved(served: Served) -> None:
    order = f"order-{uuid4().hex[:8]}"
    created = served.create(order, "120.50")
    assert created.status_code == 201, created.text
    refund = created.json()
    assert refund["status"] == "pending"
    assert refund["order_id"] == order

    pending = served.waiting()[refund["id"]]
    assert pending["question"] == "Refund 120.50 EUR to ana@example.com?"
    assert pending["risk"] == 0.12  # the async node's score
    stored = served.rows(
        "SELECT status, workflow_name, current_node FROM workflow_interrupts"
        " WHERE workflow_id = :id", id=refund["id"],
    )
    assert stored == [("interrupted", "refund-approval", "ask_a_person")]

    answered = served.http.post(
        f"/approvals/{refund['id']}", json={"approve": True, "version": pending["version"]}
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "approved"
    assert refund["id"] not in served.waiting()
    # The finished run is gone and the decision stored, committed together.
    assert served.rows(
        "SELECT workflow_id FROM workflow_interrupts WHERE workflow_id = :id", id=refund["id"]
    ) == []
    assert served.rows("SELECT status FROM refunds WHERE id = :id", id=refund["id"]) == [
        ("approved",)
    ]


def test_a_rejected_refund(served: Served) -> None:
    refund = served.create(f"order-{uuid4().hex[:8]}").json()
    version = served.waiting()[refund["id"]]["version"]
    answered = served.http.post(
        f"/approvals/{refund['id']}", json={"approve": False, "version": version}
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "rejected"
    assert served.rows("SELECT status FROM refunds WHERE id = :id", id=refund["id"]) == [
        ("rejected",)
    ]


def test_a_refund_that_cannot_be_stored_leaves_no_run(served: Served) -> None:
    """The second refund of an order fails at commit, after its run was started: the
    rollback takes the run with it."""
    order = f"order-{uuid4().hex[:8]}"
    first = served.create(order)
    assert first.status_code == 201, first.text
    runs_before = served.rows("SELECT workflow_id FROM workflow_interrupts")
    second = served.create(order)
    assert second.status_code == 409, second.text
    assert order in second.json()["detail"]
    assert served.rows("SELECT workflow_id FROM workflow_interrupts") == runs_before
    assert served.rows("SELECT id FROM refunds WHERE order_id = :o", o=order) == [
        (first.json()["id"],)
    ]
    assert first.json()["id"] in served.waiting()


def test_a_second_or_stale_answer_is_409(served: Served) -> None:
    refund = served.create(f"order-{uuid4().hex[:8]}").json()
    version = served.waiting()[refund["id"]]["version"]
    stale = served.http.post(
        f"/approvals/{refund['id']}", json={"approve": True, "version": version + 1}
    )
    assert stale.status_code == 409, stale.text
    assert refund["id"] in served.waiting()  # nothing happened
    assert served.rows("SELECT status FROM refunds WHERE id = :id", id=refund["id"]) == [
        ("pending",)
    ]
    first = served.http.post(
        f"/approvals/{refund['id']}", json={"approve": False, "version": version}
    )
    assert first.status_code == 200, first.text
    again = served.http.post(
        f"/approvals/{refund['id']}", json={"approve": True, "version": version}
    )
    assert again.status_code == 409, again.text
    assert served.rows("SELECT status FROM refunds WHERE id = :id", id=refund["id"]) == [
        ("rejected",)
    ]
    unknown = served.http.post("/approvals/no-such-refund", json={"approve": True, "version": 1})
    assert unknown.status_code == 404


def test_alembic_check_proposes_nothing(served: Served) -> None:
    done = served.alembic("check")
    assert "No new upgrade operations detected" in done.stdout + done.stderr


def test_two_answers_at_once_one_wins(served: Served) -> None:
    refund = served.create(f"order-{uuid4().hex[:8]}").json()
    version = served.waiting()[refund["id"]]["version"]

    def answer(approve: bool) -> httpx.Response:
        body = {"approve": approve, "version": version}
        return served.http.post(f"/approvals/{refund['id']}", json=body)

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(answer, [True, False]))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 409], [r.text for r in responses]
    (winner,) = [r for r in responses if r.status_code == 200]
    assert served.rows("SELECT status FROM refunds WHERE id = :id", id=refund["id"]) == [
        (winner.json()["status"],)
    ]
