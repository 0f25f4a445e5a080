"""The ``workflow-persistence`` command line, run as a real console script in subprocesses.

Snapshots are written from this process with classes defined here, which the command
line cannot import: it must show them anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.metadata
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from workflow_persistence import (
    DatabasePersistence,
    Event,
    JsonSerializer,
    PickleSerializer,
    StoredSnapshotInfo,
    WorkflowInterrupt,
    WorkflowSnapshot,
)
from workflow_persistence._storage.database import make_engine
from workflow_persistence.cli import format_age, meta_pair, parse_age, question
from workflow_persistence.migrations import URL_ENV_VAR, VERSION_TABLE, upgrade

from .conftest import Server
from .samples import rich_snapshot, serializer

SCRIPT = Path(sys.executable).with_name("workflow-persistence")
TIMEOUT = 120


class Shipping(enum.Enum):
    EXPRESS = "express"


@dataclass
class ParcelReady(Event):
    """An event class only this test module knows."""

    parcel: str
    weight: Decimal
    shipping: Shipping


class Label:
    """A plain class that takes part through __getstate__/__setstate__."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __getstate__(self) -> dict[str, Any]:
        return {"text": self.text}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.text = state["text"]


HERE = __name__  # the module path the classes above are stored under


# -- running the command ----------------------------------------------------------------------


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != URL_ENV_VAR}
    environ.update(env or {})
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True, text=True, cwd=cwd, env=environ, timeout=TIMEOUT, check=False,
    )


def ok(*args: str, **kwargs: Any) -> str:
    done = run(*args, **kwargs)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert done.stderr == "", done.stderr
    return done.stdout


def fails(*args: str, **kwargs: Any) -> str:
    """Run a command that must fail: non-zero, nothing on stdout, one line on stderr."""
    done = run(*args, **kwargs)
    assert done.returncode != 0, (args, done.stdout)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("workflow-persistence"), lines[0]
    assert done.stdout == ""
    return lines[0]


def as_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def url(empty_database_url: URL) -> str:
    """A migrated, empty database of each kind (sqlite file, postgresql, mariadb)."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return as_text(empty_database_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    return url


def save(url: str, *snapshots: WorkflowSnapshot, serializer: Any = None) -> None:
    with DatabasePersistence(url, serializer=serializer, create_table=False) as persistence:
        for snapshot in snapshots:
            persistence.save(snapshot)


def age(url: str, workflow_id: str, by: timedelta) -> None:
    """Move a record's updated_at back, as if it had not been touched for ``by``."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            updated = conn.execute(
                sa.update(WorkflowInterrupt)
                .where(WorkflowInterrupt.workflow_id == workflow_id)
                .values(updated_at=datetime.now(UTC) - by)
            )
            assert updated.rowcount == 1
    finally:
        engine.dispose()


def stored_ids(url: str) -> list[str]:
    return [row["workflow_id"] for row in json.loads(ok("list", "--json", "--url", url))]


# -- migrate --------------------------------------------------------------------------------


def test_migrate_creates_the_table_and_can_run_twice(empty_database_url: URL) -> None:
    url = as_text(empty_database_url)
    first = ok("migrate", "--url", url)
    assert "up to date" in first
    if empty_database_url.password:
        assert empty_database_url.password not in first

    engine = make_engine(empty_database_url)
    try:
        inspector = sa.inspect(engine)
        assert inspector.has_table("workflow_interrupts")
        with engine.connect() as conn:
            revisions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        assert len(revisions) == 1

        assert "up to date" in ok("migrate", "--url", url)
        with engine.connect() as conn:
            again = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        assert again == revisions
    finally:
        engine.dispose()
    save(url, WorkflowSnapshot("w"))  # the table is usable as it is
    assert stored_ids(url) == ["w"]


def test_commands_on_an_unmigrated_database_fail_in_one_line(empty_database_url: URL) -> None:
    url = as_text(empty_database_url)
    # Either the table is missing, or (SQLite) the file itself: both say to migrate.
    assert "migrate" in fails("list", "--url", url)
    assert "migrate" in fails("show", "w", "--url", url)


# -- list -----------------------------------------------------------------------------------


