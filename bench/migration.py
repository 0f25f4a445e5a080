"""Revision wfp_0002 on a full table: how long the upgrade (and the downgrade) takes.

On PostgreSQL, MariaDB and SQLite, a scratch database at ``wfp_0001`` is filled with ~1 KiB
interrupted snapshots, each the bytes the library's serializer writes for its id: 10^5
records when run alone, 10^6 as a section of run.py (``WFP_BENCH_MIGRATION_RECORDS`` sets
another count; 10^4 in QUICK mode). Then ``upgrade head`` runs as ``workflow-persistence
migrate`` does (a URL, one transaction), adding the columns, filling them from every
record and building the indexes; the fill is checked (every record ``"interrupted"``, its
node and tenant copied). Then ``downgrade wfp_0001``. Each step is timed
once: a migration runs once.

    cd bench && ../.venv/bin/python migration.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import QUICK, BenchDatabase, bench_database, format_table, raw_connection, sized_state
from _harness import snapshot as make_snapshot

from workflow_persistence import JsonSerializer, migrations

KINDS = ("postgresql", "mariadb", "sqlite")
_ASKED = os.environ.get("WFP_BENCH_MIGRATION_RECORDS")
RECORDS = int(_ASKED or (10_000 if QUICK else 100_000))
#: run.py's section reports the 10^6-record figure (10^4 in QUICK mode).
SECTION_RECORDS = int(_ASKED or (10_000 if QUICK else 1_000_000))
CHUNK = 5_000
TABLE = "workflow_interrupts"
INSERT = f"INSERT INTO {TABLE} (workflow_id, data, version, created_at, updated_at)"


def old_rows(count: int) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of wfp_0001-era rows: id, encoded snapshot, version, timestamps (UTC)."""
    serializer = JsonSerializer()
    state = sized_state(1024)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    chunk: list[tuple[Any, ...]] = []
    for i in range(count):
        workflow_id = f"run-{i:08d}"
        snapshot = make_snapshot(workflow_id, state)
        snapshot.metadata = {"user": f"user-{i % 100}", "tenant": f"tenant-{i % 10}"}
        stamp = (start + timedelta(seconds=i)).replace(tzinfo=None)
        chunk.append((workflow_id, serializer.dumps(snapshot), 1, stamp, stamp))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def fill(db: BenchDatabase, count: int) -> None:
    """Bring ``db`` to wfp_0001 and bulk-insert ``count`` records with the raw driver."""
    migrations.upgrade(db.url, "wfp_0001")
    conn = raw_connection(db)
    try:
        if db.kind == "postgresql":
            with conn.cursor() as cursor:
                copy_sql = (
                    f"COPY {TABLE} (workflow_id, data, version, created_at, updated_at)"
                    " FROM STDIN"
                )
                with cursor.copy(copy_sql) as copy:
                    for chunk in old_rows(count):
                        for workflow_id, data, version, created, updated in chunk:
                            copy.write_row((
                                workflow_id, data, version, created.replace(tzinfo=UTC),
                                updated.replace(tzinfo=UTC),
                            ))
        elif db.kind == "mariadb":
            with conn.cursor() as cursor:
                for chunk in old_rows(count):
                    cursor.executemany(f"{INSERT} VALUES (%s, %s, %s, %s, %s)", chunk)
        else:
            conn.execute("BEGIN")
            for chunk in old_rows(count):
                rows = [(w, d, v, c.isoformat(sep=" "), u.isoformat(sep=" "))
                        for w, d, v, c, u in chunk]
                conn.executemany(f"{INSERT} VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    finally:
        conn.close()


def check_filled(db: BenchDatabase, count: int) -> None:
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        cursor.execute(
            f"SELECT count(*) FROM {TABLE} WHERE status = 'interrupted'"
            " AND current_node = 'approve' AND run_metadata IS NOT NULL"
        )
        (filled,) = cursor.fetchone()
    finally:
        conn.close()
    if filled != count:
        raise AssertionError(f"{db.kind}: {filled} of {count} records filled")


def measure(kind: str, directory: Path, count: int) -> list[object]:
    with bench_database(kind, directory) as db:
        started = time.perf_counter()
        fill(db, count)
        filled_in = time.perf_counter() - started
        started = time.perf_counter()
        migrations.upgrade(db.url)
        upgrade = time.perf_counter() - started
        check_filled(db, count)
        started = time.perf_counter()
        migrations.upgrade(db.url, "wfp_0001", direction="downgrade")
        downgrade = time.perf_counter() - started
    print(f"  {kind}: filled in {filled_in:.1f} s, upgrade {upgrade:.1f} s", file=sys.stderr)
    return [kind, f"{count:,}", f"{upgrade:.1f}", f"{count / upgrade:,.0f}", f"{downgrade:.1f}"]


def run(records: int = RECORDS) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in KINDS:
            rows.append(measure(kind, Path(directory), records))
    return format_table(
        ["database", "records", "upgrade to wfp_0002 (s)", "records/s", "downgrade (s)"], rows
    )


def run_section() -> str:
    """The section of run.py: 10^6 records, or what WFP_BENCH_MIGRATION_RECORDS says."""
    return run(SECTION_RECORDS)


if __name__ == "__main__":
    print(run())
