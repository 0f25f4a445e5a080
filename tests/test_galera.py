"""On a three-node MariaDB Galera cluster (multi-master, started by ``topology_galera``).

Galera checks a transaction against the others at commit ("certification"): of two
writes of one record committed on two nodes at once, the later one is rolled back and
its client gets a deadlock error (1213). The library must report that as what it is: a
conditional write (a resume's claim) raises ConflictError, and a plain save, which has
no condition, is applied after the other (last writer wins) instead of failing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from workflow_persistence import (
    AsyncDatabasePersistence,
    ConflictError,
    DatabasePersistence,
    JsonSerializer,
    Persistence,
    RunResult,
    WorkflowSnapshot,
)
from workflow_persistence._sql import aiomysql_bytes
from workflow_persistence.cli import main as cli
from workflow_persistence.models import TABLE_NAME, VERSION_TABLE

from . import flows
from .conftest import Server
from .test_workflow import LoadBarrier
from .topology_galera import GaleraCluster, galera

__all__ = ["galera"]  # the session fixture, for pytest

RACES = 100
T = TypeVar("T")
#: Of two racing nodes, the pairs used in turn.
PAIRS = ((0, 1), (1, 2), (2, 0))
#: How long a write may take to show on another node (Galera applies asynchronously).
REPLICATION_SECONDS = 30.0


def new_database(galera: GaleraCluster) -> str:
    """A new, empty database on the cluster (made on node 0); its name."""
    name = Server("mariadb", galera.url(0)).create_database().database
    assert name is not None
    return name


@pytest.fixture
def database(galera: GaleraCluster) -> str:
    """A new database on the cluster, with the library's table (migrated on node 0)."""
    name = new_database(galera)
    assert cli(["migrate", "--url", galera.url(0, name).render_as_string(False)]) == 0
    # DDL is applied on each node in turn: a node may still show the table's first
    # revision right after migrate returns, so wait for it on every node.
    for node in range(len(galera.nodes)):
        causal_query(galera, node, f"SELECT * FROM {name}.{VERSION_TABLE}")
    return name


@pytest.fixture
def stores(galera: GaleraCluster, database: str) -> Iterator[list[DatabasePersistence]]:
    """One DatabasePersistence per node, on the same database."""
    made = [
        DatabasePersistence(galera.url(i, database), serializer=JsonSerializer())
        for i in range(len(galera.nodes))
    ]
    yield made
    for store in made:
        store.close()
        assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def causal_query(galera: GaleraCluster, node: int, sql: str, *args: Any) -> list[Any]:
    """Rows of ``sql`` on a node once it has applied everything committed before
    (``wsrep_sync_wait``): the test's own look at the cluster, never the library's."""
    conn = galera.nodes[node].connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        conn.close()


def wait_for_version(store: Persistence, workflow_id: str, version: int) -> None:
    """Poll until ``store``'s node shows the record at ``version`` (listed: not decoded)."""
    deadline = time.monotonic() + REPLICATION_SECONDS
    while {info.workflow_id: info.version for info in store.list()}.get(workflow_id) != version:
        assert time.monotonic() < deadline, f"{workflow_id} v{version} never replicated"