def test_list_newest_first_with_limit_and_json(url: str) -> None:
    assert ok("list", "--url", url).strip() == "no stored workflows"
    assert json.loads(ok("list", "--json", "--url", url)) == []

    save(url, WorkflowSnapshot("first"), WorkflowSnapshot("second"), WorkflowSnapshot("third"))
    save(url, WorkflowSnapshot("first"))  # now the most recent, at version 2

    table = ok("list", "--url", url).splitlines()
    assert table[0].split() == [
        "WORKFLOW", "ID", "STATUS", "WORKFLOW", "NODE", "QUESTION", "UPDATED", "(UTC)",
    ]
    assert [line.split()[:2] for line in table[1:]] == [
        ["first", "interrupted"], ["third", "interrupted"], ["second", "interrupted"],
    ]

    rows = json.loads(ok("list", "--json", "--url", url))
    assert [(r["workflow_id"], r["version"]) for r in rows] == [
        ("first", 2), ("third", 1), ("second", 1),
    ]
    for row in rows:
        created = datetime.fromisoformat(row["created_at"])
        updated = datetime.fromisoformat(row["updated_at"])
        assert created.utcoffset() == timedelta(0)
        assert created <= updated
        assert abs(datetime.now(UTC) - updated) < timedelta(minutes=5)
    assert rows[0]["created_at"] < rows[0]["updated_at"]

    limited = ok("list", "--limit", "2", "--url", url).splitlines()
    assert [line.split()[0] for line in limited[1:]] == ["first", "third"]
    assert len(json.loads(ok("list", "--json", "--limit", "1", "--url", url))) == 1


def test_list_older_than(url: str) -> None:
    save(url, WorkflowSnapshot("fresh"), WorkflowSnapshot("stale"), WorkflowSnapshot("ancient"))
    age(url, "stale", timedelta(days=2))
    age(url, "ancient", timedelta(days=30))
    assert stored_ids(url) == ["fresh", "stale", "ancient"]
    older = json.loads(ok("list", "--older-than", "1d", "--json", "--url", url))
    assert [r["workflow_id"] for r in older] == ["stale", "ancient"]
    assert [r["workflow_id"] for r in older] == [
        line.split()[0] for line in ok("list", "--older-than", "1d", "--url", url).splitlines()[1:]
    ]
    older = json.loads(ok("list", "--older-than", "1w", "--json", "--url", url))
    assert [r["workflow_id"] for r in older] == ["ancient"]
    # Three are stored: none is older, which is not "no stored workflows".
    assert ok("list", "--older-than", "100000d", "--url", url).strip() == (
        "no stored workflows not updated for 100000d"
    )


def test_list_shows_one_line_per_workflow_whatever_its_id(sqlite_url: str) -> None:
    odd = ["two\nlines", "tab\there", "Grüße 🚀", "a" * 255]
    save(sqlite_url, *(WorkflowSnapshot(i) for i in odd))
    table = ok("list", "--url", sqlite_url).splitlines()
    assert len(table) == 1 + len(odd)
    assert any(line.startswith("Grüße 🚀 ") for line in table)
    assert sorted(stored_ids(sqlite_url)) == sorted(odd)  # JSON keeps them exactly


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_list_limit_zero_is_refused_not_reported_as_empty(
    sqlite_url: str, json_flag: list[str]
) -> None:
    save(sqlite_url, WorkflowSnapshot("stored"))
    line = fails("list", "--limit", "0", *json_flag, "--url", sqlite_url)
    assert "--limit" in line and "at least 1" in line
    assert "no stored workflows" not in line
    assert stored_ids(sqlite_url) == ["stored"]


def waiting_runs(url: str) -> None:
    """Runs of two workflows, waiting or failed, for two assignees."""
    save(
        url,
        WorkflowSnapshot(
            "refund-42", workflow_name="refunds", current_node="approve",
            interrupt={"question": "Approve 30 EUR?", "draft": "Refund 30 EUR"},
            metadata={"assignee": "maria", "tenant": "acme"},
        ),
        WorkflowSnapshot(
            "refund-43", workflow_name="refunds", current_node="approve", interrupt="go?",
            metadata={"assignee": "ben", "tenant": "acme"},
        ),
        WorkflowSnapshot(
            "sync-1", status="failed", workflow_name="sync", current_node="push",
            metadata={"assignee": "maria"},
        ),
        WorkflowSnapshot(
            "order-7", current_node="confirm",
            interrupt={"items": [1, 2], "total": Decimal("3.50")},
            metadata={"priority": 2, "vip": True, "code": "0017"},
        ),
    )


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


