"""SessionPersistence.save inside a caller's transaction, against the raw driver doing the
same job by hand, at 1 KiB.

Library: ``with Session(engine) as session, session.begin():`` then
``SessionPersistence(session).save(snapshot)``: a new Session and persistence per unit of
work, as a request handler would have them, on a plain ``create_engine(url)``.
Hand-written: ``BEGIN``, ``pickle.dumps`` and the plainest upsert of ``(workflow_id,
data)`` on its own two-column table (bench/handwritten.py), ``COMMIT``, on the bare
driver (psycopg, PyMySQL, sqlite3). Each save writes changed bytes to an existing run.
SQLite is a file in WAL mode on both sides. Target: library/hand-written >= 0.9x.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from _harness import Stats, bench_database, format_table, interleaved, sized_state, snapshot
from handwritten import RAW_TABLE, HandWritten, create_raw_table
from sqlalchemy.orm import Session

from workflow_persistence import JsonSerializer, SessionPersistence
from workflow_persistence.migrations import upgrade

OPERATIONS = 2000
TARGET = 0.9


def bench_kind(kind: str, directory: Path) -> list[object]:
    with bench_database(kind, directory) as db:
        raw = HandWritten(db, RAW_TABLE)
        if kind == "sqlite":  # the file's mode, so both sides have it
            assert raw.cursor.execute("PRAGMA journal_mode=WAL").fetchall() == [("wal",)]
        create_raw_table(db)
        engine = sa.create_engine(db.url)
        upgrade(engine)
        serializer = JsonSerializer()
        state = sized_state(1024)
        mine = {"library": snapshot("lib", dict(state)), "raw": snapshot("raw", dict(state))}
        counter = itertools.count()

        def change(name: str) -> None:
            mine[name].state["step"] = next(counter)  # every save writes new bytes

        def library() -> None:
            with Session(engine) as session, session.begin():
                SessionPersistence(session, serializer=serializer).save(mine["library"])

        def by_hand() -> None:
            raw.cursor.execute("BEGIN")
            raw.save(mine["raw"])
            raw.cursor.execute("COMMIT")

        try:
            library()
            by_hand()
            stats = interleaved(
                {"library": library, "raw": by_hand}, operations=OPERATIONS, setup=change
            )
            with Session(engine) as session:
                stored = SessionPersistence(session, serializer=serializer).load("lib")
                assert stored.state == mine["library"].state
            size = len(serializer.dumps(mine["library"]))
        finally:
            raw.close()
            engine.dispose()
    return _row(kind, stats, size)


def _row(kind: str, stats: dict[str, Stats], size: int) -> list[object]:
    lib, raw = stats["library"], stats["raw"]
    by_ops = lib.ops / raw.ops
    return [
        kind, f"{size:,} B", f"{lib.ops:,.0f}", f"{lib.p50_us:,.0f}", f"{lib.p99_us:,.0f}",
        f"{raw.ops:,.0f}", f"{raw.p50_us:,.0f}", f"{raw.p99_us:,.0f}", f"{by_ops:.2f}x",
        f"{'met' if by_ops >= TARGET else 'NOT met'} (≥ {TARGET})",
    ]


HEADERS = [
    "database", "library record", "library ops/s", "p50 µs", "p99 µs",
    "hand-written ops/s", "p50 µs", "p99 µs", "library/hand-written", "target",
]


def run(kinds: list[str] | None = None) -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or ["postgresql", "mariadb", "sqlite"]:
            rows.append(bench_kind(kind, Path(directory)))
    return (
        format_table(HEADERS, rows)
        + "\n\nOne save per transaction (begin, save, commit). Ratios above 1.00x mean the"
        " library is faster. Hand-written: BEGIN, pickle and the plain upsert on"
        f" `{RAW_TABLE}(workflow_id, data)`, COMMIT."
    )


def main(argv: list[str]) -> None:
    print("## SessionPersistence.save in a caller's transaction vs the hand-written one\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
