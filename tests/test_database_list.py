"""list, prune and expiry on the three databases, against the reference semantics.

``ListQuery.select`` (what InMemoryPersistence runs) is the reference: every database's
one SELECT must return exactly what it returns on the same records, including records
that share an ``updated_at`` (ordered by ``workflow_id``, by code points) and metadata
values that differ only in case, a trailing space, normalization, or JSON type.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from workflow_persistence import (
    ConflictError,
    DatabasePersistence,
    InMemoryPersistence,
    InvalidArgumentError,
    JsonSerializer,
    StoredSnapshotInfo,
    WorkflowInterrupt,
    WorkflowNotFoundError,
    WorkflowSnapshot,
)
from workflow_persistence._serialization.columns import columns_of
from workflow_persistence._snapshot import utc_now
from workflow_persistence._sql.statements import ListShape
from workflow_persistence._storage.base import ListQuery, PruneQuery

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
TENANTS = ["acme", "Acme", "acme ", NFC, NFD, "ac'me\" OR 1=1 --", "x\\y", "日本"]
NUMBERS: list[Any] = [1, True, 1.0, "1", 0, False, 2**40, -3]
NAMES = ["refund", "Refund", "refund ", "onboarding", None]
STATUSES = ["interrupted", "failed", "running", "completed", "unknown"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)
#: Few distinct timestamps, so many records tie on updated_at.
TABLE = sa.Table("workflow_interrupts", WorkflowInterrupt.metadata)
STAMPS = [BASE + timedelta(seconds=s, microseconds=m) for s in range(5) for m in (0, 1)]


@pytest.fixture
def store(engine: Engine) -> Iterator[DatabasePersistence]:
    with DatabasePersistence(engine) as persistence:
        yield persistence


def _metadata(rng: random.Random) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if rng.random() < 0.85:
        metadata["tenant"] = rng.choice(TENANTS)
    if rng.random() < 0.7:
        metadata["n"] = rng.choice(NUMBERS)
    if rng.random() < 0.3:
        metadata["a.b-c_d"] = rng.choice(["x", 1, True])
    if rng.random() < 0.2:
        metadata["nested"] = {"tenant": "acme"}
    return metadata


def _populate(
    store: DatabasePersistence, engine: Engine, rng: random.Random, count: int
) -> list[StoredSnapshotInfo]:
    """Save ``count`` runs, then give them tied timestamps, expiries and statuses by SQL;
    return every record as the reference sees it (expired ones included)."""
    infos: list[StoredSnapshotInfo] = []
    changes: list[dict[str, Any]] = []
    now = utc_now()
    for i in range(count):
        # Ids whose code-point order differs from a language collation's.
        workflow_id = rng.choice(["run", "Run", "_run", "run-", "rün", "ruN"]) + f"{i:03d}"
        status = rng.choice(STATUSES)
        snapshot = WorkflowSnapshot(
            workflow_id,
            status="interrupted" if status == "unknown" else status,  # type: ignore[arg-type]
            current_node=rng.choice(["approve", None]),
            interrupt=rng.choice([None, {"question": "Approve?", "at": BASE}, ["a", 1]]),
            metadata=_metadata(rng),
            workflow_name=rng.choice(NAMES),
        )
        store.save(snapshot)
        updated = rng.choice(STAMPS)
        created = updated - timedelta(days=1)
        expires = rng.choice([None, None, None, now - timedelta(hours=1), now + timedelta(days=1)])
        changes.append({"wid": workflow_id, "u": updated, "c": created, "e": expires, "s": status})
        columns = columns_of(snapshot)
        infos.append(
            StoredSnapshotInfo(
                workflow_id,
                created,
                updated,
                1,
                status=status,
                workflow_name=snapshot.workflow_name,
                current_node=snapshot.current_node,
                interrupt=None if columns.interrupt is None else json.loads(columns.interrupt),
                metadata=json.loads(columns.run_metadata),
                expires_at=expires,
            )
        )
    with engine.begin() as conn:
        conn.execute(
            sa.update(TABLE)
            .where(TABLE.c.workflow_id == sa.bindparam("wid"))
            .values(
                updated_at=sa.bindparam("u"),
                created_at=sa.bindparam("c"),
                expires_at=sa.bindparam("e"),
                status=sa.bindparam("s"),
            ),
            changes,
        )
    return infos


def _query(rng: random.Random, infos: list[StoredSnapshotInfo]) -> dict[str, Any]:
    """Random arguments for list()."""
    kwargs: dict[str, Any] = {}
    if rng.random() < 0.5:
        kwargs["status"] = (
            rng.choice(STATUSES) if rng.random() < 0.5 else rng.sample(STATUSES, rng.randint(0, 3))
        )
    if rng.random() < 0.3:
        names = [name for name in NAMES if name is not None]
        kwargs["workflow_name"] = (
            rng.choice(names) if rng.random() < 0.5 else rng.sample(names, rng.randint(1, 3))
        )
    if rng.random() < 0.5:
        metadata: dict[str, Any] = {}
        if rng.random() < 0.8:
            metadata["tenant"] = rng.choice(TENANTS)
        if rng.random() < 0.5:
            metadata["n"] = rng.choice([n for n in NUMBERS if type(n) is not float])
        if rng.random() < 0.2:
            metadata["a.b-c_d"] = rng.choice(["x", 1, True])
        if rng.random() < 0.1:
            metadata["missing"] = "x"
        kwargs["metadata"] = metadata
    if rng.random() < 0.3:
        kwargs["updated_before"] = rng.choice(STAMPS)
    if rng.random() < 0.3:
        kwargs["updated_after"] = rng.choice(STAMPS)
    if rng.random() < 0.3 and infos:
        kwargs["cursor"] = rng.choice(infos)
    if rng.random() < 0.5:
        kwargs["limit"] = rng.randint(0, 12)
    return kwargs


def _reference(infos: list[StoredSnapshotInfo], **kwargs: Any) -> list[StoredSnapshotInfo]:
    """What ListQuery.select (InMemoryPersistence's listing) returns for these arguments."""
    captured: list[ListQuery] = []

    class Capture(InMemoryPersistence):
        def _infos(self, query: ListQuery) -> list[StoredSnapshotInfo]:
            captured.append(query)
            return []

    Capture().list(**kwargs)
    return captured[0].select(infos)


def _ids(infos: list[StoredSnapshotInfo]) -> list[str]:
    return [info.workflow_id for info in infos]


def test_list_equals_the_reference_on_generated_records(
    store: DatabasePersistence, engine: Engine
) -> None:
    rng = random.Random(8)  # noqa: S311 (a seeded, repeatable data set)
    infos = _populate(store, engine, rng, 90)
    live = [i for i in infos if i.expires_at is None or i.expires_at > utc_now()]
    assert store.list() == _reference(infos)  # whole infos: columns read back as written
    assert len(store.list()) == len(live)
    for _ in range(400):
        kwargs = _query(rng, infos)
        assert _ids(store.list(**kwargs)) == _ids(_reference(infos, **kwargs)), kwargs


def test_paging_with_a_cursor_loses_no_record_that_shares_an_updated_at(
    store: DatabasePersistence, engine: Engine
) -> None:
    rng = random.Random(3)  # noqa: S311 (a seeded, repeatable data set)
    infos = _populate(store, engine, rng, 60)
    for kwargs in ({}, {"status": ["interrupted", "failed"]}, {"metadata": {"tenant": "acme"}}):
        everything = store.list(**kwargs)
        paged: list[StoredSnapshotInfo] = []
        page = store.list(limit=4, **kwargs)
        while page:
            paged += page
            page = store.list(limit=4, cursor=page[-1], **kwargs)
        assert _ids(paged) == _ids(everything) == _ids(_reference(infos, **kwargs))


def _saved(store: DatabasePersistence, workflow_id: str, metadata: dict[str, Any]) -> None:
    store.save(WorkflowSnapshot(workflow_id, metadata=metadata))


def test_metadata_filters_compare_exactly(store: DatabasePersistence) -> None:
    _saved(store, "lower", {"tenant": "acme", "n": 1, "flag": True})
    _saved(store, "upper", {"tenant": "Acme", "n": True, "flag": 1})
    _saved(store, "padded", {"tenant": "acme ", "n": 1.0, "flag": "true"})
    _saved(store, "nfc", {"tenant": NFC, "n": "1"})
    _saved(store, "nfd", {"tenant": NFD, "n": 10})

    def ids(**metadata: Any) -> list[str]:
        return sorted(_ids(store.list(metadata=metadata)))

    assert ids(tenant="acme") == ["lower"]
    assert ids(tenant="Acme") == ["upper"]
    assert ids(tenant="acme ") == ["padded"]
    assert ids(tenant=NFC) == ["nfc"]
    assert ids(tenant=NFD) == ["nfd"]
    assert ids(n=1) == ["lower"]  # not True, not 1.0, not "1", not 10
    assert ids(n=True) == ["upper"]
    assert ids(n="1") == ["nfc"]
    assert ids(flag=True) == ["lower"]
    assert ids(flag=1) == ["upper"]
    assert ids(flag="true") == ["padded"]
    assert ids(tenant="acme", n=1, flag=True) == ["lower"]
    assert ids(tenant="acme", n=2) == []
    assert ids(tenant="acme\x00") == []  # no stored text holds NUL: nothing to match
    assert ids(tenant="\ud800") == []  # nor a lone surrogate


def test_metadata_values_are_bound_and_keys_checked(store: DatabasePersistence) -> None:
    _saved(store, "one", {"tenant": "acme"})
    _saved(store, "two", {"tenant": "globex"})
    for hostile in ("' OR '1'='1", '" OR 1=1 --', "acme' --", "$.tenant", "\\"):
        assert store.list(metadata={"tenant": hostile}) == []
    for key in ('tenant") OR 1=1 --', "a b", "", "x" * 65, "t'"):
        with pytest.raises(InvalidArgumentError):
            store.list(metadata={key: "acme"})
    assert sorted(_ids(store.list())) == ["one", "two"]


def test_each_list_shape_is_compiled_once(store: DatabasePersistence) -> None:
    _saved(store, "one", {"tenant": "acme"})
    store.list(status="interrupted", metadata={"tenant": "acme"}, limit=5)
    plan = store._plan
    assert plan is not None
    shape = ListShape(1, 0, 1, 0, before=False, after=False, cursor=False, limited=True)
    compiled = plan._lists[shape]
    count = len(plan._lists)
    for status, tenant, limit in (("failed", "globex", 7), ("running", "initech", 1)):
        store.list(status=status, metadata={"tenant": tenant}, limit=limit)
    assert plan._lists[shape] is compiled  # the same shape: the same statement
    assert len(plan._lists) == count


def test_list_reads_columns_never_data(store: DatabasePersistence, engine: Engine) -> None:
    store.save(
        WorkflowSnapshot(
            "w",
            current_node="approve",
            interrupt={"question": "Approve?", "at": BASE},
            metadata={"user": "ana", "amount": 30},
            workflow_name="refund",
        )
    )
    with engine.begin() as conn:
        conn.execute(sa.update(TABLE).values(data=b"not a snapshot"))
    (info,) = store.list(status="interrupted", workflow_name="refund", metadata={"user": "ana"})
    assert (info.status, info.workflow_name, info.current_node) == (
        "interrupted",
        "refund",
        "approve",
    )
    assert info.interrupt == {"question": "Approve?", "at": BASE.isoformat()}
    assert info.metadata == {"user": "ana", "amount": 30}
    assert info.expires_at is None


def test_save_writes_the_columns(store: DatabasePersistence, engine: Engine) -> None:
    expires = utc_now() + timedelta(days=3)
    snapshot = WorkflowSnapshot(
        "w",
        status="failed",
        current_node="charge",
        interrupt=None,
        metadata={"tenant": "acme"},
        workflow_name="refund",
        expires_at=expires,
    )
    store.save(snapshot)
    snapshot.status = "interrupted"
    snapshot.current_node = "approve"
    snapshot.interrupt = {"q": "ok?"}
    snapshot.metadata = {"tenant": "globex"}
    snapshot.expires_at = None
    store.save(snapshot)
    with engine.connect() as conn:
        row = conn.execute(sa.select(TABLE)).one()
        assert (row.status, row.current_node, row.workflow_name, row.expires_at) == (
            "interrupted",
            "approve",
            "refund",
            None,
        )
        assert (row.interrupt, row.run_metadata) == ({"q": "ok?"}, {"tenant": "globex"})


def test_an_expired_record_counts_as_gone_and_is_written_over_as_new(
    store: DatabasePersistence, engine: Engine
) -> None:
    past = utc_now() - timedelta(seconds=1)
    for workflow_id in ("a", "b", "c", "d"):
        store.save(WorkflowSnapshot(workflow_id, expires_at=utc_now() + timedelta(days=1)))
        store.save(WorkflowSnapshot(workflow_id, expires_at=past))  # version 2, expired
    created_before = {i.workflow_id: i.created_at for i in _all_rows(engine)}
    for workflow_id in ("a", "b", "c", "d"):
        with pytest.raises(WorkflowNotFoundError):
            store.load(workflow_id)
        assert not store.exists(workflow_id)
    assert store.list() == []
    assert store.delete("a") is False  # left for prune
    with pytest.raises(ConflictError):
        store.delete("a", expected_version=2)
    with pytest.raises(ConflictError):  # stored version 2, but expired: counts as none
        store.save(WorkflowSnapshot("a"), expected_version=2)
    assert store.delete("a", expected_version=0) is False

    assert store.save(WorkflowSnapshot("a")) == 1  # an upsert over it
    assert store.save(WorkflowSnapshot("b"), expected_version=0) == 1  # insert-if-absent
    assert store.load("a").version == store.load("b").version == 1
    for workflow_id in ("a", "b"):
        assert store.load(workflow_id).created_at > created_before[workflow_id]
        assert store.load(workflow_id).expires_at is None
    assert store.save(WorkflowSnapshot("a")) == 2  # live again: counted on
    with pytest.raises(ConflictError):
        store.save(WorkflowSnapshot("a"), expected_version=0)
    assert sorted(_ids(store.list())) == ["a", "b"]
    assert store.prune() == 2  # c and d
    assert sorted(i.workflow_id for i in _all_rows(engine)) == ["a", "b"]


def _all_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(TABLE)))


