"""WorkflowInterruptRepository in a caller's Session and transaction, vs the raw driver
running the same statements in a transaction.

Two views, both measured against the raw driver in the same rounds:

* in an open transaction: the repository call against the bare statement, each side
  committing every 50 operations (the commits are not timed): the repository's own cost.
* a whole unit of work: Session, begin, one call, commit, against BEGIN, statement,
  COMMIT on the bare driver: what an application doing one save per transaction pays.

The engine is a plain ``create_engine(url)``, as a host application would have it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _harness import (
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    interleaved,
    sized_state,
    snapshot,
)
from persistence import RawStore
from sqlalchemy.orm import Session

from workflow_persistence import JsonSerializer, WorkflowInterruptRepository
from workflow_persistence.migrations import upgrade

OPERATIONS = 1500
PER_TRANSACTION = 50


class RawTransactions(RawStore):
    """RawStore's statements, inside explicit transactions."""

    def __init__(self, db: BenchDatabase) -> None:
        super().__init__(db)
        if db.kind == "sqlite":
            self.conn.isolation_level = "DEFERRED"  # sqlite3 opens the transaction
        elif db.kind == "postgresql":
            self.conn.autocommit = False  # psycopg sends BEGIN before the statement
        else:
            self.conn.autocommit(False)

    def begin_if_needed(self) -> None:
        if self.kind == "sqlite" and not self.conn.in_transaction:
            self.cursor.execute("BEGIN")  # sqlite3 starts none for a SELECT

    def commit(self) -> None:
        self.conn.commit()


def bench_kind(kind: str, directory: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    with bench_database(kind, directory) as db:
        engine = sa.create_engine(db.url)
        upgrade(engine)
        raw = RawTransactions(db)
        data = JsonSerializer().dumps(snapshot("w", sized_state(1024)))
        raw.save("raw", data)
        raw.commit()
        with Session(engine) as setup_session, setup_session.begin():
            WorkflowInterruptRepository(setup_session).upsert("lib", data)

        session = Session(engine)
        repo = WorkflowInterruptRepository(session)

        def begin(name: str) -> None:
            if name == "raw":
                raw.begin_if_needed()

        def commit(name: str) -> None:  # SQLite has one writer: each round commits
            (session.commit if name == "library" else raw.commit)()

        in_transaction: dict[str, dict[str, Callable[[], object]]] = {
            "upsert": {
                "library": lambda: repo.upsert("lib", data),
                "raw": lambda: raw.save("raw", data),
            },
            "get": {
                "library": lambda: repo.get("lib"),
                "raw": lambda: raw.load("raw"),
            },
        }
        for op, contenders in in_transaction.items():
            stats = interleaved(
                contenders,
                operations=OPERATIONS,
                rounds=OPERATIONS // PER_TRANSACTION,
                setup=begin,
                after_round=commit,
            )
            rows.append(_row(kind, f"{op}, in an open transaction", stats))
        session.commit()
        raw.commit()

        def unit_upsert() -> Any:
            with Session(engine) as s, s.begin():
                return WorkflowInterruptRepository(s).upsert("lib", data)

        def unit_get() -> Any:
            with Session(engine) as s, s.begin():
                row = WorkflowInterruptRepository(s).get("lib")
                return None if row is None else row.data

        def raw_unit(op: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                raw.begin_if_needed()
                result = op()
                raw.commit()
                return result

            return run

        for op, library, baseline in (
            ("upsert", unit_upsert, raw_unit(lambda: raw.save("raw", data))),
            ("get", unit_get, raw_unit(lambda: raw.load("raw"))),
        ):
            stats = interleaved({"library": library, "raw": baseline}, operations=OPERATIONS)
            rows.append(_row(kind, f"{op}, one per transaction (Session + commit)", stats))
        session.close()
        raw.close()
        engine.dispose()
    return rows


def _row(kind: str, op: str, stats: dict[str, Stats]) -> list[object]:
    lib, raw_stats = stats["library"], stats["raw"]
    return [
        kind, op, f"{lib.ops:,.0f}", f"{lib.p50_us:,.0f}", f"{lib.p99_us:,.0f}",
        f"{raw_stats.ops:,.0f}", f"{raw_stats.p50_us:,.0f}", f"{raw_stats.p99_us:,.0f}",
        f"{lib.ops / raw_stats.ops:.2f}x",
    ]


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
