"""DatabasePersistence against LangGraph's checkpointers, on the same state, in one run.

PostgreSQL: ``langgraph.checkpoint.postgres.PostgresSaver`` on a psycopg connection set up
as its ``from_conn_string`` does (autocommit, ``prepare_threshold=0``, ``dict_row``),
against ``DatabasePersistence`` on the same scratch database. SQLite:
``langgraph.checkpoint.sqlite.SqliteSaver`` on a file (``check_same_thread=False``)
against ``DatabasePersistence("sqlite:///...")`` on a file of its own in the same
temporary directory; both files are in WAL mode (SqliteSaver's ``setup`` and
DatabasePersistence each switch theirs).

Each cell times the contenders in alternating rounds (``interleaved``):

* save / put: our ``save`` of an existing record against their ``put`` on an existing
  thread, going round ``RECORDS`` records and threads (many workflows, each saved now
  and then). Every put is a new checkpoint (new id, parent = the thread's previous one) in
  the format LangGraph's graph runtime writes (``v`` 4), whose ``channel_versions`` and
  ``new_versions`` bump *every* channel: each put writes the whole state, as a save does.
  Building that checkpoint is the graph loop's work, not the saver's: it is done before
  the timer starts, as our snapshot is built before ``save``.
* load / get_tuple: our ``load`` against their ``get_tuple`` of a thread's latest
  checkpoint, state decoded; the thread holds one checkpoint, the record one version.

Their state goes in ``channel_values`` two ways, both timed in the same rounds as ours:
"per key" is how a ``StateGraph`` keeps a dict state (one channel per key); "one channel"
keeps the whole dict in a single channel, PostgresSaver's cheapest layout (one blob row
rather than one per key whose value is not a str, int, float, bool or None).

What a put writes. PostgresSaver, in one pipeline (one round trip, autocommit): one
``INSERT .. ON CONFLICT DO NOTHING`` into ``checkpoint_blobs`` per channel of
``new_versions`` holding a non-primitive value (encoded by ormsgpack), then one
``INSERT .. ON CONFLICT DO UPDATE`` into ``checkpoints`` of the checkpoint as JSONB
(``json.dumps``; primitive values inline) and the metadata as JSONB. SqliteSaver: the
whole checkpoint, values included, encoded by ormsgpack, and the metadata by
``json.dumps``, in one ``INSERT OR REPLACE``, then COMMIT. A get_tuple: PostgresSaver runs
one SELECT of the latest checkpoint that gathers its blobs (joined on its
``channel_versions``) and pending writes into arrays, then decodes the JSONB and each
blob; SqliteSaver runs a SELECT of the latest checkpoint and one of its pending writes,
and decodes the checkpoint and the metadata.

The last table is one record and one thread written ``HOT_SAVES`` times, then timed: what
a long-lived record or thread costs each side (LangGraph keeps every checkpoint; our
record gathers dead row versions on PostgreSQL until autovacuum removes them).
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from _harness import (
    QUICK,
    BenchDatabase,
    Stats,
    bench_database,
    format_table,
    interleaved,
    realistic_state,
    sized_state,
    snapshot,
)

from workflow_persistence import DatabasePersistence, WorkflowSnapshot

if TYPE_CHECKING:
    from langgraph.checkpoint.base import (
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
    )


#: Operations per contender and cell (QUICK mode takes a twentieth).
OPERATIONS = {"1 KiB": 2000, "realistic ~4 KiB": 1500, "64 KiB": 600}
RECORDS = 50  # existing records / threads the saves and puts go round
HOT_SAVES = 200 if QUICK else 2000  # saves / puts of one record / thread before timing it
HOT_OPERATIONS = 100
TARGET = 1.2  # ours / theirs, on every cell
LAYOUTS = ("per key", "one channel")
CHECKPOINT_FORMAT = 4  # the ``v`` that LangGraph's runtime writes (langgraph.pregel._checkpoint)


def states() -> dict[str, dict[str, Any]]:
    """The states both sides store: ~1 KiB and 64 KiB as ``sized_state`` builds them, and
    the harness's ``realistic_state`` as it is (about 4 KiB by our default serializer)."""
    return {
        "1 KiB": sized_state(1024),
        "realistic ~4 KiB": realistic_state(),
        "64 KiB": sized_state(64 * 1024),
    }


