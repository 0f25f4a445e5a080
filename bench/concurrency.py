"""200 concurrent runs on PostgreSQL: async on one event loop, and sync in 8 threads.

Each run is a two-node workflow with one interrupt: ``start`` runs the first node and
pauses at the second's question (a claim and a save), ``resume`` answers it and completes
the run (a load, a claim, the delete). A round starts 200 runs at once, waits for all of
them, then resumes all 200 at once; its throughput is 200 over the round's wall time.

* async: ``AsyncDatabasePersistence(url)``, ``asyncio.gather`` of 200 ``astart`` then 200
  ``aresume`` on one loop, with ``async def`` nodes; and the same with plain nodes, which
  the runtime runs in worker threads.
* sync: ``DatabasePersistence(url)``, the same 200 ``start`` then ``resume`` calls on a
  ``ThreadPoolExecutor(8)``.

Both persistences come from a URL, as an app would make them, so each has the pool the
library gives it (SQLAlchemy's default: 5 connections, 10 more under load). Contenders
alternate round by round on the same database; every run must complete with its answer.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _harness import QUICK, bench_database, format_table
from sqlalchemy.engine import URL

from workflow_persistence import (
    AsyncDatabasePersistence,
    DatabasePersistence,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)

RUNS = 200
THREADS = 8
ROUNDS = 2 if QUICK else 7  # per contender, after one warm-up round each


@dataclass
class Drafted(Event):
    amount: int


def draft(event: StartEvent, state: WorkflowState) -> Drafted:
    return Drafted(amount=state["amount"])


def approve(event: Drafted, state: WorkflowState) -> StopEvent:
    return StopEvent(result=interrupt({"question": f"Refund {event.amount} EUR?"}))


async def draft_async(event: StartEvent, state: WorkflowState) -> Drafted:
    return Drafted(amount=state["amount"])


async def approve_async(event: Drafted, state: WorkflowState) -> StopEvent:
    return StopEvent(result=interrupt({"question": f"Refund {event.amount} EUR?"}))


def _ids(name: str, round_number: int) -> list[str]:
    return [f"{name}-{round_number}-{i}" for i in range(RUNS)]


def _check(results: list[Any], ids: list[str]) -> None:
    if [r.workflow_id for r in results] != ids or any(r.result != "yes" for r in results):
        raise AssertionError("a run did not complete with its answer")


async def _async_round(workflow: Workflow, ids: list[str]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(workflow.astart({"amount": 30}, workflow_id=i) for i in ids))
    results = await asyncio.gather(*(workflow.aresume(i, "yes") for i in ids))
    elapsed = time.perf_counter() - started
    _check(list(results), ids)
    return elapsed


def _sync_round(workflow: Workflow, pool: ThreadPoolExecutor, ids: list[str]) -> float:
    started = time.perf_counter()
    list(pool.map(lambda i: workflow.start({"amount": 30}, workflow_id=i), ids))
    results = list(pool.map(lambda i: workflow.resume(i, "yes"), ids))
    elapsed = time.perf_counter() - started
    _check(results, ids)
    return elapsed


def measure(url: URL) -> dict[str, list[float]]:
    """Seconds per round of each contender, in alternating rounds."""
    text = url.render_as_string(hide_password=False)
    async_store = AsyncDatabasePersistence(text)
    sync_store = DatabasePersistence(text)
    workflows = {
        "async nodes": Workflow([draft_async, approve_async], persistence=async_store),
        "plain nodes": Workflow([draft, approve], persistence=async_store),
    }
    sync_workflow = Workflow([draft, approve], persistence=sync_store)
    seconds: dict[str, list[float]] = {"async nodes": [], "plain nodes": [], "sync": []}
    with asyncio.Runner() as runner, ThreadPoolExecutor(THREADS) as pool:
        contenders: dict[str, Callable[[list[str]], float]] = {
            name: _on(runner, partial(_async_round, workflow))
            for name, workflow in workflows.items()
        }
        contenders["sync"] = lambda ids: _sync_round(sync_workflow, pool, ids)
        order = list(contenders)
        for name in order:  # warm-up: connections, compiled statements, threads
            contenders[name](_ids(f"warm-{name}", 0))
        for round_number in range(ROUNDS):
            for name in order if round_number % 2 == 0 else order[::-1]:
                seconds[name].append(contenders[name](_ids(name, round_number)))
        runner.run(async_store.aclose())
    sync_store.close()
    return seconds


def _on(
    runner: asyncio.Runner, round_: Callable[[list[str]], Coroutine[Any, Any, float]]
) -> Callable[[list[str]], float]:
    """A round run to its end on the runner's one loop (the persistence's loop)."""
    return lambda ids: runner.run(round_(ids))


LABELS = {
    "async nodes": f"async, one event loop, {RUNS} tasks (async def nodes)",
    "plain nodes": f"async, one event loop, {RUNS} tasks (plain nodes, in threads)",
    "sync": f"sync, ThreadPoolExecutor({THREADS})",
}
HEADERS = ["database", "API", "runs/s (median)", "slowest round", "fastest round"]


def run() -> str:
    with tempfile.TemporaryDirectory() as directory, bench_database(
        "postgresql", Path(directory)
    ) as db:
        seconds = measure(db.url)
    rows = []
    for name, per_round in seconds.items():
        rates = [RUNS / s for s in per_round]
        rows.append([
            "postgresql", LABELS[name], f"{statistics.median(rates):,.0f}",
            f"{min(rates):,.0f}", f"{max(rates):,.0f}",
        ])
    note = (
        f"\n\n{ROUNDS} rounds of {RUNS} runs each; a run is `start` (first node, pause at the"
        " interrupt) then `resume` (answer, complete, delete)."
    )
    return format_table(HEADERS, rows) + note


def main(argv: list[str]) -> None:
    print(f"## {RUNS} concurrent runs: async on one loop vs sync in {THREADS} threads\n")
    print(run())


if __name__ == "__main__":
    main(sys.argv[1:])
