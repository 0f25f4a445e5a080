"""AsyncDatabasePersistence at 1 KiB against the raw async driver and LangGraph's
AsyncPostgresSaver, on one event loop, in one run.

The raw side is the plainest async code that keeps a snapshot (as bench/handwritten.py,
on its ``raw_snapshots(workflow_id PRIMARY KEY, data)`` table): ``pickle.dumps`` of the
snapshot and one upsert of ``(workflow_id, data)``; one ``SELECT data`` and
``pickle.loads``. As there, a run is saved again because it moved on: both sides save a
snapshot whose state changed since its last save (untimed), since an unchanged row is no
write at all on InnoDB and SQLite. Drivers:
psycopg's ``AsyncConnection`` (autocommit, binary results), an aiomysql cursor
(autocommit), aiosqlite (autocommit, the file in WAL mode like ours).

LangGraph: ``AsyncPostgresSaver`` on a psycopg ``AsyncConnection`` set up as its
``from_conn_string`` does; ``aput`` of a new checkpoint of the thread (the whole state in
one channel, its cheapest layout; built before the timer, as bench/vs_langgraph.py does)
against our ``save``, ``aget_tuple`` against our ``load``.

Contenders run in alternating rounds (as ``_harness.interleaved``, but awaited on one
loop), each going round ``RECORDS`` existing records. Targets: >= 0.9x the raw driver,
>= 1.2x LangGraph.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import (
    QUICK,
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    sized_state,
    snapshot,
)
from vs_langgraph import LangGraphThread

from workflow_persistence import AsyncDatabasePersistence, WorkflowSnapshot

OPERATIONS = 200 if QUICK else 2000
ROUNDS = 10
RECORDS = 50
RAW_TABLE = "raw_snapshots"
KINDS = ("postgresql", "mariadb", "sqlite")

Call = Callable[[], Awaitable[object]]


async def interleaved_async(
    contenders: dict[str, Call], operations: int, setup: Callable[[str], object] | None = None
) -> dict[str, Stats]:
    """Time each contender ``operations`` times in ``ROUNDS`` alternating rounds;
    ``setup(name)``, if given, runs untimed before each call."""
    for name, call in contenders.items():
        for _ in range(20):
            if setup:
                setup(name)
            await call()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, operations // ROUNDS)
    clock = time.perf_counter
    for _ in range(ROUNDS):
        for name, call in contenders.items():
            kept = samples[name]
            for _ in range(per_round):
                if setup:
                    setup(name)
                started = clock()
                await call()
                kept.append(clock() - started)
    return {name: Stats(kept) for name, kept in samples.items()}


class RawAsync:
    """The hand-written side on the async driver of ``db``."""

    def __init__(self, db: BenchDatabase) -> None:
        self.db = db
        self.conn: Any = None
        kind = db.kind
        self.upsert = {
            "postgresql": f"INSERT INTO {RAW_TABLE} (workflow_id, data) VALUES (%s, %s)"
            " ON CONFLICT (workflow_id) DO UPDATE SET data = excluded.data",
            "mariadb": f"INSERT INTO {RAW_TABLE} (workflow_id, data) VALUES (%s, %s)"
            " ON DUPLICATE KEY UPDATE data = VALUES(data)",
            "sqlite": f"INSERT INTO {RAW_TABLE} (workflow_id, data) VALUES (?, ?)"
            " ON CONFLICT (workflow_id) DO UPDATE SET data = excluded.data",
        }[kind]
        mark = "?" if kind == "sqlite" else "%s"
        self.select = f"SELECT data FROM {RAW_TABLE} WHERE workflow_id = {mark}"

    async def open(self) -> None:
        url, kind = self.db.url, self.db.kind
        if kind == "postgresql":
            import psycopg

            self.conn = await psycopg.AsyncConnection.connect(
                host=url.host, port=url.port, user=url.username, dbname=url.database,
                autocommit=True,
            )
            self.cursor = self.conn.cursor()
            blob = "BYTEA"
        elif kind == "mariadb":
            import aiomysql  # type: ignore[import-untyped]

            from workflow_persistence._sql.aiomysql_bytes import repair

            repair()  # aiomysql 0.3.2 cannot send bytes on PyMySQL 1.2.3+ without it
            self.conn = await aiomysql.connect(
                host=url.host, port=url.port or 3306, user=url.username, db=url.database,
                autocommit=True, charset="utf8mb4",
            )
            self.cursor = await self.conn.cursor()
            blob = "LONGBLOB"
        else:
            import aiosqlite

            self.conn = await aiosqlite.connect(url.database or "", isolation_level=None)
            await self.conn.execute("PRAGMA journal_mode=WAL")
            self.cursor = await self.conn.cursor()
            blob = "BLOB"
        await self.cursor.execute(
            f"CREATE TABLE {RAW_TABLE} (workflow_id VARCHAR(255) PRIMARY KEY, data {blob})"
        )

    async def save(self, snap: WorkflowSnapshot) -> None:
        await self.cursor.execute(self.upsert, (snap.workflow_id, pickle.dumps(snap, protocol=5)))

    async def load(self, workflow_id: str) -> WorkflowSnapshot:
        if self.db.kind == "postgresql":
            await self.cursor.execute(self.select, (workflow_id,), binary=True)
        else:
            await self.cursor.execute(self.select, (workflow_id,))
        snap: WorkflowSnapshot = pickle.loads((await self.cursor.fetchone())[0])
        return snap

    async def close(self) -> None:
        await self.conn.close() if self.db.kind != "mariadb" else self.conn.close()


async def measure(db: BenchDatabase) -> list[list[object]]:
    state = sized_state(1024)
    url = db.url.set(drivername={"postgresql": "postgresql+psycopg", "mariadb": "mysql+aiomysql",
                                 "sqlite": "sqlite+aiosqlite"}[db.kind])
    ours = AsyncDatabasePersistence(url)
    raw = RawAsync(db)
    await raw.open()
    ids = [f"wf-{n}" for n in range(RECORDS)]
    snaps = {side: [snapshot(i, dict(state)) for i in ids] for side in ("ours", "raw")}
    for first, second in zip(snaps["ours"], snaps["raw"], strict=True):
        await ours.save(first)
        await raw.save(second)
    cycles = {side: itertools.cycle(snaps[side]) for side in snaps}
    step = itertools.count()
    pending: dict[str, WorkflowSnapshot] = {}

    def moved_on(side: str) -> None:
        """The next record of ``side``, its state changed since its last save (LangGraph's
        side writes a new checkpoint each time)."""
        if side not in cycles:
            return
        snap = pending[side] = next(cycles[side])
        snap.state["step"] = next(step)

    next_id = itertools.cycle(ids).__next__
    contenders: dict[str, dict[str, Call]] = {
        "save": {
            "ours": lambda: ours.save(pending["ours"]),
            "raw": lambda: raw.save(pending["raw"]),
        },
        "load": {
            "ours": lambda: ours.load(next_id()),
            "raw": lambda: raw.load(next_id()),
        },
    }
    langgraph = await _langgraph(db, state, ids) if db.kind == "postgresql" else None
    if langgraph is not None:
        put, get = langgraph[0]
        contenders["save"]["langgraph"] = put
        contenders["load"]["langgraph"] = get
    rows: list[list[object]] = []
    for operation, calls in contenders.items():
        setup = moved_on if operation == "save" else None
        stats = await interleaved_async(calls, OPERATIONS, setup)
        mine, theirs = stats["ours"], stats["raw"]
        lang = stats.get("langgraph")
        rows.append([
            db.kind, operation, f"{mine.ops:,.0f}", f"{mine.p50_us:.0f}", f"{theirs.ops:,.0f}",
            f"{mine.ops / theirs.ops:.2f}x", "-" if lang is None else f"{lang.ops:,.0f}",
            "-" if lang is None else f"{mine.ops / lang.ops:.2f}x",
        ])
    await ours.aclose()
    await raw.close()
    if langgraph is not None:
        await langgraph[1].close()
    return rows


async def _langgraph(
    db: BenchDatabase, state: dict[str, Any], ids: list[str]
) -> tuple[tuple[Call, Call], Any]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    url = db.url
    conn = await AsyncConnection.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database,
        autocommit=True, prepare_threshold=0, row_factory=dict_row,
    )
    saver = AsyncPostgresSaver(conn)
    await saver.setup()
    threads = [LangGraphThread(saver, i, state, "one channel") for i in ids]
    for thread in threads:
        thread.prepare()
        await _aput(thread)
    next_thread = itertools.cycle(threads).__next__

    async def put() -> None:
        thread = next_thread()
        thread.prepare()  # the graph loop's work, outside the saver (not worth timing apart)
        await _aput(thread)

    async def get() -> None:
        thread = next_thread()
        found = await saver.aget_tuple(thread.latest)
        assert found is not None

    return (put, get), conn


async def _aput(thread: LangGraphThread) -> None:
    assert thread.pending is not None
    checkpoint, metadata, versions = thread.pending
    thread.config = await thread.saver.aput(thread.config, checkpoint, metadata, versions)
    thread.versions = versions
    thread.pending = None


def run() -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in KINDS:
            with bench_database(kind, Path(directory)) as db:
                rows.extend(asyncio.run(measure(db)))
    headers = ["database", "op", "ours ops/s", "ours p50 µs", "raw async ops/s", "vs raw",
               "LangGraph ops/s", "vs LangGraph"]
    return (
        format_table(headers, rows)
        + "\n\nTargets: >= 0.9x the raw async driver, >= 1.2x LangGraph's AsyncPostgresSaver."
    )


if __name__ == "__main__":
    print(run())
    sys.exit(0)