def race(*calls: Callable[[], T]) -> list[T | BaseException]:
    """Run the calls in threads released together; their results or errors, in order."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[T | BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[i] = calls[i]()
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a racing call never returned"
    return outcomes  # type: ignore[return-value]


def certification_conflict(exc: BaseException) -> bool:
    """Whether the driver error behind ``exc`` is Galera's (or InnoDB's) deadlock."""
    cause = exc.__cause__
    orig = getattr(cause, "orig", cause)
    return isinstance(orig, pymysql.err.OperationalError) and orig.args[0] == 1213


# -- migrations ---------------------------------------------------------------------------------


def test_the_table_migrates_with_primary_keys_and_innodb(
    galera: GaleraCluster, database: str
) -> None:
    """The nodes run with ``wsrep_mode=REQUIRED_PRIMARY_KEY,STRICT_REPLICATION``, so a
    table without a primary key or outside InnoDB would have failed the migration."""
    assert cli(["migrate", "--url", galera.url(1, database).render_as_string(False)]) == 0
    for node in range(len(galera.nodes)):
        tables = causal_query(
            galera,
            node,
            "SELECT t.table_name, t.engine, COUNT(c.constraint_name)"
            " FROM information_schema.tables t LEFT JOIN information_schema.table_constraints c"
            "  ON c.table_schema = t.table_schema AND c.table_name = t.table_name"
            "  AND c.constraint_type = 'PRIMARY KEY'"
            " WHERE t.table_schema = %s GROUP BY t.table_name, t.engine ORDER BY 1",
            database,
        )
        assert tables == [(TABLE_NAME, "InnoDB", 1), (VERSION_TABLE, "InnoDB", 1)]


def test_the_persistence_creates_its_table_on_a_node(galera: GaleraCluster) -> None:
    name = new_database(galera)
    with DatabasePersistence(galera.url(2, name)) as store:
        assert store.save(WorkflowSnapshot("made-on-2", state={"n": 1})) == 1
    found = causal_query(
        galera, 0, f"SELECT version FROM {name}.{TABLE_NAME} WHERE workflow_id = 'made-on-2'"
    )
    assert found == [(1,)]
    assert causal_query(galera, 1, f"SELECT COUNT(*) FROM {name}.{VERSION_TABLE}") == [(1,)]


# -- races across nodes -------------------------------------------------------------------------


def test_conditional_saves_on_three_nodes_one_wins(stores: list[DatabasePersistence]) -> None:
    """100 races of one claim (save with expected_version) sent to the three nodes at
    once: one wins, the two others raise ConflictError, whether they lost on the version
    or at certification (1213)."""
    won_once = 0
    errors: Counter[str] = Counter()
    certified_away = 0
    started = time.monotonic()
    for i in range(RACES):
        workflow_id = f"race-{i}"
        stores[i % 3].save(WorkflowSnapshot(workflow_id, state={"round": 0}), expected_version=0)
        for store in stores:
            wait_for_version(store, workflow_id, 1)
        claims = [WorkflowSnapshot(workflow_id, state={"by": node}) for node in range(3)]
        outcomes = race(
            *(
                partial(store.save, claim, expected_version=1)
                for store, claim in zip(stores, claims, strict=True)
            )
        )
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        errors.update(type(o).__name__ for o in lost)
        certified_away += sum(certification_conflict(o) for o in lost)
        assert outcomes.count(2) == 1 and len(lost) == 2, outcomes
        assert all(isinstance(o, ConflictError) for o in lost), lost
        winner = outcomes.index(2)  # the node whose claim won
        for store in stores:  # the winner's snapshot, on every node
            wait_for_version(store, workflow_id, 2)
            assert store.load(workflow_id).state == {"by": winner}
        won_once += 1
    print(
        f"\nGalera: {won_once}/{RACES} three-node races won exactly once; losers: {dict(errors)};"
        f" {certified_away} lost at certification (1213), the rest on the version;"
        f" {time.monotonic() - started:.1f} s"
    )
    assert won_once == RACES


def test_resumes_on_two_nodes_one_proceeds(stores: list[DatabasePersistence]) -> None:
    """The runtime on top: two resumes of one paused run, on two nodes, after both loaded
    it; the node's side effect happens once."""
    for i in range(12):
        a, b = PAIRS[i % len(PAIRS)]
        workflow_id = f"resume-{i}"
        effects = flows.SideEffects()
        flows.counting_workflow(stores[a], effects, block=False).start(workflow_id=workflow_id)
        paused = stores[a].load(workflow_id).version
        wait_for_version(stores[b], workflow_id, paused)
        barrier = threading.Barrier(2)
        racers = []
        for node in (a, b):
            persistence = LoadBarrier(stores[node], 2)
            persistence.barrier = barrier
            racers.append(flows.counting_workflow(persistence, effects, block=False))
        outcomes = race(*(partial(racer.resume, workflow_id, "go") for racer in racers))
        completed = [o for o in outcomes if isinstance(o, RunResult)]
        conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
        assert len(completed) == 1 and len(conflicts) == 1, outcomes
        assert completed[0].status == "completed"
        assert effects.count == 1