def test_list_shows_status_workflow_node_and_question(url: str) -> None:
    waiting_runs(url)
    table = ok("list", "--url", url, env={"COLUMNS": "200"}).splitlines()
    assert cells(table[0]) == [
        "WORKFLOW ID", "STATUS", "WORKFLOW", "NODE", "QUESTION", "UPDATED (UTC)",
    ]
    rows = {row[0]: row for row in map(cells, table[1:])}
    assert [row[:5] for row in rows.values()] == [
        ["order-7", "interrupted", "-", "confirm", '{"items":[1,2],"total":"3.50"}'],
        ["sync-1", "failed", "sync", "push", "-"],
        ["refund-43", "interrupted", "refunds", "approve", '"go?"'],
        ["refund-42", "interrupted", "refunds", "approve", "Approve 30 EUR?"],
    ]
    for row in rows.values():
        updated = datetime.fromisoformat(row[5])
        assert updated.utcoffset() == timedelta(0) and updated.microsecond == 0
        assert abs(datetime.now(UTC) - updated) < timedelta(minutes=5)
    # Every column starts where its header does.
    starts = [table[0].index(name) for name in ("STATUS", "QUESTION", "UPDATED")]
    for line in table[1:]:
        assert [line[s - 2 : s] for s in starts] == ["  "] * 3
        assert all(line[s] != " " for s in starts)


def listed(url: str, *options: str) -> list[str]:
    rows = json.loads(ok("list", "--json", *options, "--url", url))
    assert [r["workflow_id"] for r in rows] == [
        line.split()[0] for line in ok("list", *options, "--url", url).splitlines()[1:]
        if not line.startswith("no stored workflows")
    ]
    return [r["workflow_id"] for r in rows]


def test_list_filters_by_status_workflow_and_metadata(url: str) -> None:
    waiting_runs(url)
    assert listed(url, "--status", "failed") == ["sync-1"]
    everyone = ["order-7", "sync-1", "refund-43", "refund-42"]
    assert listed(url, "--status", "interrupted,failed") == everyone
    assert listed(url, "--status", "interrupted", "--status", "failed") == everyone
    assert listed(url, "--status", "completed,running") == []
    assert listed(url, "--workflow", "refunds") == ["refund-43", "refund-42"]
    assert listed(url, "--workflow", "refunds", "--workflow", "sync") == everyone[1:]
    assert listed(url, "--workflow", "Refunds") == []  # names compare exactly
    assert listed(url, "--meta", "assignee=maria") == ["sync-1", "refund-42"]
    assert listed(url, "--status", "interrupted", "--meta", "assignee=maria") == ["refund-42"]
    assert listed(url, "--meta", "assignee=maria", "--meta", "tenant=acme") == ["refund-42"]
    assert listed(url, "--meta", "assignee=Maria") == []
    assert listed(url, "--meta", "priority=2") == ["order-7"]
    assert listed(url, "--meta", 'priority="2"') == []  # the text "2" is not the int 2
    assert listed(url, "--meta", "vip=true") == ["order-7"]
    assert listed(url, "--meta", "vip=1") == []  # True is not 1
    assert listed(url, "--meta", "code=0017") == ["order-7"]  # leading zeros: text
    assert listed(url, "--meta", "assignee=maria", "--limit", "1") == ["sync-1"]
    assert ok("list", "--workflow", "sync", "--status", "interrupted", "--url", url).strip() == (
        "no stored workflows with status interrupted of workflow 'sync'"
    )


