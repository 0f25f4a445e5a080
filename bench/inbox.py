"""The inbox's list page: time to render 50 waiting runs out of 10^5 stored.

SQLite (a file) and PostgreSQL are bulk-filled with 10^5 runs (10^4 in QUICK mode) of
bench/listing.py's mix (40% interrupted, 10 tenants, 10 workflow names). The inbox app
(``create_app`` over the ten workflows and a ``DatabasePersistence``) is called in
process through httpx's ASGI transport: ``GET /`` renders the first page of 50 waiting
runs, as an operator who sees every tenant and as a user limited to one tenant
(``Access.metadata``); ``GET /api/runs`` gives the same page as JSON. Timed end to end:
authorize, the list query (run in a worker thread), the template, the response.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
from _harness import QUICK, bench_database, format_table, interleaved
from listing import NAMES, fill_runs
from scale import new_persistence
from starlette.requests import Request

from workflow_persistence import StartEvent, StopEvent, Workflow, WorkflowState
from workflow_persistence.inbox import Access, create_app

KINDS = ["sqlite", "postgresql"]
COUNT = 10**4 if QUICK else 10**5
OPERATIONS = 200
PAGE = 50


def _log(message: str) -> None:
    print(f"[inbox] {message}", file=sys.stderr, flush=True)


def finish(event: StartEvent, state: WorkflowState) -> StopEvent:
    return StopEvent()


def access_of(request: Request) -> Access:
    tenant = request.headers.get("x-tenant")
    return Access("bench") if tenant is None else Access("bench", {"tenant": tenant})


def bench_kind(kind: str, directory: Path) -> list[list[object]]:
    with bench_database(kind, directory) as db:
        persistence = new_persistence(db)
        seconds = fill_runs(db, persistence, COUNT)
        _log(f"{kind}: {COUNT} runs in {seconds:.1f} s")
        workflows = [Workflow([finish], name=name, persistence=persistence) for name in NAMES]
        app = create_app(workflows, persistence=persistence, authorize=access_of)
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")

        def get(path: str, **headers: str) -> None:
            response = loop.run_until_complete(client.get(path, headers=headers))
            assert response.status_code == 200, response.text[:200]

        page = loop.run_until_complete(client.get("/api/runs"))
        assert len(page.json()["runs"]) == PAGE, page.text[:200]
        contenders: dict[str, Callable[[], object]] = {
            "page, every tenant": lambda: get("/"),
            "page, one tenant": lambda: get("/", **{"x-tenant": "tenant-3"}),
            "API, every tenant": lambda: get("/api/runs"),
        }
        stats = interleaved(contenders, operations=OPERATIONS)
        loop.run_until_complete(client.aclose())
        loop.close()
        persistence.close()
    return [
        [kind, name, f"{s.p50_us / 1000:.2f}", f"{s.p99_us / 1000:.2f}"]
        for name, s in stats.items()
    ]


def run() -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in KINDS:
            rows += bench_kind(kind, Path(directory))
    head = (
        f"`GET /` of the inbox (first page: {PAGE} waiting runs) with {COUNT:,} runs stored,"
        " in process through httpx's ASGI transport.\n\n"
    )
    return head + format_table(["database", "request", "p50 ms", "p99 ms"], rows)


if __name__ == "__main__":
    print(run())
