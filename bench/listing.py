"""What waits for a tenant: ``list(status=..., metadata=..., limit=50)`` on 10^3 and 10^6 runs.

On PostgreSQL, MariaDB and SQLite, two scratch databases of one kind are bulk-filled (as
bench/scale.py does: PostgreSQL binary ``COPY``, multi-row ``INSERT`` elsewhere), one with
10^3 runs and one with 10^6 (10^4 in QUICK mode). The runs are a realistic mix: 40%
interrupted, 40% completed (kept, expiring in 30 days), 15% failed, 5% running; 10
tenants and 10 workflow names, uniformly; ``updated_at`` spread over 30 days. Every row
carries what a save of its snapshot writes: the columns (from the library's own
``columns_of``) and ``data`` (the library's encoding of that snapshot, ~1 KiB).

``list(status="interrupted", metadata={"tenant": <random tenant>}, limit=50)`` is timed on
both tables in alternating rounds; its answer is checked (filters, order, and the count
against a plain ``COUNT(*)`` on the small table). Goal: the p50 at 10^6 within 1.5x of
the p50 at 10^3. The plan of the library's compiled statement on the big table is printed,
with a verdict on whether ``ix_workflow_interrupts_status_updated_at`` serves it.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import (
    QUICK,
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    interleaved,
    raw_connection,
    sized_state,
    snapshot,
)
from scale import (
    ID_DIGITS,
    Row,
    bulk_fill,
    column_values,
    id_encoder,
    new_persistence,
    postgresql_plans,
    settle,
    table_bytes,
)
from sqlalchemy import Engine, event

from workflow_persistence import (
    DatabasePersistence,
    ErrorInfo,
    StoredSnapshotInfo,
    WorkflowSnapshot,
)
from workflow_persistence._snapshot import SnapshotStatus
from workflow_persistence._sql.operations import list_parameters
from workflow_persistence._sql.statements import timestamp_processors
from workflow_persistence._storage.base import ListQuery
from workflow_persistence._storage.database import make_engine

KINDS = ["postgresql", "mariadb", "sqlite"]
SMALL = 10**3
BIG = 10**4 if QUICK else 10**6
STATUSES: dict[SnapshotStatus, int] = {
    "interrupted": 40, "completed": 40, "failed": 15, "running": 5
}
TENANTS = [f"tenant-{i}" for i in range(10)]
NAMES = [f"workflow-{i}" for i in range(10)]
SPREAD = timedelta(days=30)
LIMIT = 50
OPERATIONS = 600
TARGET = 1.5
INDEX = "ix_workflow_interrupts_status_updated_at"
TABLE = "workflow_interrupts"
#: SQLite only: the big table again through an Engine of the user's own with a bigger
#: page cache (the default is 2 MiB), or memory-mapped reads, to show what the default
#: page cache costs once the table outgrows it.
SQLITE_SETTINGS = {
    "cache_size 64 MiB": "PRAGMA cache_size = -65536",
    "mmap_size 2 GiB": "PRAGMA mmap_size = 2147483648",
}


def _log(message: str) -> None:
    print(f"[listing] {message}", file=sys.stderr, flush=True)


def _id(number: int) -> str:
    return f"wf-{number:0{ID_DIGITS}d}"


# -- the runs --------------------------------------------------------------------------------


Kind = tuple[SnapshotStatus, str, str]  # status, tenant, workflow name


def run_snapshot(workflow_id: str, state: dict[str, Any], kind: Kind) -> WorkflowSnapshot:
    """A run of ``kind`` as the runtime saves it."""
    status, tenant, name = kind
    snap = snapshot(workflow_id, state)
    snap.status = status
    snap.workflow_name = name
    snap.metadata = {"user": f"user-{tenant[-1]}", "tenant": tenant}
    if status != "interrupted":
        snap.interrupt = None
    if status == "completed":
        snap.current_node, snap.event, snap.result = None, None, True
        snap.expires_at = datetime.now(UTC) + SPREAD
    elif status == "failed":
        snap.error = ErrorInfo("approve", "TimeoutError", "the mail server did not answer",
                               "Traceback (most recent call last): ...")
    return snap


def kinds_of(count: int) -> list[Kind]:
    """The kind of each run, a reproducible mix."""
    rng = random.Random(count)  # noqa: S311 - sample data
    statuses = rng.choices(list(STATUSES), weights=list(STATUSES.values()), k=count)
    return [(s, rng.choice(TENANTS), rng.choice(NAMES)) for s in statuses]


def fill_runs(db: BenchDatabase, persistence: DatabasePersistence, count: int) -> float:
    """``count`` runs of the mix, bulk-inserted; seconds (statistics included)."""
    state = sized_state(1024)
    to_db, _ = timestamp_processors(persistence.engine.dialect)
    encoders: dict[Kind, Callable[[str], bytes]] = {}
    columns: dict[Kind, tuple[Any, ...]] = {}
    for kind in {(s, t, n) for s in STATUSES for t in TENANTS for n in NAMES}:
        def make(workflow_id: str, kind: Kind = kind) -> WorkflowSnapshot:
            return run_snapshot(workflow_id, state, kind)

        encoders[kind] = id_encoder(persistence, state, make)
        columns[kind] = column_values(db.kind, make(_id(0)), to_db)
    rng = random.Random(-count)  # noqa: S311 - sample data
    now = datetime.now(UTC)
    span = SPREAD.total_seconds()

    def rows() -> Iterator[Row]:
        for number, kind in enumerate(kinds_of(count)):
            workflow_id = _id(number)
            updated = now - timedelta(seconds=rng.uniform(0, span))
            created = to_db(updated - timedelta(seconds=rng.uniform(0, 3600)))
            yield (workflow_id, encoders[kind](workflow_id), 1 + number % 3, created,
                   to_db(updated), *columns[kind])

    started = time.perf_counter()
    filled = bulk_fill(db, rows())
    settle(db)
    assert filled == count
    return time.perf_counter() - started


# -- timing and checking ---------------------------------------------------------------------


def sqlite_engine(db: BenchDatabase, pragma: str) -> Engine:
    """The library's own engine settings plus ``pragma`` on every connection."""
    engine = make_engine(db.url)

    def apply(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(pragma)

    event.listen(engine, "connect", apply)
    return engine


def check_listing(listed: list[StoredSnapshotInfo], tenant: str) -> None:
    assert len(listed) <= LIMIT
    for info in listed:
        assert info.status == "interrupted", info
        assert info.metadata["tenant"] == tenant, info
    order = [(i.updated_at, i.workflow_id) for i in listed]
    assert order == sorted(order, reverse=True)


@dataclass
class Result:
    kind: str
    stats: dict[str, Stats]
    sizes: dict[int, int]
    fills: dict[int, float]
    plan: str
    used: bool
    returned: dict[str, float]  # mean runs listed per call, per contender
    disk_reads: float | None  # MariaDB: buffer pool misses per list on the big table

    def p50(self, rows: int | str) -> float:
        return self.stats[str(rows)].p50_us


def bench_kind(kind: str, directory: Path) -> Result:
    with bench_database(kind, directory) as small_db, bench_database(kind, directory) as big_db:
        small, big = new_persistence(small_db), new_persistence(big_db)
        extra: dict[str, DatabasePersistence] = {}
        try:
            fills, sizes = {}, {}
            for rows, db, persistence in ((SMALL, small_db, small), (BIG, big_db, big)):
                _log(f"{kind}: filling {rows:,} runs")
                fills[rows] = fill_runs(db, persistence, rows)
                sizes[rows] = table_bytes(db)
                _log(f"{kind}: filled {rows:,} runs in {fills[rows]:.1f} s")
            expected = {t: 0 for t in TENANTS}
            for status, owner, _ in kinds_of(SMALL):
                expected[owner] += status == "interrupted"
            rng = random.Random(11)  # noqa: S311 - sample tenants
            if kind == "sqlite":
                for label, pragma in SQLITE_SETTINGS.items():
                    extra[f"{BIG} {label}"] = new_persistence(
                        big_db, sqlite_engine(big_db, pragma)
                    )
            persistences = {str(SMALL): small, str(BIG): big, **extra}
            tenant: dict[str, str] = {}

            def pick(name: str) -> None:
                tenant[name] = rng.choice(TENANTS)

            def lister(name: str) -> Callable[[], object]:
                persistence = persistences[name]

                def listing() -> list[StoredSnapshotInfo]:
                    return persistence.list(
                        status="interrupted", metadata={"tenant": tenant[name]}, limit=LIMIT
                    )
                return listing

            _log(f"{kind}: timing list on {SMALL:,} and {BIG:,} runs")
            stats = interleaved(
                {name: lister(name) for name in persistences}, operations=OPERATIONS, setup=pick
            )
            returned: dict[str, float] = {}
            for name, persistence in persistences.items():
                counts = []
                for each in TENANTS:
                    listed = persistence.list(
                        status="interrupted", metadata={"tenant": each}, limit=LIMIT
                    )
                    check_listing(listed, each)
                    if name == str(SMALL):
                        assert len(listed) == min(LIMIT, expected[each]), (each, len(listed))
                    else:
                        assert len(listed) == LIMIT, (each, len(listed))
                    counts.append(len(listed))
                returned[name] = sum(counts) / len(counts)
            plan, used = explain(big_db, big)
            reads = buffer_pool_misses(big_db, big) if kind == "mariadb" else None
            return Result(kind, stats, sizes, fills, plan, used, returned, reads)
        finally:
            small.close()
            big.close()
            for persistence in extra.values():
                persistence.close()
                persistence.engine.dispose()


def buffer_pool_misses(db: BenchDatabase, persistence: DatabasePersistence) -> float:
    """InnoDB pages read from disk per list of one tenant on ``db`` (server-wide counter,
    so other sessions' reads count too: an upper bound)."""
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()

        def reads() -> int:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'")
            return int(cursor.fetchone()[1])

        calls = 100
        before = reads()
        for number in range(calls):
            persistence.list(
                status="interrupted", metadata={"tenant": TENANTS[number % 10]}, limit=LIMIT
            )
        return (reads() - before) / calls
    finally:
        conn.close()


# -- plans -----------------------------------------------------------------------------------


def compiled_listing(persistence: DatabasePersistence) -> tuple[str, Any]:
    """The library's own SQL and parameters for the timed call (tenant-3)."""
    plan = persistence._plan
    assert plan is not None
    query = ListQuery(
        statuses=("interrupted",), workflow_names=None, metadata=(("tenant", "tenant-3"),),
        updated_before=None, updated_after=None, deadline_before=None, cursor=None, limit=LIMIT,
        now=datetime.now(UTC),
    )
    found = list_parameters(plan, query)
    assert found is not None
    shape, values = found
    stmt = plan.list_statement(shape)
    return stmt.sql, stmt.params(values)


def explain(db: BenchDatabase, persistence: DatabasePersistence) -> tuple[str, bool]:
    """(plan text with the statement, index used?) on the big table."""
    sql, params = compiled_listing(persistence)
    conn = raw_connection(db)
    try:
        if db.kind == "postgresql":
            custom, generic = postgresql_plans(conn, sql, params)
            text = f"-- custom plan (parameters known)\n{custom}\n\n-- generic plan\n{generic}"
            used = all(INDEX in p and "Seq Scan" not in p for p in (custom, generic))
        elif db.kind == "mariadb":
            cursor = conn.cursor()
            cursor.execute("EXPLAIN " + sql, params)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            cursor.execute("ANALYZE FORMAT=JSON " + sql, params)
            analyzed = str(cursor.fetchone()[0])  # not always valid JSON: keep it as text
            table = "\n".join(
                ", ".join(f"{k}={v}" for k, v in row.items() if v is not None) for row in rows
            )
            text = f"-- EXPLAIN\n{table}\n\n-- ANALYZE FORMAT=JSON\n{analyzed}"
            used = any(row.get("key") == INDEX for row in rows)
        else:
            cursor = conn.cursor()
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            details = [str(row[3]) for row in cursor.fetchall()]
            text = "\n".join(details)
            used = any(f"INDEX {INDEX}" in d for d in details)
    finally:
        conn.close()
    return f"```sql\n{sql}\n```\nparameters {params!r}\n\n```\n{text}\n```", used


# -- report ----------------------------------------------------------------------------------


def _row(r: Result, label: str, big: str) -> list[object]:
    small = str(SMALL)
    ratio = r.p50(big) / r.p50(small)
    return [
        label, f"{r.p50(small):,.0f}", f"{r.p50(big):,.0f}", f"{ratio:.2f}x",
        "met" if ratio <= TARGET else "NOT met",
        f"{r.stats[small].p99_us:,.0f}", f"{r.stats[big].p99_us:,.0f}",
        f"{r.returned[small]:.0f} / {r.returned[big]:.0f}",
    ]


def run(kinds: list[str] | None = None) -> str:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or KINDS:
            results.append(bench_kind(kind, Path(directory)))
    headers = [
        "database", f"p50 µs @{SMALL:,}", f"@{BIG:,}", "ratio", f"≤ {TARGET}x?",
        f"p99 µs @{SMALL:,}", f"@{BIG:,}", f"runs listed @{SMALL:,} / @{BIG:,}",
        f"index {INDEX}", f"table @{BIG:,}", "bulk fill",
    ]
    rows = []
    for r in results:
        rows.append([
            *_row(r, r.kind, str(BIG)), "used" if r.used else "NOT used",
            f"{r.sizes[BIG] / 2**20:,.0f} MiB", f"{r.fills[BIG]:.0f} s",
        ])
        for label in SQLITE_SETTINGS if r.kind == "sqlite" else ():
            rows.append([*_row(r, f"sqlite, own Engine: {label}", f"{BIG} {label}"), "", "", ""])
    samples = len(results[0].stats[str(SMALL)].samples) if results else 0
    parts = [
        format_table(headers, rows),
        f"`list(status=\"interrupted\", metadata={{\"tenant\": <one of 10>}}, limit={LIMIT})`,"
        f" {samples} calls per table in alternating rounds, a random tenant each. Runs:"
        f" {', '.join(f'{p}% {s}' for s, p in STATUSES.items())}; 10 tenants, 10 workflow"
        " names; ~1 KiB snapshots.",
    ]
    for r in results:
        if r.disk_reads is not None:
            parts.append(
                f"{r.kind}: {r.disk_reads:.1f} InnoDB pages read from disk per list on the"
                f" {BIG:,}-run table after the timing (buffer pool misses, server-wide)."
            )
        parts.append(f"### {r.kind}: plan on {BIG:,} runs\n\n{r.plan}")
    return "\n\n".join(parts)


def main(argv: list[str]) -> None:
    mode = " (QUICK mode)" if QUICK else ""
    print(f"## list what waits, {SMALL:,} vs {BIG:,} runs{mode}\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