def test_list_json_has_every_field(url: str) -> None:
    expires = datetime.now(UTC) + timedelta(days=3)
    save(
        url,
        WorkflowSnapshot(
            "done", status="completed", workflow_name="refunds", result={"ok": True},
            interrupt=None, metadata={"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
            expires_at=expires,
        ),
        WorkflowSnapshot("asks", interrupt={"question": "Q?", "amount": Decimal("1.10")}),
    )
    asks, done = json.loads(ok("list", "--json", "--url", url))
    assert set(done) == {f.name for f in dataclasses.fields(StoredSnapshotInfo)}
    assert done["status"] == "completed" and done["workflow_name"] == "refunds"
    assert done["current_node"] is None and done["interrupt"] is None
    assert done["metadata"] == {"at": "2026-01-02T03:04:05+00:00"}
    assert abs(datetime.fromisoformat(done["expires_at"]) - expires) < timedelta(seconds=1)
    assert asks["interrupt"] == {"question": "Q?", "amount": "1.10"}
    assert asks["expires_at"] is None and asks["metadata"] == {}


def test_list_cuts_the_question_to_the_terminal_width(sqlite_url: str) -> None:
    long = "Approve the refund of " + "x" * 500 + "?"
    save(
        sqlite_url,
        WorkflowSnapshot("long", current_node="approve", interrupt={"question": long}),
        WorkflowSnapshot("lines", current_node="approve", interrupt={"question": "one\ntwo"}),
    )
    narrow = ok("list", "--url", sqlite_url, env={"COLUMNS": "100"}).splitlines()
    assert len(narrow) == 3 and all(len(line) <= 100 for line in narrow)
    row = cells(narrow[2])
    assert row[4].startswith("Approve the refund of xxx") and row[4].endswith("\u2026")
    assert datetime.fromisoformat(row[5]).utcoffset() == timedelta(0)  # still there
    assert cells(narrow[1])[4] == "one\\ntwo"  # one line per record
    wide = ok("list", "--url", sqlite_url, env={"COLUMNS": "1000"}).splitlines()
    assert cells(wide[2])[4] == long


@pytest.mark.parametrize(
    ("interrupt", "shown"),
    [
        ({"question": "Approve?", "draft": "x"}, "Approve?"),
        ({"question": {"text": "Approve?"}}, '{"text":"Approve?"}'),
        ({"ask": "Grüße"}, '{"ask":"Grüße"}'),
        ("go?", '"go?"'),
        ([1, 2.5, None], "[1,2.5,null]"),
        (None, "-"),
        ({"question": "a\nb\tc"}, "a\\nb\\tc"),
    ],
)
def test_the_question_column(interrupt: Any, shown: str) -> None:
    assert question(interrupt) == shown


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("assignee=maria", ("assignee", "maria")),
        ("priority=2", ("priority", 2)),
        ("delta=-3", ("delta", -3)),
        ("code=0017", ("code", "0017")),
        ("ratio=1.5", ("ratio", "1.5")),
        ("vip=true", ("vip", True)),
        ("vip=false", ("vip", False)),
        ("vip=True", ("vip", "True")),
        ('code="7"', ("code", "7")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_meta_values(text: str, pair: tuple[str, Any]) -> None:
    key, value = meta_pair(text)
    assert (key, value) == pair and type(value) is type(pair[1])


# -- show -----------------------------------------------------------------------------------


def test_show_prints_snapshots_of_classes_it_cannot_import(url: str) -> None:
    types = JsonSerializer(types=[ParcelReady, Shipping, Label])
    snapshot = WorkflowSnapshot(
        "parcel-7",
        status="interrupted",
        state={"label": Label("fragile"), "shipping": Shipping.EXPRESS, "count": 3},
        current_node="dispatch",
        event=ParcelReady("P-7", Decimal("2.50"), Shipping.EXPRESS),
        completed_nodes=["pack"],
        interrupt={"question": "Send now?"},
        attempts={"pack": 1},
        metadata={"user": "ana"},
    )
    save(url, snapshot, serializer=types)

    shown = json.loads(ok("show", "parcel-7", "--url", url))
    assert shown["workflow_id"] == "parcel-7"
    assert shown["status"] == "interrupted"
    assert shown["version"] == 1
    assert shown["format"].startswith("msgpack")
    assert shown["stored_bytes"] > 0
    assert shown["current_node"] == "dispatch"
    assert shown["completed_nodes"] == ["pack"]
    assert shown["interrupt"] == {"question": "Send now?"}
    assert shown["attempts"] == {"pack": 1}
    assert shown["metadata"] == {"user": "ana"}
    assert datetime.fromisoformat(shown["created_at"]) == datetime.fromisoformat(
        shown["updated_at"]
    )
    event = shown["event"]
    assert event["__class__"] == f"{HERE}:ParcelReady"
    assert event["fields"]["parcel"] == "P-7"
    assert event["fields"]["weight"] == "2.50"
    assert event["fields"]["shipping"]["__class__"] == f"{HERE}:Shipping"
    assert "express" in json.dumps(event["fields"]["shipping"])
    assert shown["state"]["label"]["__class__"] == f"{HERE}:Label"
    assert shown["state"]["label"]["fields"] == {"text": "fragile"}
    assert shown["state"]["shipping"]["__class__"] == f"{HERE}:Shipping"
    assert shown["state"]["count"] == 3


def test_show_prints_every_kind_of_value_as_strict_json(sqlite_url: str) -> None:
    snapshot = rich_snapshot("rich")
    snapshot.state.update(
        {"nan": float("nan"), "inf": float("-inf"), "keys": {1: "int", "1": "str"}}
    )
    save(sqlite_url, snapshot, serializer=serializer())

    def no_constants(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    out = ok("show", "rich", "--url", sqlite_url)
    shown = json.loads(out, parse_constant=no_constants)
    state = shown["state"]
    assert state["text"] == "Grüße, 世界 🚀"
    assert state["big"] == 2**100
    assert state["decimal"] == "1234.5678"
    assert state["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert state["datetime_utc"] == "2026-11-24T09:30:15.123456+00:00"
    assert state["set"] == [1, 2, 3]
    assert state["money"]["__class__"] == "tests.samples:Money"
    assert state["ledger"]["__class__"] == "tests.samples:Ledger"
    assert state["nan"] == "nan"
    assert state["inf"] == "-inf"
    assert sorted(state["keys"].values()) == ["int", "str"]  # neither hides the other
    assert shown["event"]["__class__"] == "tests.samples:Drafted"
    assert shown["error"]["node"] == "check"
    assert [d["node"] for d in shown["history"]] == ["check", "approve"]


def test_show_of_a_signed_pickle_explains_in_one_line(sqlite_url: str) -> None:
    save(sqlite_url, WorkflowSnapshot("pickled"), serializer=PickleSerializer(secret_key=b"k" * 32))
    assert "pickle" in fails("show", "pickled", "--url", sqlite_url)


def test_show_of_a_damaged_record_fails_in_one_line(sqlite_url: str) -> None:
    save(sqlite_url, WorkflowSnapshot("w"))
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(WorkflowInterrupt).values(data=b"\x00\x01 not a snapshot"))
    finally:
        engine.dispose()
    fails("show", "w", "--url", sqlite_url)
    assert stored_ids(sqlite_url) == ["w"]  # listing never decodes


# -- delete and prune ---------------------------------------------------------------------------


def test_delete(url: str) -> None:
    save(url, WorkflowSnapshot("keep"), WorkflowSnapshot("drop"))
    assert "drop" in ok("delete", "drop", "--url", url)
    assert stored_ids(url) == ["keep"]
    assert "drop" in fails("delete", "drop", "--url", url)
    assert "drop" in fails("show", "drop", "--url", url)


def test_prune_older_than(url: str) -> None:
    save(url, *(WorkflowSnapshot(i) for i in ("old-1", "old-2", "recent", "new")))
    age(url, "old-1", timedelta(days=8))
    age(url, "old-2", timedelta(days=400))
    age(url, "recent", timedelta(days=6))
    assert ok("prune", "--older-than", "7d", "--url", url).strip() == (
        "pruned 2 snapshots not updated for 7d, or expired"
    )
    assert stored_ids(url) == ["new", "recent"]
    assert "pruned 0 snapshots" in ok("prune", "--older-than", "7d", "--url", url)
    assert "pruned 0 snapshots" in ok("prune", "--older-than", "99999999d", "--url", url)
    assert "pruned 1 snapshot " in ok("prune", "--older-than", "1d12h", "--url", url)
    assert stored_ids(url) == ["new"]


def stored_rows(url: str) -> list[str]:
    """Every record in the table, expired ones included (which ``list`` never shows)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(sa.select(WorkflowInterrupt.workflow_id)).scalars().all()
    finally:
        engine.dispose()
    return sorted(ids)


def retention_runs(url: str) -> None:
    now = datetime.now(UTC)
    save(
        url,
        WorkflowSnapshot("done-expired", status="completed", expires_at=now - timedelta(hours=1)),
        WorkflowSnapshot("done-kept", status="completed", expires_at=now + timedelta(days=30)),
        WorkflowSnapshot("failed-old", status="failed"),
        WorkflowSnapshot("waiting-old"),
        WorkflowSnapshot("failed-new", status="failed"),
    )
    age(url, "failed-old", timedelta(days=10))
    age(url, "waiting-old", timedelta(days=10))


def test_prune_removes_expired_records_and_old_ones_by_status(url: str) -> None:
    retention_runs(url)
    everything = ["done-expired", "done-kept", "failed-new", "failed-old", "waiting-old"]
    assert stored_rows(url) == everything
    assert "done-expired" not in stored_ids(url)  # gone for list before any prune

    assert ok("prune", "--dry-run", "--url", url).strip() == (
        "would prune 1 snapshot: 1 expired (nothing was deleted)"
    )
    assert ok(
        "prune", "--older-than", "7d", "--status", "failed", "--dry-run", "--url", url
    ).strip() == (
        "would prune 2 snapshots: 1 not updated for 7d with status failed, 1 expired"
        " (nothing was deleted)"
    )
    assert ok("prune", "--older-than", "7d", "--dry-run", "--url", url).strip() == (
        "would prune 3 snapshots: 2 not updated for 7d, 1 expired (nothing was deleted)"
    )
    assert stored_rows(url) == everything  # a dry run deletes nothing

    assert ok("prune", "--url", url).strip() == "pruned 1 snapshot (expired)"
    assert stored_rows(url) == everything[1:]
    assert ok(
        "prune", "--older-than", "7d", "--status", "failed,completed", "--url", url
    ).strip() == "pruned 1 snapshot not updated for 7d with status failed or completed, or expired"
    assert stored_rows(url) == ["done-kept", "failed-new", "waiting-old"]
    again = ok("prune", "--older-than", "7d", "--status", "failed", "--dry-run", "--url", url)
    assert again.strip() == (
        "would prune 0 snapshots: 0 not updated for 7d with status failed, 0 expired"
        " (nothing was deleted)"
    )


def test_show_prints_workflow_name_result_and_expiry(url: str) -> None:
    expires = datetime.now(UTC) + timedelta(days=30)
    save(
        url,
        WorkflowSnapshot(
            "done", status="completed", workflow_name="refunds",
            result={"refunded": Decimal("30.00"), "by": "maria"}, expires_at=expires,
        ),
        WorkflowSnapshot("waiting", workflow_name="refunds", interrupt={"question": "Q?"}),
    )
    shown = json.loads(ok("show", "done", "--url", url))
    assert shown["status"] == "completed" and shown["workflow_name"] == "refunds"
    assert shown["result"] == {"refunded": "30.00", "by": "maria"}
    assert abs(datetime.fromisoformat(shown["expires_at"]) - expires) < timedelta(seconds=1)
    waiting = json.loads(ok("show", "waiting", "--url", url))
    assert (waiting["result"], waiting["expires_at"]) == (None, None)


def test_an_expired_record_is_gone_for_every_command(url: str) -> None:
    retention_runs(url)
    line = fails("show", "done-expired", "--url", url)
    assert "'done-expired'" in line and "expired at" in line and "prune" in line
    assert "'done-expired'" in fails("delete", "done-expired", "--url", url)
    assert "done-expired" not in stored_ids(url)
    assert "done-expired" in stored_rows(url)  # left for prune


# -- errors -----------------------------------------------------------------------------------


def test_unknown_id_fails_in_one_line(url: str) -> None:
    assert "'missing'" in fails("show", "missing", "--url", url)
    assert "'missing'" in fails("delete", "missing", "--url", url)


NAMED_BAD_URLS = ["nonsense://x", "postgresql://postgres@127.0.0.1:1/x"]
MORE_BAD_URLS = [
    "not a url",
    "mysql://root@127.0.0.1:1/x",
    "sqlite:////nonexistent-directory/x.db",
]
COMMANDS = {
    "migrate": ["migrate"],
    "list": ["list"],
    "show": ["show", "w"],
    "delete": ["delete", "w"],
    "prune": ["prune", "--older-than", "7d"],
    "prune-dry-run": ["prune", "--dry-run"],
}
BAD_URL_CASES = [
    *((name, bad) for name in COMMANDS for bad in NAMED_BAD_URLS),
    *((name, bad) for name in ("migrate", "list") for bad in MORE_BAD_URLS),
]


@pytest.mark.parametrize(("command", "bad_url"), BAD_URL_CASES)
def test_bad_url_fails_in_one_line(command: str, bad_url: str) -> None:
    line = fails(*COMMANDS[command], "--url", bad_url)
    assert line.startswith(f"workflow-persistence {COMMANDS[command][0]}: ")


def test_bad_url_from_the_environment_fails_in_one_line(tmp_path: Path) -> None:
    fails("list", cwd=tmp_path, env={URL_ENV_VAR: "postgresql://postgres@127.0.0.1:1/x"})


@pytest.mark.parametrize(
    ("command", "bad_age"),
    [("prune", "7x"), ("prune", ""), ("prune", "-1d"), ("prune", "99999999999w"),
     ("list", "7 years"), ("list", "1" * 400 + "d")],
)
def test_bad_age_fails_in_one_line(sqlite_url: str, command: str, bad_age: str) -> None:
    line = fails(command, f"--older-than={bad_age}", "--url", sqlite_url)
    assert "--older-than" in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["bogus"], "bogus"),
        (["show"], "ID"),
        (["list", "--limit", "-1"], "--limit"),
        (["list", "--status", "waiting"], "'waiting'"),
        (["list", "--status", "interrupted,"], "--status"),
        (["list", "--meta", "assignee"], "KEY=VALUE"),
        (["list", "--meta", "bad key=1"], "'bad key'"),
        (["list", "--meta", "a'); DROP TABLE x; --=1"], "not allowed"),
        (["list", "--meta", "a=1", "--meta", "a=2"], "twice"),
        (["list", "--meta", 'a="x"y"'], "JSON string"),
        (["prune", "--status", "failed"], "--older-than"),
        (["prune", "--status", "bogus", "--older-than", "1d"], "'bogus'"),
    ],
    ids=repr,
)
def test_usage_errors_fail_in_one_line(sqlite_url: str, args: list[str], named: str) -> None:
    save(sqlite_url, WorkflowSnapshot("kept"))
    assert named in fails(*args, "--url", sqlite_url)
    assert stored_ids(sqlite_url) == ["kept"]


# -- a server that refuses the login or has no such database --------------------------------------


@pytest.fixture
def mariadb_user(servers: dict[str, Server], new_database_url: Any) -> Iterator[URL]:
    """A MariaDB account with a password, allowed on a scratch database; dropped after."""
    database = new_database_url("mariadb")
    server = servers["mariadb"]
    user, password = f"wfp_cli_{secrets.token_hex(4)}", secrets.token_hex(8)
    admin = sa.create_engine(server.admin_url, poolclass=sa.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text(f"GRANT ALL ON {database.database}.* TO '{user}'@'%'"))
        yield database.set(username=user, password=password)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def test_a_wrong_mariadb_password_is_named_as_such(mariadb_user: URL) -> None:
    ok("migrate", "--url", as_text(mariadb_user))  # the account is real and may use the database
    wrong = as_text(mariadb_user.set(password="not-" + str(mariadb_user.password)))
    for command in (["migrate"], ["list"], ["show", "w"], ["prune", "--older-than", "1d"]):
        line = fails(*command, "--url", wrong)
        assert "authentication failed" in line, line
        assert "cannot reach" not in line and "cannot connect" not in line, line
        assert "password" in line


def test_a_missing_mariadb_database_is_named_as_such(servers: dict[str, Server]) -> None:
    missing = as_text(servers["mariadb"].admin_url.set(database="wfp_no_such_database"))
    for command in (["migrate"], ["list"]):
        line = fails(*command, "--url", missing)
        assert "database does not exist" in line and "wfp_no_such_database" in line, line
        assert "cannot reach" not in line and "cannot connect" not in line, line


def test_a_missing_postgresql_database_or_role_is_named_as_such(
    servers: dict[str, Server],
) -> None:
    admin = servers["postgresql"].admin_url
    missing_database = as_text(admin.set(database="wfp_no_such_database"))
    missing_role = as_text(admin.set(username="wfp_no_such_role"))
    for command in (["migrate"], ["list"], ["delete", "w"]):
        line = fails(*command, "--url", missing_database)
        assert "database does not exist" in line and "wfp_no_such_database" in line, line
        assert "cannot reach" not in line and "cannot connect" not in line, line
        line = fails(*command, "--url", missing_role)
        assert "authentication failed" in line and "wfp_no_such_role" in line, line
    line = fails("list", "--url", as_text(admin.set(port=1)))  # no server there at all
    assert "cannot connect" in line and "authentication" not in line


# -- version, and --url on either side of the command -------------------------------------------


def test_version_comes_from_the_installed_package() -> None:
    installed = importlib.metadata.version("workflow-persistence")
    assert ok("--version") == f"workflow-persistence {installed}\n"


def test_url_is_taken_before_or_after_the_command(tmp_path: Path) -> None:
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))
    for url, workflow_id in ((first, "in-first"), (second, "in-second")):
        upgrade(url)
        save(url, WorkflowSnapshot(workflow_id))
    unreachable = {URL_ENV_VAR: "postgresql://postgres@127.0.0.1:1/x"}

    assert "in-first" in ok("--url", first, "list", env=unreachable)
    assert "in-first" in ok("list", "--url", first, env=unreachable)
    both = ok("--url", first, "list", "--url", second, env=unreachable)
    assert "in-second" in both and "in-first" not in both  # the later one wins
    assert json.loads(ok("--url", second, "show", "in-second"))["workflow_id"] == "in-second"
    assert "in-first" in ok("--url", first, "delete", "in-first")
    assert stored_ids(first) == [] and stored_ids(second) == ["in-second"]


# -- the demo -----------------------------------------------------------------------------------


def suggested_commands(demo_output: str) -> list[list[str]]:
    """The commands the demo's closing hint tells the user to type."""
    lines = demo_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Next:"))
    return [
        shlex.split(line)
        for line in lines[start + 1 :]
        if line.startswith("   ") and not line.strip().startswith("(")
    ]


def run_suggested(
    command: list[str], cwd: Path, env: dict[str, str] | None
) -> subprocess.CompletedProcess[str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != URL_ENV_VAR}
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=env, timeout=TIMEOUT, check=False
    )


def check_the_hint_works(output: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Type the demo's closing commands as printed: they find its waiting run, then end it."""
    listing, showing, answering = suggested_commands(output)
    assert "list" in listing and "show" in showing and "--resume" in answering
    listed = run_suggested(listing, cwd, env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["demo-refund-waiting"]

    shown = run_suggested(showing, cwd, env)
    assert shown.returncode == 0, shown.stderr
    snapshot = json.loads(shown.stdout)
    assert snapshot["status"] == "interrupted"
    assert "240.00 EUR" in snapshot["interrupt"]["question"]

    answered = run_suggested(answering, cwd, env)
    assert answered.returncode == 0, answered.stderr
    assert "completed" in answered.stdout and "declined" in answered.stdout
    assert run_suggested(listing, cwd, env).stdout.strip() == "no stored workflows"


def test_the_demo_leaves_a_waiting_run_for_the_commands_it_suggests(tmp_path: Path) -> None:
    ok("demo", cwd=tmp_path)
    again = ok("demo", cwd=tmp_path)  # replaces the waiting run, never piles them up
    assert "--url" not in again  # the default database: the commands find it on their own
    check_the_hint_works(again, tmp_path)


def test_the_demo_suggests_the_url_it_used(url: str, tmp_path: Path) -> None:
    output = ok("demo", "--url", url, cwd=tmp_path)
    for command in suggested_commands(output):
        assert command[command.index("--url") + 1] == make_url(url).render_as_string()
    if make_url(url).password is None:
        check_the_hint_works(output, tmp_path)
    assert os.listdir(tmp_path) == []  # nothing went to a local SQLite file


# -- the default URL ----------------------------------------------------------------------------


def test_url_comes_from_the_environment(tmp_path: Path, empty_database_url: URL) -> None:
    env = {URL_ENV_VAR: as_text(empty_database_url)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok("migrate", cwd=elsewhere, env=env)
    save(as_text(empty_database_url), WorkflowSnapshot("from-env"))
    assert "from-env" in ok("list", cwd=elsewhere, env=env)
    assert json.loads(ok("show", "from-env", cwd=elsewhere, env=env))["version"] == 1
    assert os.listdir(elsewhere) == []  # no local SQLite file was touched


def test_url_option_wins_over_the_environment(tmp_path: Path, sqlite_url: str) -> None:
    save(sqlite_url, WorkflowSnapshot("given"))
    env = {URL_ENV_VAR: "postgresql://postgres@127.0.0.1:1/x"}
    assert "given" in ok("list", "--url", sqlite_url, cwd=tmp_path, env=env)


def test_url_defaults_to_a_sqlite_file_in_the_current_directory(tmp_path: Path) -> None:
    ok("migrate", cwd=tmp_path)
    database = tmp_path / "workflow_persistence.db"
    assert database.is_file()
    save(f"sqlite:///{database}", WorkflowSnapshot("local"))
    assert "local" in ok("list", cwd=tmp_path)
    assert stored_ids(f"sqlite:///{database}") == ["local"]
    assert "local" in ok("delete", "local", cwd=tmp_path)
    assert stored_ids(f"sqlite:///{database}") == []


# -- ages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("30s", timedelta(seconds=30)),
        ("1.5h", timedelta(minutes=90)),
        (" 7D ", timedelta(days=7)),
        ("1d 12h", timedelta(days=1, hours=12)),
        ("0s", timedelta(0)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
    ],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "7", "d", "7x", "-1d", "1e5d", ".5d", "7 years", "1d-", "d7", "7dd",
     "99999999999w", "1" * 400 + "d"],
)
def test_parse_age_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an age"):
        parse_age(text)


@pytest.mark.parametrize(
    ("age_", "text"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(weeks=2), "14d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(0), "0s"),
        (timedelta(microseconds=500), "0s"),
    ],
)
def test_format_age(age_: timedelta, text: str) -> None:
    assert format_age(age_) == text


@pytest.mark.parametrize(
    "age_",
    [
        timedelta(days=7),
        timedelta(hours=36),
        timedelta(seconds=3661),
        timedelta(days=400, seconds=59),
    ],
)
def test_format_age_reads_back(age_: timedelta) -> None:
    assert parse_age(format_age(age_)) == age_


def test_read_commands_do_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    for command in (["list"], ["show", "x"], ["delete", "x"], ["prune", "--older-than", "1d"]):
        result = subprocess.run(
            [sys.executable, "-m", "workflow_persistence.cli", *command, "--url", url],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and "no SQLite database" in result.stderr
    assert not (tmp_path / "typo.db").exists()