# -- LangGraph's side ------------------------------------------------------------------------


class LangGraphThread:
    """One thread of a LangGraph checkpointer, written and read as a graph run does."""

    def __init__(
        self, saver: BaseCheckpointSaver[str], thread_id: str, state: dict[str, Any], layout: str
    ) -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.values: dict[str, Any] = dict(state) if layout == "per key" else {"state": state}
        self.versions: ChannelVersions = {}
        self.step = 0
        self.config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        self.latest: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        self.pending: tuple[Checkpoint, CheckpointMetadata, ChannelVersions] | None = None

    def prepare(self) -> None:
        """The next checkpoint, as the graph loop builds it before calling put: a new id,
        and a new version for every channel so that put writes the whole state."""
        from langgraph.checkpoint.base import empty_checkpoint

        versions: ChannelVersions = {
            key: self.saver.get_next_version(self.versions.get(key), None)  # type: ignore[arg-type]
            for key in self.values
        }
        checkpoint = empty_checkpoint()
        # empty_checkpoint() still writes format 2, whose pending_sends every get_tuple of
        # PostgresSaver migrates with a second query; the runtime writes format 4.
        checkpoint["v"] = CHECKPOINT_FORMAT
        cast("dict[str, Any]", checkpoint).pop("pending_sends", None)
        checkpoint["channel_values"] = self.values
        checkpoint["channel_versions"] = versions
        first = next(iter(versions))
        checkpoint["versions_seen"] = {"approve": {"branch:to:approve": versions[first]}}
        checkpoint["updated_channels"] = sorted(self.values)
        self.step += 1
        metadata: Any = {
            "source": "loop", "step": self.step, "parents": {}, "user": "ana", "tenant": "acme",
        }
        self.pending = (checkpoint, metadata, versions)

    def put(self) -> None:
        if self.pending is None:
            raise RuntimeError("prepare() the checkpoint before put()")
        checkpoint, metadata, versions = self.pending
        self.config = self.saver.put(self.config, checkpoint, metadata, versions)
        self.versions = versions
        self.pending = None

    def write(self) -> None:
        self.prepare()
        self.put()

    def get(self) -> CheckpointTuple | None:
        return self.saver.get_tuple(self.latest)

    def check(self) -> None:
        """The latest checkpoint read back is the one last put, its state equal."""
        got = self.get()
        if got is None:
            raise AssertionError(f"get_tuple found no checkpoint in {self.thread_id}")
        if got.config["configurable"]["checkpoint_id"] != self.config["configurable"][
            "checkpoint_id"
        ]:
            raise AssertionError("get_tuple did not return the latest checkpoint")
        if got.checkpoint["channel_values"] != self.values:
            raise AssertionError("LangGraph read back a different state")
        if got.checkpoint["channel_versions"] != self.versions:
            raise AssertionError("LangGraph read back other channel versions")


def _check_ours(ours: DatabasePersistence, snap: WorkflowSnapshot) -> None:
    """The record read back is the snapshot saved, state and all."""
    got = ours.load(snap.workflow_id)
    fields = ("status", "state", "current_node", "event", "completed_nodes", "interrupt",
              "history", "attempts", "error", "metadata", "version")
    for name in fields:
        if getattr(got, name) != getattr(snap, name):
            raise AssertionError(f"DatabasePersistence read back a different {name}")


# -- cells -----------------------------------------------------------------------------------


HEADERS = [
    "database", "state", "operation", "ours", "LangGraph layout", "ours ops/s", "p50 µs",
    "p99 µs", "LangGraph ops/s", "p50 µs", "p99 µs", "ours/LangGraph", f"≥ {TARGET}x",
]


