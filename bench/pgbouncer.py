"""DatabasePersistence through PgBouncer in transaction mode vs the direct connection.

One thread, 1 KiB snapshots, save (changed bytes to an existing run) and load, on one
PostgreSQL database: directly (psycopg prepares the statements after five runs), directly
with preparing switched off (``prepare_threshold=None``: what a pooled connection gets),
and through PgBouncer (Debian's, default settings but ``pool_mode = transaction``,
started on a free loopback port for the run). Every extra hop costs a loopback round trip
through PgBouncer's event loop; the direct connection keeps its prepared statements.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from _harness import Stats, bench_database, format_table, interleaved, sized_state, snapshot

from workflow_persistence import DatabasePersistence, JsonSerializer
from workflow_persistence.migrations import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' topologies
from tests.topology_pg import pgbouncer

OPERATIONS = 2000


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp, bench_database("postgresql", Path(tmp)) as db:
        engine = sa.create_engine(db.url, poolclass=sa.NullPool)
        upgrade(engine)
        engine.dispose()
        with pgbouncer(db.url, pool_mode="transaction") as bouncer:
            serializer = JsonSerializer()
            stores = {
                "direct": DatabasePersistence(db.url, serializer=serializer),
                "direct, not prepared": DatabasePersistence(
                    sa.create_engine(db.url, connect_args={"prepare_threshold": None}),
                    serializer=serializer,
                ),
                "PgBouncer (transaction)": DatabasePersistence(
                    bouncer.url(db.url.database or ""), serializer=serializer
                ),
            }
            state = sized_state(1024)
            runs = {name: snapshot(f"run-{n}", dict(state)) for n, name in enumerate(stores)}
            counter = itertools.count()
            for name, store in stores.items():
                store.save(runs[name])

            def saver(name: str) -> object:
                def save() -> None:
                    runs[name].state["step"] = next(counter)
                    stores[name].save(runs[name])

                return save

            def loader(name: str) -> object:
                workflow_id = runs[name].workflow_id
                return lambda: stores[name].load(workflow_id)

            try:
                saves = interleaved({n: saver(n) for n in stores}, operations=OPERATIONS)  # type: ignore[misc]
                loads = interleaved({n: loader(n) for n in stores}, operations=OPERATIONS)  # type: ignore[misc]
            finally:
                for store in stores.values():
                    store.close()
                    store.engine.dispose()
    return _report(saves, loads)


def _report(saves: dict[str, Stats], loads: dict[str, Stats]) -> str:
    rows: list[list[object]] = []
    for op, stats in (("save", saves), ("load", loads)):
        direct = stats["direct"]
        for name, measured in stats.items():
            rows.append([
                op,
                name,
                f"{measured.ops:,.0f}",
                f"{measured.p50_us:.0f}",
                f"{measured.p99_us:.0f}",
                f"{measured.ops / direct.ops:.2f}x",
            ])
    table = format_table(["op", "connection", "ops/s", "p50 µs", "p99 µs", "vs direct"], rows)
    return (
        f"{table}\n\n1 KiB snapshots, one thread, {OPERATIONS} calls each, interleaved."
        " Behind the pooler the library detects it (the announced backend pid differs from"
        " `pg_backend_pid()`) and runs its statements unprepared; direct connections keep"
        " preparing."
    )


if __name__ == "__main__":
    print(run())
