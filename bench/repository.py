"""WorkflowInterruptRepository in a caller's Session and transaction, vs the raw driver
running the same statement in a transaction (BEGIN, statement, COMMIT).

Both sides carry the transaction's cost; the repository adds the Session around it, as
an application that shares the transaction with its own writes would have anyway.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import (
    BenchDatabase,
    bench_database,
    format_table,
    interleaved,
    sized_state,
    snapshot,
)
from persistence import RawStore
from sqlalchemy.orm import Session

from workflow_persistence import JsonSerializer, WorkflowInterruptRepository
from workflow_persistence._database import make_engine
from workflow_persistence.migrations import upgrade

OPERATIONS = 1500


class RawTransactions(RawStore):
    """RawStore's statements, each in its own explicit transaction."""

    def __init__(self, db: BenchDatabase) -> None:
        super().__init__(db)
        if db.kind == "sqlite":
            self.conn.isolation_level = "DEFERRED"  # sqlite3 opens the transaction
        elif db.kind == "postgresql":
            self.conn.autocommit = False  # psycopg sends BEGIN before the statement
        else:
            self.conn.autocommit(False)

    def save_in_transaction(self, workflow_id: str, data: bytes) -> int:
        version = self.save(workflow_id, data)
        self.conn.commit()
        return version

    def load_in_transaction(self, workflow_id: str) -> bytes:
        if self.kind == "sqlite":
            self.cursor.execute("BEGIN")  # sqlite3 starts none for a SELECT
        data = self.load(workflow_id)
        self.conn.commit()
        return data


def bench_kind(kind: str, directory: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    with bench_database(kind, directory) as db:
        engine = make_engine(db.url)
        upgrade(engine)
        raw = RawTransactions(db)
        data = JsonSerializer().dumps(snapshot("w", sized_state(1024)))
        raw.save_in_transaction("raw", data)

        def repository_save() -> Any:
            with Session(engine) as session, session.begin():
                return WorkflowInterruptRepository(session).upsert("lib", data)

        def repository_get() -> Any:
            with Session(engine) as session, session.begin():
                row = WorkflowInterruptRepository(session).get("lib")
                return None if row is None else row.data

        repository_save()
        for op, library, baseline in (
            ("upsert", repository_save, lambda: raw.save_in_transaction("raw", data)),
            ("get", repository_get, lambda: raw.load_in_transaction("raw")),
        ):
            stats = interleaved({"library": library, "raw": baseline}, operations=OPERATIONS)
            lib, raw_stats = stats["library"], stats["raw"]
            rows.append([
                kind, op, f"{lib.ops:,.0f}", f"{lib.p50_us:,.0f}", f"{lib.p99_us:,.0f}",
                f"{raw_stats.ops:,.0f}", f"{raw_stats.p50_us:,.0f}", f"{raw_stats.p99_us:,.0f}",
                f"{lib.ops / raw_stats.ops:.2f}x",
            ])
        raw.close()
        engine.dispose()
    return rows


HEADERS = [
    "database", "operation (1 KiB)", "repository ops/s", "p50 µs", "p99 µs",
    "raw ops/s", "p50 µs", "p99 µs", "repository/raw",
]


def run(kinds: list[str] | None = None) -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or ["sqlite", "postgresql", "mariadb"]:
            rows.extend(bench_kind(kind, Path(directory)))
    return format_table(HEADERS, rows)


def main(argv: list[str]) -> None:
    print("## The repository inside a caller's transaction vs the raw driver\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
