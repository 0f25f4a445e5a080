"""DatabasePersistence against the raw driver, on SQLite, PostgreSQL and MariaDB.

The raw side runs the library's own statements (every column of revision 2, the JSON
columns rendered with ``json.dumps``) with the driver's best: one statement per call in
autocommit, binary results on psycopg (which also prepares repeated statements), and
``pickle`` to turn the snapshot into bytes, as a careful program without this library
would. (bench/handwritten.py compares with the plainest statement instead.) The
"raw bytes" column is the raw driver with no serialization at all: the floor.

Ratios above 1.00x mean the library is faster. Two are given: throughput (ops/s, which
tail latencies on a busy machine pull around) and median latency (p50, steadier).
"""

from __future__ import annotations

import itertools
import json
import pickle
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import (
    SIZES,
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    interleaved,
    raw_connection,
    sized_state,
    snapshot,
)

from workflow_persistence import DatabasePersistence

OPERATIONS = {"1 KiB": 2000, "64 KiB": 600, "1 MiB": 60}

_COLUMNS = (
    "workflow_id, data, version, created_at, updated_at, status, workflow_name,"
    " current_node, interrupt, run_metadata, expires_at"
)
_SET_COLUMNS = ("status", "workflow_name", "current_node", "interrupt", "run_metadata",
                "expires_at")
_SELECT = "SELECT data, version, created_at, updated_at, expires_at FROM workflow_interrupts"
_SQL = {
    "postgresql": {
        "upsert": f"INSERT INTO workflow_interrupts ({_COLUMNS}) VALUES (%s, %b, 1, %s, %s,"
        " %s, %s, %s, %s::jsonb, %s::jsonb, %s) ON CONFLICT (workflow_id) DO UPDATE SET"
        " data = EXCLUDED.data, version = workflow_interrupts.version + 1,"
        " updated_at = EXCLUDED.updated_at, "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in _SET_COLUMNS) + " RETURNING version",
        "select": f"{_SELECT} WHERE workflow_id = %s",
        "delete": "DELETE FROM workflow_interrupts WHERE workflow_id = %s",
    },
    "mariadb": {
        "upsert": f"INSERT INTO workflow_interrupts ({_COLUMNS}) VALUES (%s, %s, 1, %s, %s,"
        " %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE data = VALUES(data),"
        " updated_at = VALUES(updated_at), version = LAST_INSERT_ID(version + 1), "
        + ", ".join(f"{c} = VALUES({c})" for c in _SET_COLUMNS),
        "select": f"{_SELECT} WHERE workflow_id = %s",
        "delete": "DELETE FROM workflow_interrupts WHERE workflow_id = %s",
    },
    "sqlite": {
        "upsert": f"INSERT INTO workflow_interrupts ({_COLUMNS}) VALUES (?, ?, 1, ?, ?,"
        " ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id) DO UPDATE SET"
        " data = excluded.data, version = workflow_interrupts.version + 1,"
        " updated_at = excluded.updated_at, "
        + ", ".join(f"{c} = excluded.{c}" for c in _SET_COLUMNS) + " RETURNING version",
        "select": f"{_SELECT} WHERE workflow_id = ?",
        "delete": "DELETE FROM workflow_interrupts WHERE workflow_id = ?",
    },
}
#: The queryable columns of the harness's snapshots (all alike: interrupted at
#: "approve"), as a hand-written program renders them: json.dumps.
_QUERYABLE = (
    "interrupted", None, "approve", json.dumps({"question": "Approve?"}),
    json.dumps({"user": "ana", "tenant": "acme"}), None,
)


class RawStore:
    """The same table through the bare driver: hand-written SQL, autocommit."""

    def __init__(self, db: BenchDatabase) -> None:
        self.kind = db.kind
        self.conn = raw_connection(db)
        self.sql = _SQL[db.kind]
        self.cursor = self.conn.cursor()

    def _now(self) -> Any:
        now = datetime.now(UTC)
        if self.kind == "postgresql":
            return now
        return now.replace(tzinfo=None).isoformat(" ")  # UTC, as text

    def save(self, workflow_id: str, data: bytes) -> int:
        now = self._now()
        cursor = self.cursor
        cursor.execute(self.sql["upsert"], (workflow_id, data, now, now, *_QUERYABLE))
        if self.kind == "mariadb":
            return int(cursor.lastrowid or 1)
        return int(cursor.fetchone()[0])

    def load(self, workflow_id: str) -> bytes:
        cursor = self.cursor
        if self.kind == "postgresql":
            cursor.execute(self.sql["select"], (workflow_id,), binary=True)
        else:
            cursor.execute(self.sql["select"], (workflow_id,))
        return bytes(cursor.fetchone()[0])

    def delete(self, workflow_id: str) -> bool:
        self.cursor.execute(self.sql["delete"], (workflow_id,))
        return bool(self.cursor.rowcount)

    def close(self) -> None:
        self.cursor.close()
        self.conn.close()


