"""What every benchmark shares: timing, interleaving, sample data, databases, tables.

Figures are only compared inside one run: the library and the raw driver are measured in
alternating rounds on the same database, so noise from the machine falls on both.
"""

from __future__ import annotations

import gc
import os
import random
import secrets
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from workflow_persistence import Decision, Event, StartEvent, WorkflowSnapshot

POSTGRESQL_ADMIN_URL = os.environ.get(
    "WFP_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("WFP_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
QUICK = os.environ.get("WFP_BENCH_QUICK") == "1"  # a smoke run: few iterations


# -- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Per-operation latency samples, in seconds."""

    samples: Sequence[float]

    @property
    def ops(self) -> float:
        return len(self.samples) / sum(self.samples)

    @property
    def p50_us(self) -> float:
        return statistics.median(self.samples) * 1e6

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    operations: int,
    rounds: int = 10,
    warmup: int = 20,
    setup: Callable[[str], object] | None = None,
    after_round: Callable[[str], object] | None = None,
) -> dict[str, Stats]:
    """Time each contender ``operations`` times, alternating rounds between them.

    ``setup(name)``, if given, runs before each timed call and is not timed (for
    example to create the record a delete will remove); ``after_round(name)`` runs,
    untimed, after each round of a contender (for example to commit).
    """
    if QUICK:
        operations, rounds, warmup = max(rounds, operations // 20), min(rounds, 4), 3
    for name, fn in contenders.items():
        for _ in range(warmup):
            if setup:
                setup(name)
            fn()
        if after_round:
            after_round(name)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, operations // rounds)
    order = list(contenders)
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_number in range(rounds):
            names = order if round_number % 2 == 0 else order[::-1]
            for name in names:
                fn = contenders[name]
                out = samples[name]
                for _ in range(per_round):
                    if setup:
                        setup(name)
                    started = clock()
                    fn()
                    out.append(clock() - started)
                if after_round:
                    after_round(name)
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Stats(values) for name, values in samples.items()}


# -- sample data ----------------------------------------------------------------------------


def realistic_state(seed: int = 1, *, messages: int = 20) -> dict[str, Any]:
    """50 keys of what workflows keep: text, numbers, nested lists and dicts, datetimes,
    and a chat transcript."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    base = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    words = ["refund", "order", "customer", "approve", "invoice", "pending", "manager", "note"]

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    state: dict[str, Any] = {}
    for i in range(14):
        state[f"text_{i}"] = text(1, 6)
    for i in range(10):
        state[f"count_{i}"] = rng.randint(0, 10**6)
    for i in range(5):
        state[f"ratio_{i}"] = rng.random()
    for i in range(5):
        state[f"at_{i}"] = base + timedelta(minutes=i)
    for i in range(5):
        state[f"list_{i}"] = [rng.randint(0, 100) for _ in range(8)]
    for i in range(5):
        state[f"nested_{i}"] = {"a": {"b": [1, 2, {"c": text(1, 3)}], "ok": True}, "n": None}
    state["flags"] = [True, False, None]
    state["approved"] = False
    state["amount"] = Decimal("30.00")
    state["customer"] = "ana@example.com"
    state["tags"] = ["refund", "eu"]
    state["messages"] = [
        {
            "role": rng.choice(["user", "assistant"]),
            "content": text(4, 20),
            "at": base + timedelta(seconds=i),
        }
        for i in range(messages)
    ]
    return state


def sized_state(target_bytes: int) -> dict[str, Any]:
    """A realistic state grown until its default encoding is about ``target_bytes``."""
    from workflow_persistence import JsonSerializer

    serializer = JsonSerializer(compress_threshold=None)
    if target_bytes <= 2048:
        state = realistic_state(messages=0)
        trim = [k for k in state if k.startswith(("text_", "nested_", "list_"))]
        while len(serializer.dumps(snapshot("x", state))) > target_bytes and trim:
            state.pop(trim.pop())
        return state
    state = realistic_state()
    seed = 2
    while len(serializer.dumps(snapshot("x", state))) < target_bytes:
        state[f"history_{seed}"] = realistic_state(seed)["messages"]
        seed += 1
    return state


def snapshot(workflow_id: str, state: dict[str, Any]) -> WorkflowSnapshot:
    """A snapshot as the runtime saves it at an interrupt."""
    asked = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    return WorkflowSnapshot(
        workflow_id,
        status="interrupted",
        state=state,
        current_node="approve",
        event=StartEvent(),
        completed_nodes=["draft", "check"],
        interrupt={"question": "Approve?"},
        history=[Decision("approve", {"question": "Approve?"}, asked_at=asked, step=2)],
        attempts={"draft": 1, "check": 1},
        metadata={"user": "ana", "tenant": "acme"},
    )


SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}


# -- databases ----------------------------------------------------------------------------


@dataclass
class BenchDatabase:
    kind: str  # sqlite | postgresql | mariadb
    url: URL
    drop: Callable[[], None]


@contextmanager
def bench_database(kind: str, directory: Path) -> Iterator[BenchDatabase]:
    """A fresh database of ``kind`` for one benchmark, removed afterwards."""
    if kind == "sqlite":
        path = directory / f"bench-{secrets.token_hex(4)}.db"
        yield BenchDatabase(kind, make_url(f"sqlite:///{path}"), lambda: None)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin_url = make_url(POSTGRESQL_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL)
    name = f"wfp_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")

    try:
        yield BenchDatabase(kind, admin_url.set(database=name), drop)
    finally:
        drop()
        admin.dispose()


def raw_connection(db: BenchDatabase) -> Any:
    """The driver's own connection, set up as a careful hand-written program would:
    autocommit for single statements."""
    url = db.url
    if db.kind == "sqlite":
        import sqlite3

        return sqlite3.connect(url.database or "", isolation_level=None, check_same_thread=False)
    if db.kind == "postgresql":
        import psycopg

        return psycopg.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True
        )
    import pymysql

    return pymysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, database=url.database,
        autocommit=True, charset="utf8mb4",
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def ratio(library: Stats, raw: Stats) -> str:
    """Library throughput over the raw driver's: above 1.00 the library is faster."""
    return f"{library.ops / raw.ops:.2f}x"


__all__ = [
    "QUICK",
    "SIZES",
    "BenchDatabase",
    "Event",
    "Stats",
    "bench_database",
    "format_table",
    "interleaved",
    "ratio",
    "raw_connection",
    "realistic_state",
    "sized_state",
    "snapshot",
]
