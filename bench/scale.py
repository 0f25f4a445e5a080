"""DatabasePersistence on big tables: load latency, prune, and the list query's plan.

Three questions, on PostgreSQL, MariaDB and SQLite:

a. Does ``load`` stay as fast with 10^6 stored runs as with 10^3? Two scratch databases
   of the same kind, one with 10^3 records and one with 10^6 (10^5 in QUICK mode), all
   ~1 KiB snapshots; ``load`` of random existing ids is timed on both in alternating
   rounds, with the raw driver's bare ``SELECT`` as a control. Target: the big table's
   p50 within 1.3x of the small one's.
b. ``prune`` of 100,000 old records (10^4 in QUICK mode) among newer ones: rows/s, the
   number of ``DELETE`` statements it ran, each timed at the driver (a cursor subclass
   installed on the library's own connections), so the slowest batch (the longest any
   batch holds its locks) is measured, not guessed. The count and the survivors are
   checked exactly.
c. The plan of the library's own compiled ``list(limit=100)`` statement on the big table,
   with a verdict (asserted) on whether the ``updated_at`` index serves it.

The tables are bulk-filled with the raw driver (PostgreSQL ``COPY``, MariaDB multi-row
``INSERT``, SQLite ``executemany``), with ``updated_at`` spread at random over the last 30
days. Every record holds the bytes the library's own serializer writes for its id (``load``
checks that a record holds the snapshot of the id it is stored under): one encoding is
made once and the id patched into it, and the patched bytes are checked to be identical
to ``serializer.dumps`` for sample ids (else every record is encoded in full).
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
from persistence import RawStore
from sqlalchemy import Engine, event

from workflow_persistence import DatabasePersistence, WorkflowSnapshot
from workflow_persistence._serialization.columns import columns_of
from workflow_persistence._sql.statements import PRUNE_BATCH, ListShape, timestamp_processors
from workflow_persistence._storage.database import make_engine

KINDS = ["postgresql", "mariadb", "sqlite"]
TABLE = "workflow_interrupts"
INDEX = "ix_workflow_interrupts_updated_at"
SMALL = 10**3
BIG = 10**5 if QUICK else 10**6
PRUNE_OLD = 10**4 if QUICK else 10**5
PRUNE_NEW = PRUNE_OLD // 10  # newer than the cutoff: must survive
PRUNE_EDGE = 100  # updated exactly at the cutoff: not older than it, must survive
SPREAD = timedelta(days=30)
LOAD_OPERATIONS = 3000  # per contender (the harness cuts it in QUICK mode)
LIST_OPERATIONS = 400
LOAD_TARGET = 1.3
SNAPSHOT_BYTES = 1024
ID_DIGITS = 7  # ids wf-0000000 .. wf-9999999: one length, so one encoding fits all


def _log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def _id(number: int) -> str:
    return f"wf-{number:0{ID_DIGITS}d}"


# -- encoded records ------------------------------------------------------------------------


def id_encoder(
    persistence: DatabasePersistence,
    state: dict[str, Any],
    make: Callable[[str], WorkflowSnapshot] | None = None,
) -> Callable[[str], bytes]:
    """``workflow_id -> bytes``, exactly what ``persistence.save`` would store for it.

    ``make(workflow_id)`` builds the snapshot (default: the harness's interrupted one over
    ``state``). Fast path: the default ``wfp:msgpack:<crc32>`` record of a placeholder id
    of the same length, the id patched into the body and the CRC recomputed. It is used
    only if it reproduces ``serializer.dumps`` byte for byte on sample ids.
    """
    serializer = persistence.serializer
    placeholder = "wf-" + "#" * ID_DIGITS
    template = (make or (lambda wf_id: snapshot(wf_id, state)))(placeholder)  # one snapshot

    def full(workflow_id: str) -> bytes:
        template.workflow_id = workflow_id
        return serializer.dumps(template)

    sample = full(placeholder)
    head, newline, body = sample.partition(b"\n")
    marker = placeholder.encode()
    if not (newline and re.fullmatch(rb"wfp:msgpack:[0-9a-f]{8}", head)) or (
        body.count(marker) != 1
    ):
        _log("encoding: the record format is not the expected one; encoding every record")
        return full
    before, _, after = body.partition(marker)

    def patched(workflow_id: str) -> bytes:
        new_body = before + workflow_id.encode() + after
        return b"wfp:msgpack:%08x\n" % zlib.crc32(new_body) + new_body

    for number in (0, 1, 4711, 10**ID_DIGITS - 1):
        if patched(_id(number)) != full(_id(number)):
            _log("encoding: patched bytes differ from dumps(); encoding every record")
            return full
    return patched


#: Every column of the table, in the order of a filled row.
COLUMNS = (
    "workflow_id", "data", "version", "created_at", "updated_at", "status", "workflow_name",
    "current_node", "interrupt", "run_metadata", "expires_at",
)
_COPY_TYPES = [
    "text", "bytea", "int4", "timestamptz", "timestamptz", "text", "text", "text", "jsonb",
    "jsonb", "timestamptz",
]
Row = tuple[Any, ...]


def column_values(
    kind: str, snap: WorkflowSnapshot, to_db: Callable[[datetime], Any]
) -> tuple[Any, ...]:
    """The queryable columns a save of ``snap`` writes, as the bulk fill sends them
    (PostgreSQL's binary COPY takes JSON as Python objects, the others as text)."""
    columns = columns_of(snap)
    interrupt, metadata = columns.interrupt, columns.run_metadata
    if kind == "postgresql":
        interrupt = None if interrupt is None else json.loads(interrupt)
        metadata = json.loads(metadata)
    expires = None if columns.expires_at is None else to_db(columns.expires_at)
    return (
        columns.status, columns.workflow_name, columns.current_node, interrupt, metadata,
        expires,
    )


def _rows(
    ids: Iterable[tuple[str, datetime]],
    encode: Callable[[str], bytes],
    to_db: Callable[[datetime], Any],
    columns: tuple[Any, ...],
) -> Iterator[Row]:
    for workflow_id, at in ids:
        stamp = to_db(at)
        yield (workflow_id, encode(workflow_id), 1, stamp, stamp, *columns)


def bulk_fill(db: BenchDatabase, rows: Iterable[Row]) -> int:
    """Insert ``rows`` (every column, in ``COLUMNS`` order) with the raw driver as fast as
    it goes; returns how many."""
    count = 0
    columns = ", ".join(COLUMNS)
    conn = raw_connection(db)
    try:
        if db.kind == "postgresql":
            with conn.cursor() as cursor, cursor.copy(
                f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
                    count += 1
            return count
        place = "%s" if db.kind == "mariadb" else "?"
        insert = f"INSERT INTO {TABLE} ({columns}) VALUES ({', '.join([place] * len(COLUMNS))})"
        chunk: list[Row] = []
        cursor = conn.cursor()

        def flush() -> None:
            if db.kind == "sqlite":
                cursor.execute("BEGIN")
            cursor.executemany(insert, chunk)  # PyMySQL sends multi-row INSERTs
            if db.kind == "sqlite":
                cursor.execute("COMMIT")
            chunk.clear()

        for row in rows:
            chunk.append(row)
            count += 1
            if len(chunk) == 10_000:
                flush()
        if chunk:
            flush()
        cursor.close()
        return count
    finally:
        conn.close()


def settle(db: BenchDatabase) -> None:
    """What a live server does by itself after a bulk load: statistics (and on
    PostgreSQL, whose autovacuum is off on the bench server, the vacuum autovacuum
    would run). SQLite gathers no statistics unless told, so it is left as a user has it.
    """
    if db.kind == "sqlite":
        return
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        if db.kind == "postgresql":
            cursor.execute(f"VACUUM (ANALYZE) {TABLE}")
        else:
            cursor.execute(f"ANALYZE TABLE {TABLE}")
            cursor.fetchall()
        cursor.close()
    finally:
        conn.close()


def _scalar(db: BenchDatabase, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        value = cursor.fetchone()[0]
        cursor.close()
        return value
    finally:
        conn.close()


def table_bytes(db: BenchDatabase) -> int:
    """The table with its indexes, on disk."""
    if db.kind == "postgresql":
        return int(_scalar(db, f"SELECT pg_total_relation_size('{TABLE}')"))
    if db.kind == "mariadb":
        return int(_scalar(
            db,
            "SELECT data_length + index_length FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = %s",
            (TABLE,),
        ))
    return Path(db.url.database or "").stat().st_size


def server_cache(db: BenchDatabase) -> str:
    if db.kind == "postgresql":
        return f"shared_buffers {_scalar(db, 'SHOW shared_buffers')}"
    if db.kind == "mariadb":
        size = int(_scalar(db, "SELECT @@innodb_buffer_pool_size"))
        return f"innodb_buffer_pool_size {size / 2**20:,.0f} MiB"
    return "page cache only (SQLite default cache_size)"


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def new_persistence(db: BenchDatabase, engine: Engine | None = None) -> DatabasePersistence:
    persistence = DatabasePersistence(engine or db.url)
    persistence.exists("warm-up")  # creates the table through the migrations, compiles
    return persistence


def filled_table(
    db: BenchDatabase, persistence: DatabasePersistence, count: int, state: dict[str, Any]
) -> float:
    """``count`` records wf-0000000.. updated at random over the last 30 days; seconds."""
    encode = id_encoder(persistence, state)
    to_db, _ = timestamp_processors(persistence.engine.dialect)
    rng = random.Random(count)  # noqa: S311 - sample data
    now = datetime.now(UTC)
    span = SPREAD.total_seconds()
    ids = ((_id(n), now - timedelta(seconds=rng.uniform(0, span))) for n in range(count))
    started = time.perf_counter()
    columns = column_values(db.kind, snapshot(_id(0), state), to_db)
    filled = bulk_fill(db, _rows(ids, encode, to_db, columns))
    settle(db)
    seconds = time.perf_counter() - started
    assert filled == count
    return seconds


# -- a. load latency against table size -----------------------------------------------------


@dataclass
class LoadResult:
    kind: str
    size_bytes: dict[int, int]
    fill_seconds: dict[int, float]
    stats: dict[str, Stats]
    cache: str
    load_plan: str
    big_prune: PruneResult

    def p50(self, who: str, rows: int) -> float:
        return self.stats[f"{who} {rows}"].p50_us


def bench_load(
    kind: str, directory: Path, state: dict[str, Any], explain: PlanReport
) -> LoadResult:
    with bench_database(kind, directory) as small_db, bench_database(kind, directory) as big_db:
        small, big = new_persistence(small_db), new_persistence(big_db)
        small_raw, big_raw = RawStore(small_db), RawStore(big_db)
        try:
            fill_seconds = {}
            for rows, db, persistence in ((SMALL, small_db, small), (BIG, big_db, big)):
                _log(f"{kind}: filling {rows:,} records")
                fill_seconds[rows] = filled_table(db, persistence, rows, state)
                _log(f"{kind}: filled {rows:,} records in {fill_seconds[rows]:.1f} s")
            size_bytes = {SMALL: table_bytes(small_db), BIG: table_bytes(big_db)}
            rng = random.Random(7)  # noqa: S311 - sample ids
            population = {
                f"{who} {rows}": rows for who in ("library", "raw") for rows in (SMALL, BIG)
            }
            current: dict[str, str] = {}

            def pick(name: str) -> None:
                current[name] = _id(rng.randrange(population[name]))

            _log(f"{kind}: timing load on {SMALL:,} and {BIG:,} records")
            stats = interleaved(
                {
                    f"library {SMALL}": lambda: small.load(current[f"library {SMALL}"]),
                    f"library {BIG}": lambda: big.load(current[f"library {BIG}"]),
                    f"raw {SMALL}": lambda: small_raw.load(current[f"raw {SMALL}"]),
                    f"raw {BIG}": lambda: big_raw.load(current[f"raw {BIG}"]),
                },
                operations=LOAD_OPERATIONS,
                setup=pick,
            )
            # The records really are the library's: a random one decodes to its own id.
            some = _id(rng.randrange(BIG))
            assert big.load(some).workflow_id == some
            load_plan = explain_statement(big_db, big, "select_record", {"wf_id": some})
            explain.collect(big_db, big)
            cache = server_cache(big_db)
            big.close()
            # Last, as it changes the table: prune its oldest ~10% (its own row in b).
            _log(f"{kind}: pruning the oldest ~10% of {BIG:,} records")
            cutoff = datetime.now(UTC) - SPREAD * 0.9
            big_prune = timed_prune(big_db, cutoff, removes=None, at_cutoff=0)
            return LoadResult(
                kind, size_bytes, fill_seconds, stats, cache, load_plan, big_prune
            )
        finally:
            small_raw.close()
            big_raw.close()
            small.close()
            big.close()


def load_table(results: list[LoadResult]) -> str:
    headers = [
        "database", f"table size {SMALL:,} / {BIG:,}", "server cache",
        f"library load p50 µs @{SMALL:,}", f"@{BIG:,}", "ratio", f"≤ {LOAD_TARGET}x?",
        f"raw SELECT p50 µs @{SMALL:,}", f"@{BIG:,}", "raw ratio",
    ]
    rows = []
    for r in results:
        lib = r.p50("library", BIG) / r.p50("library", SMALL)
        raw = r.p50("raw", BIG) / r.p50("raw", SMALL)
        rows.append([
            r.kind, f"{_mib(r.size_bytes[SMALL])} / {_mib(r.size_bytes[BIG])}", r.cache,
            f"{r.p50('library', SMALL):,.0f}", f"{r.p50('library', BIG):,.0f}", f"{lib:.2f}x",
            "met" if lib <= LOAD_TARGET else "NOT met",
            f"{r.p50('raw', SMALL):,.0f}", f"{r.p50('raw', BIG):,.0f}", f"{raw:.2f}x",
        ])
    fills = ", ".join(
        f"{r.kind} {BIG:,} in {r.fill_seconds[BIG]:.0f} s" for r in results
    )
    samples = len(results[0].stats[f"library {SMALL}"].samples) if results else 0
    plans = "\n".join(f"{r.kind}: {' | '.join(r.load_plan.splitlines())}" for r in results)
    return (
        format_table(headers, rows)
        + f"\n\n{samples:,} loads of random existing ids per column, alternating rounds;"
        f" ~{SNAPSHOT_BYTES} B snapshots. The raw column is the driver's bare SELECT of the"
        f" bytes: what the database itself adds as the table grows. Bulk fills (raw driver,"
        f" incl. statistics): {fills}.\n\nPlan of the library's load statement on"
        f" {BIG:,} rows:\n```\n{plans}\n```"
    )


# -- b. prune -----------------------------------------------------------------------------


@dataclass
class StatementLog:
    """DELETE statements seen by the timed cursors: (seconds, autocommit, rowcount)."""

    entries: list[tuple[float, bool, int]] = field(default_factory=list)
    on: bool = False

    def record(self, sql: Any, seconds: float, autocommit: bool, rowcount: int) -> None:
        if self.on and str(sql).lstrip().upper().startswith("DELETE"):
            self.entries.append((seconds, autocommit, rowcount))


STATEMENTS = StatementLog()


def timed_engine(db: BenchDatabase) -> Engine:
    """The library's engine with a driver-level hook: each cursor ``execute`` is timed."""
    log = STATEMENTS
    if db.kind == "sqlite":

        class TimedSqliteCursor(sqlite3.Cursor):
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                result = super().execute(*args, **kwargs)
                autocommit = self.connection.isolation_level is None
                log.record(args[0], time.perf_counter() - started, autocommit, self.rowcount)
                return result

        class TimedSqliteConnection(sqlite3.Connection):
            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                if not args and "factory" not in kwargs:
                    args = (TimedSqliteCursor,)
                return super().cursor(*args, **kwargs)

        return make_engine(db.url, connect_args={"factory": TimedSqliteConnection})

    engine = make_engine(db.url)
    if db.kind == "postgresql":
        import psycopg

        class TimedPgCursor(psycopg.Cursor[Any]):
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                result = super().execute(*args, **kwargs)
                seconds = time.perf_counter() - started
                log.record(args[0], seconds, self.connection.autocommit, self.rowcount)
                return result

        def install(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.cursor_factory = TimedPgCursor

    else:
        import pymysql.cursors

        class TimedMyCursor(pymysql.cursors.Cursor):  # type: ignore[misc]
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                result = super().execute(*args, **kwargs)
                seconds = time.perf_counter() - started
                autocommit = bool(self.connection.get_autocommit())
                log.record(args[0], seconds, autocommit, self.rowcount)
                return result

        def install(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.cursorclass = TimedMyCursor

    event.listen(engine, "connect", install)
    return engine


@dataclass
class PruneResult:
    kind: str
    table_rows: int
    removed: int
    seconds: float
    batches: list[tuple[float, bool, int]]
    survivors_ok: bool
    detail: str
    delete_plan: str


def bench_prune(kind: str, directory: Path, state: dict[str, Any]) -> PruneResult:
    """``PRUNE_OLD`` old records among newer ones, in a table of just those."""
    with bench_database(kind, directory) as db:
        persistence = new_persistence(db)
        try:
            cutoff = datetime.now(UTC) - SPREAD
            encode = id_encoder(persistence, state)
            to_db, _ = timestamp_processors(persistence.engine.dialect)
        finally:
            persistence.close()
        rng = random.Random(3)  # noqa: S311 - sample data
        ages = ["old"] * PRUNE_OLD + ["new"] * PRUNE_NEW + ["edge"] * PRUNE_EDGE
        rng.shuffle(ages)  # old and new interleaved in id order, as with random ids
        span = SPREAD.total_seconds()

        def at(age: str) -> datetime:
            if age == "old":
                return cutoff - timedelta(seconds=rng.uniform(0.001, span))
            if age == "new":
                return cutoff + timedelta(seconds=rng.uniform(0.001, span - 1))
            return cutoff

        _log(f"{kind}: filling {len(ages):,} records for prune")
        started = time.perf_counter()
        columns = column_values(db.kind, snapshot(_id(0), state), to_db)
        ids = ((_id(n), at(a)) for n, a in enumerate(ages))
        bulk_fill(db, _rows(ids, encode, to_db, columns))
        settle(db)
        _log(f"{kind}: filled in {time.perf_counter() - started:.1f} s; pruning")
        return timed_prune(db, cutoff, removes=PRUNE_OLD, at_cutoff=PRUNE_EDGE)


def timed_prune(
    db: BenchDatabase, cutoff: datetime, *, removes: int | None, at_cutoff: int
) -> PruneResult:
    """``prune(cutoff)`` through a persistence whose DELETE statements are timed.

    ``removes``: how many records are older than the cutoff (counted first if None);
    ``at_cutoff``: how many are updated exactly at it (and must survive).
    """
    engine = timed_engine(db)
    persistence = new_persistence(db, engine)
    try:
        to_db, _ = timestamp_processors(engine.dialect)
        place = "%s" if db.kind != "sqlite" else "?"
        table_rows = int(_scalar(db, f"SELECT COUNT(*) FROM {TABLE}"))
        if removes is None:
            removes = int(_scalar(
                db, f"SELECT COUNT(*) FROM {TABLE} WHERE updated_at < {place}", (to_db(cutoff),)
            ))
        delete_plan = explain_delete(db, persistence, cutoff)

        horizon = xmin_holders(db)
        STATEMENTS.entries.clear()
        STATEMENTS.on = True
        started = time.perf_counter()
        removed = persistence.prune(cutoff)
        seconds = time.perf_counter() - started
        STATEMENTS.on = False
        batches = list(STATEMENTS.entries)
        horizon = max(horizon, xmin_holders(db), key=lambda h: h[1])

        survivors = table_rows - removes
        total = int(_scalar(db, f"SELECT COUNT(*) FROM {TABLE}"))
        kept = int(_scalar(
            db, f"SELECT COUNT(*) FROM {TABLE} WHERE updated_at >= {place}", (to_db(cutoff),)
        ))
        edge = int(_scalar(
            db, f"SELECT COUNT(*) FROM {TABLE} WHERE updated_at = {place}", (to_db(cutoff),)
        ))
        ok = removed == removes and total == survivors and kept == survivors
        ok = ok and edge == at_cutoff
        detail = (
            f"removed {removed:,} of {table_rows:,} (expected {removes:,}); left {total:,}"
            f" rows, {kept:,} at or after the cutoff (expected {survivors:,}"
            + (f", {edge} of {at_cutoff} exactly at it)" if at_cutoff else ")")
        )
        if db.kind == "postgresql":
            detail += (
                f". Other sessions of the server holding back the xmin horizon (so rows"
                f" deleted by earlier batches cannot be marked dead in the index): {horizon[0]}"
                f" at the start or end of the prune, the oldest open {horizon[1]:.0f} s"
            )
        return PruneResult(
            db.kind, table_rows, removed, seconds, batches, ok, detail, delete_plan
        )
    finally:
        STATEMENTS.on = False
        persistence.close()
        engine.dispose()


def xmin_holders(db: BenchDatabase) -> tuple[int, float]:
    """PostgreSQL: (other sessions with an open snapshot or xid, oldest one's age in s).

    Any of them, in any database of the server, keeps this database's deleted rows
    "recently dead" as well, because every snapshot taken here includes its xid.
    """
    if db.kind != "postgresql":
        return 0, 0.0
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT count(*), coalesce(max(extract(epoch FROM now() - xact_start)), 0)"
            " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)"
        )
        count, oldest = cursor.fetchone()
        return int(count), float(oldest)
    finally:
        conn.close()


def explain_delete(db: BenchDatabase, persistence: DatabasePersistence, cutoff: datetime) -> str:
    """The plan of the library's first prune batch (not run: plain EXPLAIN)."""
    from workflow_persistence._sql.operations import OLDEST

    plan = persistence._plan
    assert plan is not None
    values = {"cutoff": plan.to_db(cutoff), "floor": plan.to_db(OLDEST)}
    return explain_statement(db, persistence, "prune_batch", values)


def explain_statement(
    db: BenchDatabase, persistence: DatabasePersistence, name: str, values: dict[str, Any]
) -> str:
    """Plain EXPLAIN (nothing is run) of the library's compiled statement ``name``."""
    plan = persistence._plan
    assert plan is not None
    stmt = getattr(plan, name)
    params = stmt.params(values)
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        if db.kind == "postgresql":
            cursor.execute("EXPLAIN " + stmt.sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())
        if db.kind == "mariadb":
            cursor.execute("EXPLAIN " + stmt.sql, params)
            names = [d[0] for d in cursor.description]
            return "\n".join(
                ", ".join(f"{n}={v}" for n, v in zip(names, row, strict=True) if v is not None)
                for row in cursor.fetchall()
            )
        cursor.execute("EXPLAIN QUERY PLAN " + stmt.sql, params)
        return "\n".join(str(row[3]) for row in cursor.fetchall())
    finally:
        conn.close()


def prune_table(results: list[PruneResult]) -> str:
    headers = [
        "database", "table rows", "pruned", "seconds", "rows/s", "DELETE statements (expected)",
        "max rows/statement", "batch p50 ms", "slowest batch ms", "first / last full batch ms",
        "all autocommit", "count & survivors",
    ]
    rows = []
    for r in results:
        times = [t for t, _, _ in r.batches]
        full = [t for t, _, n in r.batches if n == PRUNE_BATCH]
        expected = r.removed // PRUNE_BATCH + 1
        rows.append([
            r.kind, f"{r.table_rows:,}", f"{r.removed:,}", f"{r.seconds:.2f}",
            f"{r.removed / r.seconds:,.0f}",
            f"{len(r.batches)} ({expected})", max((n for _, _, n in r.batches), default=0),
            f"{statistics.median(times) * 1e3:.1f}" if times else "-",
            f"{max(times) * 1e3:.1f}" if times else "-",
            f"{full[0] * 1e3:.1f} / {full[-1] * 1e3:.1f}" if full else "-",
            "yes" if all(a for _, a, _ in r.batches) else "NO",
            "exact" if r.survivors_ok else "WRONG",
        ])
    lines = [
        format_table(headers, rows),
        "",
        f"{PRUNE_OLD + PRUNE_NEW + PRUNE_EDGE:,}-row tables: {PRUNE_OLD:,} records older"
        f" than the cutoff, {PRUNE_NEW:,} newer and {PRUNE_EDGE} exactly at it, interleaved"
        f" in id order. {BIG:,}-row tables: the big table of part a, pruned of its oldest"
        f" ~10% (cutoff 27 days back, updated_at spread over 30 days). `prune(cutoff)`"
        f" with PRUNE_BATCH = {PRUNE_BATCH}; statement times taken at the driver's cursor.",
    ]
    for r in results:
        lines += [
            "", f"{r.kind}, {r.table_rows:,} rows: {r.detail}. Plan of one batch:",
            "```", r.delete_plan, "```",
        ]
    return "\n".join(lines)


# -- c. the list query's plan --------------------------------------------------------------


@dataclass
class PlanReport:
    sections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def collect(self, db: BenchDatabase, persistence: DatabasePersistence) -> None:
        persistence.list(limit=100)  # compiles the plan, warms
        plan = persistence._plan
        assert plan is not None
        shape = ListShape(0, 0, 0, 0, before=False, after=False, cursor=False, limited=True)
        stmt = plan.list_statement(shape)
        params = stmt.params({"limit": 100, "now": plan.to_db(datetime.now(UTC))})
        listed = interleaved(
            {"list": lambda: persistence.list(limit=100)}, operations=LIST_OPERATIONS
        )["list"]
        conn = raw_connection(db)
        try:
            text, used, notes = _explain_list(db.kind, conn, stmt.sql, params)
        finally:
            conn.close()
        verdict = "uses" if used else "does NOT use"
        if not used:
            self.failures.append(f"{db.kind}: list(limit=100) does not use {INDEX}")
        self.sections.append(
            f"### {db.kind}: list(limit=100) on {BIG:,} records\n\n"
            f"```sql\n{stmt.sql}\n```\nparameters {params!r}\n\n```\n{text}\n```\n\n"
            f"**Verdict: {verdict} `{INDEX}`.** {notes} `list(limit=100)` p50"
            f" {listed.p50_us:,.0f} µs, p99 {listed.p99_us:,.0f} µs."
        )


def _explain_list(kind: str, conn: Any, sql: str, params: Any) -> tuple[str, bool, str]:
    """(plan text, index used?, notes) for the library's list statement."""
    cursor = conn.cursor()
    if kind == "postgresql":
        custom, generic = postgresql_plans(conn, sql, params)
        text = f"-- custom plan (parameters known)\n{custom}\n\n-- generic plan\n{generic}"
        used = all(INDEX in plan and "Seq Scan" not in plan for plan in (custom, generic))
        notes = "Both the custom and the generic plan scan the index backwards." if used else ""
        return text, used, notes
    if kind == "mariadb":
        cursor.execute("EXPLAIN " + sql, params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        cursor.execute("ANALYZE FORMAT=JSON " + sql, params)
        analyzed = json.loads(cursor.fetchone()[0])
        table = "\n".join(
            ", ".join(f"{k}={v}" for k, v in row.items() if v is not None) for row in rows
        )
        text = f"-- EXPLAIN\n{table}\n\n-- ANALYZE FORMAT=JSON\n{json.dumps(analyzed, indent=1)}"
        used = any(row.get("key") == INDEX for row in rows)
        filesort = any("filesort" in str(row.get("Extra") or "") for row in rows)
        examined = _json_find(analyzed, "r_rows")
        notes = (
            "No filesort: the index (which InnoDB extends with the primary key) gives the"
            " full ORDER BY." if not filesort else "A filesort remains on top of the index."
        ) + (f" Rows read: {examined}." if examined is not None else "")
        return text, used, notes
    cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
    details = [str(row[3]) for row in cursor.fetchall()]
    text = "\n".join(details)
    used = any(f"INDEX {INDEX}" in d for d in details) and not any(
        d.strip() == f"SCAN {TABLE}" for d in details
    )
    notes = (
        "The index gives updated_at order; SQLite sorts only ties on workflow_id"
        " (temp b-tree for the right part of the ORDER BY)."
        if any("RIGHT PART" in d for d in details) else ""
    )
    return text, used, notes


def postgresql_plans(conn: Any, sql: str, params: Sequence[Any]) -> tuple[str, str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of ``sql``: its custom plan, and the generic plan.

    psycopg prepares a statement run 5 times; the server may then settle on a generic
    plan, made without knowing the parameters (the LIMIT, the status). Show that one too.
    """
    import psycopg

    cursor = conn.cursor()
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
    custom = "\n".join(row[0] for row in cursor.fetchall())
    numbered = iter(range(1, len(params) + 1))
    prepared = re.sub(r"%[sb]", lambda _: f"${next(numbered)}", sql)
    client = psycopg.ClientCursor(conn)  # EXECUTE takes its arguments as literals
    client.execute("PREPARE wfp_plan AS " + prepared)
    client.execute("SET plan_cache_mode = force_generic_plan")
    arguments = ", ".join(["%s"] * len(params))
    client.execute(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE wfp_plan({arguments})", params)
    generic = "\n".join(row[0] for row in client.fetchall())
    client.execute("RESET plan_cache_mode")
    client.execute("DEALLOCATE wfp_plan")
    return custom, generic


def _json_find(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children: Iterable[Any] = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _json_find(child, key)
        if found is not None:
            return found
    return None


# -- running -------------------------------------------------------------------------------


def run(kinds: list[str] | None = None) -> str:
    """Run all three parts; raises AssertionError (with the report) if a check fails."""
    state = sized_state(SNAPSHOT_BYTES)
    loads: list[LoadResult] = []
    prunes: list[PruneResult] = []
    plans = PlanReport()
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or KINDS:
            loads.append(bench_load(kind, Path(directory), state, plans))
            prunes.append(bench_prune(kind, Path(directory), state))
            prunes.append(loads[-1].big_prune)
    failures = plans.failures + [
        f"{r.kind}: prune count or survivors wrong: {r.detail}"
        for r in prunes if not r.survivors_ok
    ]
    mode = " (QUICK mode)" if QUICK else ""
    report = "\n\n".join([
        f"## Scale{mode}: {os.cpu_count()} CPUs, all servers local",
        f"### a. load p50 with {BIG:,} vs {SMALL:,} stored runs",
        load_table(loads),
        f"### b. prune of {PRUNE_OLD:,} old records",
        prune_table(prunes),
        "### c. list(limit=100) and the updated_at index",
        *plans.sections,
    ])
    if failures:
        raise AssertionError("\n".join(failures) + "\n\n" + report)
    return report


def main(argv: list[str] | None = None) -> None:
    kinds = sys.argv[1:] if argv is None else argv
    try:
        print(run(kinds or None))
    except AssertionError as failed:
        print(failed)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
