"""DatabasePersistence against the statement a user writes by hand, at 1 KiB.

bench/persistence.py compares the library with the raw driver running the library's own
SQL (all of its columns). This section asks the user's question instead: is the library
slower than doing it myself? The hand-written side is the plainest code that keeps a
snapshot in a database:

- load: ``SELECT data FROM <table> WHERE workflow_id = %s``, one round trip in autocommit
  (binary results on psycopg, which also prepares the repeated statement), then
  ``pickle.loads``;
- save: ``pickle.dumps`` (the user must turn the snapshot into bytes too) and one upsert
  of ``(workflow_id, data)``: ``INSERT ... ON CONFLICT (workflow_id) DO UPDATE SET data =
  excluded.data`` on PostgreSQL and SQLite, ``INSERT ... ON DUPLICATE KEY UPDATE data =
  VALUES(data)`` on MariaDB.

Its table is ``raw_snapshots(workflow_id PRIMARY KEY, data)``, the one table a
hand-written app would have: no version, no timestamps, no status, no secondary index. It
is the strict baseline: whatever the library's queryable columns and their indexes cost
on each save counts against the library. A second baseline runs the same statements on
the library's own ``workflow_interrupts`` table (the NOT NULL columns the upsert does not
name get constants: version 1, the current timestamp, status ``'interrupted'``); the gap
between the two is what the table costs, the rest is the library's own code.

All contenders run on one database in one run, in alternating rounds (bench/_harness.py).
Targets (ops/s ratio, library over the plain table): save and load >= 0.9x on PostgreSQL
and MariaDB, save >= 0.8x on SQLite (a file in WAL mode, synchronous FULL on both sides).
"""

from __future__ import annotations

import itertools
import pickle
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import (
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    interleaved,
    raw_connection,
    sized_state,
    snapshot,
)

from workflow_persistence import DatabasePersistence, WorkflowSnapshot

OPERATIONS = 2000
RAW_TABLE = "raw_snapshots"
LIBRARY_TABLE = "workflow_interrupts"
#: (operation, database kind) -> the least library/raw ops/s ratio asked for.
TARGETS: dict[tuple[str, str], float] = {
    ("save existing", "postgresql"): 0.9,
    ("save new", "postgresql"): 0.9,
    ("load", "postgresql"): 0.9,
    ("save existing", "mariadb"): 0.9,
    ("save new", "mariadb"): 0.9,
    ("load", "mariadb"): 0.9,
    ("save existing", "sqlite"): 0.8,
    ("save new", "sqlite"): 0.8,
}

_CREATE = {
    "postgresql": f"CREATE TABLE {RAW_TABLE} (workflow_id VARCHAR(255) PRIMARY KEY,"
    " data BYTEA NOT NULL)",
    "mariadb": f"CREATE TABLE {RAW_TABLE} (workflow_id VARCHAR(255) CHARACTER SET utf8mb4"
    " COLLATE utf8mb4_bin PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB",
    "sqlite": f"CREATE TABLE {RAW_TABLE} (workflow_id TEXT PRIMARY KEY, data BLOB NOT NULL)",
}


def _upsert(kind: str, table: str) -> str:
    """The plainest single-statement upsert of ``(workflow_id, data)`` into ``table``."""
    place, data = {"postgresql": ("%s", "%b"), "mariadb": ("%s", "%s")}.get(kind, ("?", "?"))
    if table == RAW_TABLE:
        columns, values = "workflow_id, data", f"{place}, {data}"
    else:  # the library's table: its other NOT NULL columns get constants
        columns = "workflow_id, data, version, created_at, updated_at, status"
        values = f"{place}, {data}, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'interrupted'"
    insert = f"INSERT INTO {table} ({columns}) VALUES ({values})"
    if kind == "mariadb":
        return f"{insert} ON DUPLICATE KEY UPDATE data = VALUES(data)"
    return f"{insert} ON CONFLICT (workflow_id) DO UPDATE SET data = excluded.data"


class HandWritten:
    """What a user writes without the library: pickle and two statements, autocommit."""

    def __init__(self, db: BenchDatabase, table: str) -> None:
        self.conn = raw_connection(db)
        self.cursor = self.conn.cursor()
        self.binary = db.kind == "postgresql"
        place = "?" if db.kind == "sqlite" else "%s"
        self.select = f"SELECT data FROM {table} WHERE workflow_id = {place}"
        self.upsert = _upsert(db.kind, table)

    def save(self, snap: WorkflowSnapshot) -> None:
        self.cursor.execute(self.upsert, (snap.workflow_id, pickle.dumps(snap, protocol=5)))

    def load(self, workflow_id: str) -> WorkflowSnapshot:
        if self.binary:
            self.cursor.execute(self.select, (workflow_id,), binary=True)
        else:
            self.cursor.execute(self.select, (workflow_id,))
        snap: WorkflowSnapshot = pickle.loads(self.cursor.fetchone()[0])
        return snap

    def close(self) -> None:
        self.cursor.close()
        self.conn.close()