def test_prune_by_status_age_and_expiry_matches_the_reference(
    store: DatabasePersistence, engine: Engine
) -> None:
    rng = random.Random(11)  # noqa: S311 (a seeded, repeatable data set)
    cases: list[tuple[Any, Any]] = [
        (None, None),
        (STAMPS[5], None),
        (STAMPS[5], "failed"),
        (STAMPS[7], ["interrupted", "unknown"]),
        (STAMPS[9], []),
    ]
    for older_than, status in cases:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM workflow_interrupts")
        infos = _populate(store, engine, rng, 40)
        query = PruneQuery(
            cutoff=older_than,
            statuses=None if status is None else tuple([status] if type(status) is str else status),
            now=utc_now(),
        )
        doomed = {
            i.workflow_id for i in infos if query.matches(i.updated_at, i.status, i.expires_at)
        }
        assert store.prune(older_than, status=status) == len(doomed)
        kept = {row.workflow_id for row in _all_rows(engine)}
        assert kept == {i.workflow_id for i in infos} - doomed


def test_prune_of_expired_records_runs_in_batches(
    store: DatabasePersistence, engine: Engine
) -> None:
    from workflow_persistence._sql.statements import PRUNE_BATCH

    data = JsonSerializer().dumps(WorkflowSnapshot("x"))
    past = utc_now() - timedelta(minutes=1)
    rows = [
        {"workflow_id": f"gone-{i}", "data": data, "version": 1, "status": "completed",
         "created_at": BASE, "updated_at": BASE, "expires_at": past - timedelta(microseconds=i % 3)}
        for i in range(PRUNE_BATCH + 7)
    ]  # fmt: skip
    rows.append(
        {"workflow_id": "kept", "data": data, "version": 1, "status": "completed",
         "created_at": BASE, "updated_at": BASE, "expires_at": utc_now() + timedelta(days=1)}
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(WorkflowInterrupt), rows)
    assert store.prune() == PRUNE_BATCH + 7
    assert [row.workflow_id for row in _all_rows(engine)] == ["kept"]