def test_plain_saves_of_one_record_on_three_nodes_all_apply(
    stores: list[DatabasePersistence],
) -> None:
    """Saves without expected_version have no condition to fail: a certification
    conflict is retried, so each one lands once, in some order, with its own version."""
    per_node = 20

    def saves(node: int) -> Callable[[], list[int]]:
        return lambda: [
            stores[node].save(WorkflowSnapshot("shared", state={"node": node, "k": k}))
            for k in range(per_node)
        ]

    outcomes = race(*(saves(node) for node in range(3)))
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    versions = sorted(v for o in outcomes for v in o)  # type: ignore[union-attr]
    assert versions == list(range(1, 3 * per_node + 1))
    for node in range(3):
        wait_for_version(stores[node], "shared", 3 * per_node)


def test_saves_spread_over_three_nodes_lose_nothing(
    galera: GaleraCluster, stores: list[DatabasePersistence], database: str
) -> None:
    """3 threads x 100 new runs, one thread per node; then each run saved again on
    another node. Every run is then on every node, at version 2."""
    per_node = 100

    def create(node: int) -> Callable[[], list[int]]:
        return lambda: [
            stores[node].save(WorkflowSnapshot(f"n{node}-{k}"), expected_version=0)
            for k in range(per_node)
        ]

    def update(node: int) -> Callable[[], list[int]]:
        source = (node + 1) % 3  # the runs another node created
        return lambda: [
            stores[node].save(WorkflowSnapshot(f"n{source}-{k}", state={"by": node}))
            for k in range(per_node)
        ]

    for phase, expected in ((create, 1), (update, 2)):
        if expected == 2:  # every created run reached the node that updates it
            for node in range(3):
                wait_for_version(stores[node], f"n{(node + 1) % 3}-{per_node - 1}", 1)
        outcomes = race(*(phase(node) for node in range(3)))
        for outcome in outcomes:
            assert outcome == [expected] * per_node, outcome
    for node in range(3):
        rows = causal_query(
            galera, node, f"SELECT workflow_id, version FROM {database}.workflow_interrupts"
        )
        assert len(rows) == 3 * per_node
        assert {version for _, version in rows} == {2}
        listed = {info.workflow_id: info.version for info in stores[node].list()}
        assert listed == dict(rows)


# -- async --------------------------------------------------------------------------------------


def async_url(url: URL) -> URL:
    return url.set(drivername="mysql+aiomysql")


async def test_async_conditional_saves_on_two_nodes_one_wins(
    galera: GaleraCluster, database: str
) -> None:
    aiomysql_bytes.repair()
    stores = [
        AsyncDatabasePersistence(async_url(galera.url(i, database))) for i in range(3)
    ]
    races = 30
    try:
        for i in range(races):
            a, b = PAIRS[i % len(PAIRS)]
            workflow_id = f"async-race-{i}"
            await stores[a].save(WorkflowSnapshot(workflow_id), expected_version=0)
            deadline = time.monotonic() + REPLICATION_SECONDS
            while not await stores[b].exists(workflow_id):
                assert time.monotonic() < deadline
            outcomes = await asyncio.gather(
                stores[a].save(WorkflowSnapshot(workflow_id), expected_version=1),
                stores[b].save(WorkflowSnapshot(workflow_id), expected_version=1),
                return_exceptions=True,
            )
            assert outcomes.count(2) == 1, outcomes
            lost = [o for o in outcomes if o != 2]
            assert isinstance(lost[0], ConflictError), repr(lost[0])
    finally:
        for store in stores:
            await store.aclose()


def test_engine_sees_galera(galera: GaleraCluster) -> None:
    engine = sa.create_engine(galera.url(0), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            size = conn.exec_driver_sql("SHOW STATUS LIKE 'wsrep_cluster_size'").one()[1]
    finally:
        engine.dispose()
    assert size == "3"
    print(f"\nGalera: install {galera.install_seconds:.1f} s, start {galera.start_seconds:.1f} s")