def create_raw_table(db: BenchDatabase) -> None:
    conn = raw_connection(db)
    try:
        cursor = conn.cursor()
        cursor.execute(_CREATE[db.kind])
        cursor.close()
    finally:
        conn.close()


CONTENDERS = ("library", "raw", "raw, library's table")


def bench_kind(kind: str, directory: Path) -> list[list[object]]:
    with bench_database(kind, directory) as db:
        library = DatabasePersistence(db.url)
        library.exists("warm-up")  # creates the table through the migrations
        create_raw_table(db)
        plain, same_table = HandWritten(db, RAW_TABLE), HandWritten(db, LIBRARY_TABLE)
        try:
            return _bench(kind, library, plain, same_table)
        finally:
            plain.close()
            same_table.close()
            library.close()


def _bench(
    kind: str, library: DatabasePersistence, plain: HandWritten, same_table: HandWritten
) -> list[list[object]]:
    state = sized_state(1024)
    stored = len(library.serializer.dumps(snapshot("existing", state)))
    saves: dict[str, Callable[[WorkflowSnapshot], Any]] = {
        "library": library.save, "raw": plain.save, "raw, library's table": same_table.save
    }
    loads: dict[str, Callable[[str], Any]] = {
        "library": library.load, "raw": plain.load, "raw, library's table": same_table.load
    }
    existing = {
        name: snapshot(f"existing-{i}", dict(state)) for i, name in enumerate(CONTENDERS)
    }
    for name, snap in existing.items():
        saves[name](snap)
    counter = itertools.count()

    def change(name: str) -> None:
        """A run is saved again because it moved on: the bytes differ on every save (an
        unchanged row is no write at all on InnoDB and SQLite)."""
        existing[name].state["step"] = next(counter)

    rows: list[list[object]] = []

    def record(operation: str, stats: dict[str, Stats]) -> None:
        rows.append(_row(kind, operation, stats, stored))

    record("save existing", interleaved(
        {name: _bound(saves[name], existing[name]) for name in CONTENDERS},
        operations=OPERATIONS, setup=change,
    ))
    fresh = {name: snapshot("new", state) for name in CONTENDERS}

    def new_id(name: str) -> None:
        fresh[name].workflow_id = f"new-{next(counter)}"

    record("save new", interleaved(
        {name: _bound(saves[name], fresh[name]) for name in CONTENDERS},
        operations=OPERATIONS, setup=new_id,
    ))
    record("load", interleaved(
        {name: _bound(loads[name], existing[name].workflow_id) for name in CONTENDERS},
        operations=OPERATIONS,
    ))
    for name in ("library", "raw"):
        assert loads[name](existing[name].workflow_id).state == existing[name].state
    return rows


def _bound(fn: Callable[[Any], Any], argument: Any) -> Callable[[], Any]:
    return lambda: fn(argument)


def _row(kind: str, operation: str, stats: dict[str, Stats], stored: int) -> list[object]:
    lib, raw, same = stats["library"], stats["raw"], stats["raw, library's table"]
    by_ops = lib.ops / raw.ops
    target = TARGETS.get((operation, kind))
    verdict = "-" if target is None else f"{'met' if by_ops >= target else 'NOT met'} (≥ {target})"
    return [
        kind, operation, f"{stored:,} B",
        f"{lib.ops:,.0f}", f"{lib.p50_us:,.0f}", f"{raw.ops:,.0f}", f"{raw.p50_us:,.0f}",
        f"{by_ops:.2f}x", f"{raw.p50_us / lib.p50_us:.2f}x", verdict,
        f"{same.ops:,.0f}", f"{same.p50_us:,.0f}", f"{lib.ops / same.ops:.2f}x",
        f"{same.p50_us / lib.p50_us:.2f}x",
    ]


HEADERS = [
    "database", "operation", "library record", "library ops/s", "p50 µs",
    "hand-written ops/s", "p50 µs", "library/hand-written (ops/s)", "(p50)", "target",
    "hand-written on the library's table ops/s", "p50 µs", "library/that (ops/s)", "(p50)",
]


def run(kinds: list[str] | None = None) -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or ["postgresql", "mariadb", "sqlite"]:
            rows.extend(bench_kind(kind, Path(directory)))
    return (
        format_table(HEADERS, rows)
        + "\n\nRatios above 1.00x mean the library is faster. Hand-written: pickle and"
        f" the plain upsert / SELECT of `data` on its own `{RAW_TABLE}(workflow_id, data)`;"
        " the last four columns run the same statements on the library's table."
    )


def main(argv: list[str]) -> None:
    print("## DatabasePersistence vs the hand-written statement\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