@dataclass
class Cell:
    database: str
    state: str
    operation: str
    stats: dict[str, Stats]  # by contender: our variants, then LangGraph's layouts

    def rows(self) -> list[list[object]]:
        rows: list[list[object]] = []
        for ours_name in [name for name in self.stats if name not in LAYOUTS]:
            ours = self.stats[ours_name]
            for layout in LAYOUTS:
                theirs = self.stats[layout]
                speedup = ours.ops / theirs.ops
                rows.append([
                    self.database, self.state, self.operation, ours_name, layout,
                    f"{ours.ops:,.0f}", f"{ours.p50_us:,.0f}", f"{ours.p99_us:,.0f}",
                    f"{theirs.ops:,.0f}", f"{theirs.p50_us:,.0f}", f"{theirs.p99_us:,.0f}",
                    f"{speedup:.2f}x", "yes" if speedup >= TARGET else "NO",
                ])
        return rows


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    hot: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- one database ----------------------------------------------------------------------------


def _bench_state(
    database: str,
    state_name: str,
    state: dict[str, Any],
    ours: dict[str, DatabasePersistence],
    saver: BaseCheckpointSaver[str],
) -> list[Cell]:
    operations = OPERATIONS[state_name]
    key = state_name.replace(" ", "_")

    # load / get_tuple: a record saved once, a thread holding one checkpoint
    loaded = {name: snapshot(f"load-{key}", state) for name in ours}
    for name, persistence in ours.items():
        persistence.save(loaded[name])
        _check_ours(persistence, loaded[name])  # neither side is timed doing less
    readers = {layout: LangGraphThread(saver, f"load-{layout}-{key}", state, layout)
               for layout in LAYOUTS}
    for thread in readers.values():
        thread.write()
        thread.check()
    loads: dict[str, Callable[[], object]] = {
        name: partial(persistence.load, f"load-{key}") for name, persistence in ours.items()
    }
    loads.update({layout: thread.get for layout, thread in readers.items()})
    load_cell = Cell(database, state_name, "load / get_tuple",
                     interleaved(loads, operations=operations))

    # save / put, round the existing records and threads
    snaps = {name: [snapshot(f"save-{key}-{i}", state) for i in range(RECORDS)]
             for name in ours}
    for name, persistence in ours.items():
        for snap in snaps[name]:
            persistence.save(snap)
            _check_ours(persistence, snap)
    writers = {
        layout: [LangGraphThread(saver, f"save-{layout}-{key}-{i}", state, layout)
                 for i in range(RECORDS)]
        for layout in LAYOUTS
    }
    for threads in writers.values():
        for thread in threads:
            thread.write()
            thread.check()
    turns = {name: itertools.cycle(range(RECORDS)) for name in [*ours, *LAYOUTS]}
    current = dict.fromkeys(turns, 0)

    def next_record(name: str) -> None:  # untimed: pick the record, build the checkpoint
        current[name] = next(turns[name])
        if name in writers:
            writers[name][current[name]].prepare()

    def save(name: str) -> Callable[[], object]:
        persistence, records = ours[name], snaps[name]
        return lambda: persistence.save(records[current[name]])

    def put(layout: str) -> Callable[[], object]:
        threads = writers[layout]
        return lambda: threads[current[layout]].put()

    saves = {name: save(name) for name in ours}
    saves.update({layout: put(layout) for layout in LAYOUTS})
    save_cell = Cell(database, state_name, "save / put",
                     interleaved(saves, operations=operations, setup=next_record))
    # and what the timed calls wrote reads back as well
    for name, persistence in ours.items():
        for snap in snaps[name]:
            _check_ours(persistence, snap)
    for threads in writers.values():
        for thread in threads:
            thread.check()

    # keep the tables small for the next state's cells
    for name, persistence in ours.items():
        for snap in [loaded[name], *snaps[name]]:
            persistence.delete(snap.workflow_id)
    for thread in [*readers.values(), *itertools.chain(*writers.values())]:
        saver.delete_thread(thread.thread_id)
    return [save_cell, load_cell]