def bench_database_kind(kind: str, directory: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    with bench_database(kind, directory) as db:
        library = DatabasePersistence(db.url)
        library.exists("warm-up")  # creates the table through the migrations
        raw = RawStore(db)
        try:
            for size_name, size in SIZES.items():
                rows.extend(_bench_size(kind, size_name, size, library, raw))
        finally:
            raw.close()
            library.close()
    return rows


def _bench_size(
    kind: str, size_name: str, size: int, library: DatabasePersistence, raw: RawStore
) -> list[list[object]]:
    state = sized_state(size)
    snap = snapshot("existing", state)
    encoded = library.serializer.dumps(snap)
    pickled = pickle.dumps(snap, protocol=5)
    operations = OPERATIONS[size_name]
    library.save(snap)
    raw.save("raw-existing", pickled)
    raw.save("bytes-existing", encoded)
    counter = itertools.count()
    results: list[list[object]] = []

    def record(op: str, stats: dict[str, Stats]) -> None:
        lib, raw_stats, floor = stats["library"], stats["raw"], stats["raw bytes"]
        results.append([
            kind, size_name, op, f"{lib.ops:,.0f}", f"{lib.p50_us:,.0f}", f"{lib.p99_us:,.0f}",
            f"{raw_stats.ops:,.0f}", f"{raw_stats.p50_us:,.0f}", f"{raw_stats.p99_us:,.0f}",
            f"{lib.ops / raw_stats.ops:.2f}x", f"{raw_stats.p50_us / lib.p50_us:.2f}x",
            f"{lib.ops / floor.ops:.2f}x",
        ])

    record("save existing", interleaved({
        "library": lambda: library.save(snap),
        "raw": lambda: raw.save("raw-existing", pickle.dumps(snap, protocol=5)),
        "raw bytes": lambda: raw.save("bytes-existing", encoded),
    }, operations=operations))

    new_ids: dict[str, str] = {}

    def fresh_id(name: str) -> None:
        new_ids[name] = f"{name}-{next(counter)}"

    new_snap = snapshot("new", state)

    def library_save_new() -> None:
        new_snap.workflow_id = new_ids["library"]
        library.save(new_snap)

    record("save new", interleaved({
        "library": library_save_new,
        "raw": lambda: raw.save(new_ids["raw"], pickle.dumps(snap, protocol=5)),
        "raw bytes": lambda: raw.save(new_ids["raw bytes"], encoded),
    }, operations=operations, setup=fresh_id))

    record("load", interleaved({
        "library": lambda: library.load("existing"),
        "raw": lambda: pickle.loads(raw.load("raw-existing")),
        "raw bytes": lambda: raw.load("bytes-existing"),
    }, operations=operations))

    doomed: dict[str, str] = {}

    def make_doomed(name: str) -> None:
        doomed[name] = f"doomed-{name}-{next(counter)}"
        raw.save(doomed[name], encoded)

    record("delete", interleaved({
        "library": lambda: library.delete(doomed["library"]),
        "raw": lambda: raw.delete(doomed["raw"]),
        "raw bytes": lambda: raw.delete(doomed["raw bytes"]),
    }, operations=operations, setup=make_doomed))
    return results


HEADERS = [
    "database", "snapshot", "operation", "library ops/s", "p50 µs", "p99 µs",
    "raw ops/s", "p50 µs", "p99 µs", "library/raw (ops/s)", "library/raw (p50)",
    "library/raw bytes (ops/s)",
]


def run(kinds: list[str] | None = None) -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or ["sqlite", "postgresql", "mariadb"]:
            rows.extend(bench_database_kind(kind, Path(directory)))
    return format_table(HEADERS, rows)


def main(argv: list[str]) -> None:
    print("## DatabasePersistence vs the raw driver\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])

