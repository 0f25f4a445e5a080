"""Run every benchmark and print one markdown report.

    make bench                       # or: cd bench && ../.venv/bin/python run.py
    WFP_BENCH_QUICK=1 make bench     # a smoke run with few iterations

Each section measures the library and its comparison in the same run, interleaved, so
the ratios hold on a noisy machine; absolute figures depend on the machine.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable

import async_database
import concurrency
import contention
import handwritten
import inbox
import listing
import memory
import migration
import persistence
import pgbouncer
import repository
import scale
import serializer
import session
import tracing
import vs_langgraph

import workflow_persistence

SECTIONS: list[tuple[str, Callable[[], str]]] = [
    ("Serialization", serializer.run),
    ("DatabasePersistence vs the raw driver", persistence.run),
    ("DatabasePersistence vs the hand-written statement", handwritten.run),
    ("The repository in a caller's transaction vs the raw driver", repository.run),
    ("SessionPersistence in a caller's transaction vs the hand-written one", session.run),
    ("Against LangGraph's checkpointers", vs_langgraph.run),
    ("AsyncDatabasePersistence vs the raw async driver and AsyncPostgresSaver", async_database.run),
    ("Peak memory of a 64 MiB snapshot", memory.run),
    ("Scale: 10^6 records, prune, list", scale.run),
    ("Contention: 2 processes x 4 threads", contention.run),
    ("List what waits: 10^3 vs 10^6 runs", listing.run),
    ("Migration to revision 2 on a full table", migration.run_section),
    ("200 concurrent runs: async on one loop vs sync in 8 threads", concurrency.run),
    ("Through PgBouncer in transaction mode vs direct", pgbouncer.run),
    ("The inbox's list page: 50 waiting runs out of 10^5", inbox.run),
    ("OpenTelemetry: 1 KiB save/load without the API, with it, with an SDK", tracing.run),
]


def main(argv: list[str]) -> None:
    wanted = {name.lower() for name in argv}
    print("# workflow-persistence benchmarks\n")
    print(
        f"workflow-persistence {workflow_persistence.__version__}, Python"
        f" {platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    for title, run in SECTIONS:
        if wanted and not any(w in title.lower() for w in wanted):
            continue
        started = time.perf_counter()
        print(f"## {title}\n", flush=True)
        print(run())
        print(f"\n_({time.perf_counter() - started:.0f} s)_\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
