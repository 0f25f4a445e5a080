"""``workflow-persistence serve`` as a real process on a loopback port: the token it
prints logs in; without it nothing is shown."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from workflow_persistence import DatabasePersistence
from workflow_persistence.migrations import upgrade

from .inbox_flows import refund_workflow
from .test_cli import SCRIPT

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(url: str, workflows: str, *, user: str) -> Iterator[str]:
    """``serve --workflows WORKFLOWS --url URL`` in a subprocess on a free loopback port;
    yields the URL it printed (with its token) once the port accepts connections."""
    port = free_port()
    env = {**os.environ, "WFP_INBOX_TEST_URL": url}
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--workflows", workflows, "--url", url,
         "--port", str(port), "--user", user],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"The inbox is at http://127.0.0.1:{port}/?token="), line
        printed = line.split(" at ", 1)[1].strip()
        deadline = time.monotonic() + 30
        while True:  # until the port accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "serve did not start listening"
                time.sleep(0.05)
        yield printed
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the printed URL with its token, the database URL) of a running ``serve``."""
    url = f"sqlite:///{tmp_path / 'inbox.db'}"
    upgrade(url)
    with serving(url, "tests.inbox_flows:WORKFLOWS", user="operator-1") as printed:
        yield printed, url


def test_serve_refuses_without_the_token_and_works_with_it(served: tuple[str, str]) -> None:
    printed, url = served
    store = DatabasePersistence(url)
    workflow = refund_workflow(store)
    run = workflow.start({"amount": 12}, workflow_id="served-1")
    parts = urlsplit(printed)
    base = f"{parts.scheme}://{parts.netloc}"
    token = parse_qs(parts.query)["token"][0]
    assert len(token) >= 24

    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/").status_code == 401
        assert client.get("/api/runs").status_code == 401
        assert client.get("/?token=" + "x" * len(token)).status_code == 401
        login = client.get(f"/?token={token}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = client.get("/")
        assert page.status_code == 200 and "served-1" in page.text
        csrf = client.get("/api/session").json()["csrf_token"]
        done = client.post("/api/runs/served-1/answer", json={"version": run.version,
                                                              "answer": "yes"},
                           headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200 and done.json()["status"] == "completed"
    assert not store.exists("served-1")
    with httpx.Client(base_url=base, timeout=30) as stranger:  # no cookie: still refused
        assert stranger.get("/api/runs").status_code == 401
    store.close()