def _bench_hot(
    database: str, ours: dict[str, DatabasePersistence], saver: BaseCheckpointSaver[str]
) -> list[Cell]:
    """One record (per variant of ours) and one thread per layout written HOT_SAVES times,
    then timed."""
    state_name = "1 KiB"
    state = sized_state(1024)
    snaps = {name: snapshot("hot", state) for name in ours}
    threads = {layout: LangGraphThread(saver, f"hot-{layout}", state, layout)
               for layout in LAYOUTS}
    for _ in range(HOT_SAVES):
        for name, persistence in ours.items():
            persistence.save(snaps[name])
        for thread in threads.values():
            thread.write()
    for name, persistence in ours.items():
        _check_ours(persistence, snaps[name])
    for thread in threads.values():
        thread.check()

    def prepare(name: str) -> None:
        if name in threads:
            threads[name].prepare()

    label = f"after {HOT_SAVES:,} of one record/thread"
    saves: dict[str, Callable[[], object]] = {
        name: partial(persistence.save, snaps[name]) for name, persistence in ours.items()
    }
    saves.update({layout: thread.put for layout, thread in threads.items()})
    loads: dict[str, Callable[[], object]] = {
        name: partial(persistence.load, "hot") for name, persistence in ours.items()
    }
    loads.update({layout: thread.get for layout, thread in threads.items()})
    return [
        Cell(database, state_name, f"save / put {label}",
             interleaved(saves, operations=HOT_OPERATIONS, warmup=2, setup=prepare)),
        Cell(database, state_name, f"load / get_tuple {label}",
             interleaved(loads, operations=HOT_OPERATIONS, warmup=2)),
    ]


def _bench_database(
    database: str,
    ours: dict[str, DatabasePersistence],
    saver: BaseCheckpointSaver[str],
    results: Results,
) -> None:
    for state_name, state in states().items():
        results.cells.extend(_bench_state(database, state_name, state, ours, saver))
    results.hot.extend(_bench_hot(database, ours, saver))


def bench_postgresql(directory: Path, results: Results) -> None:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    with bench_database("postgresql", directory) as db:
        ours = DatabasePersistence(db.url)
        ours.exists("warm-up")  # creates the table through the migrations
        url = db.url
        conn = psycopg.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database,
            autocommit=True, prepare_threshold=0, row_factory=dict_row,
        )
        try:
            saver = PostgresSaver(conn)
            saver.setup()
            _bench_database("postgresql", {"ours": ours}, saver, results)
            row = conn.execute(
                "SELECT n_dead_tup, last_autovacuum FROM pg_stat_user_tables"
                " WHERE relname = 'workflow_interrupts'"
            ).fetchone()
            if row is not None:
                vacuumed = row["last_autovacuum"]
                results.notes.append(
                    f"PostgreSQL, end of run: {row['n_dead_tup']:,} dead row versions in"
                    " workflow_interrupts; autovacuum last ran "
                    + (f"{(datetime.now(UTC) - vacuumed).total_seconds():.0f} s before"
                       if vacuumed else "never in this run")
                    + "."
                )
        finally:
            conn.close()
            ours.close()


def bench_sqlite(directory: Path, results: Results) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with bench_database("sqlite", directory) as plain, \
            bench_database("sqlite", directory) as theirs:
        # Both in WAL mode: SqliteSaver's setup switches its file, DatabasePersistence
        # switches a file it opens from a URL.
        ours = {"ours": DatabasePersistence(plain.url)}
        for persistence in ours.values():
            persistence.exists("warm-up")
        conn = sqlite3.connect(_path(theirs), check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            _bench_database("sqlite", ours, saver, results)
        finally:
            conn.close()
            for persistence in ours.values():
                persistence.close()


def _path(db: BenchDatabase) -> str:
    return db.url.database or ""


BENCHES: dict[str, Callable[[Path, Results], None]] = {
    "sqlite": bench_sqlite,
    "postgresql": bench_postgresql,
}


def run(kinds: list[str] | None = None) -> str:
    results = Results()
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or list(BENCHES):
            BENCHES[kind](Path(directory), results)
    quick = " QUICK mode: few iterations, rough figures." if QUICK else ""
    parts = [
        format_table(HEADERS, [row for cell in results.cells for row in cell.rows()]),
        f"ours/LangGraph above 1.00x: ours is faster. Saves and puts go round {RECORDS}"
        f" existing records and threads; loads read a record saved once and a thread"
        f" holding one checkpoint.{quick}",
        f"### One record and one thread written {HOT_SAVES:,} times, then timed",
        format_table(HEADERS, [row for cell in results.hot for row in cell.rows()]),
        *results.notes,
    ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    print("## DatabasePersistence vs LangGraph's checkpointers\n")
    print(run(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
