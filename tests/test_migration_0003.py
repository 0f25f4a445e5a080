"""Revision wfp_0003 (the deadline column) on databases that hold runs: the downgrade keeps
every record, the upgrade fills each waiting run's deadline from its data, and the schema
then matches the model (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from workflow_persistence import (
    DatabasePersistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
    metadata,
    migrations,
)
from workflow_persistence._storage.database import make_engine

from .hostapp.support import schema_diff

TABLE = "workflow_interrupts"
INDEX = "ix_workflow_interrupts_deadline"


def ask(event: StartEvent, state: WorkflowState) -> StopEvent:
    if state["timed"]:
        answer = interrupt("timed?", answer=bool, timeout=timedelta(hours=1), default=False)
    else:
        answer = interrupt("untimed?")
    return StopEvent(result=answer)


def rows(url: URL) -> dict[str, tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sa.text(f"SELECT workflow_id, data, version, created_at, updated_at FROM {TABLE}")
            ).all()
    finally:
        engine.dispose()
    return {row[0]: (bytes(row[1]), *row[2:]) for row in found}


def shape(url: URL) -> tuple[set[str], set[str], str | None]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            columns = {c["name"] for c in inspector.get_columns(TABLE)}
            indexes = {str(i["name"]) for i in inspector.get_indexes(TABLE)}
            revision = migrations.current_revision(connection)
    finally:
        engine.dispose()
    return columns, indexes, revision


def test_wfp_0003_down_and_up_with_records(empty_database_url: URL) -> None:
    url = empty_database_url
    migrations.upgrade(url)
    with DatabasePersistence(url, create_table=False) as persistence:
        workflow = Workflow([ask], name="m", persistence=persistence)
        workflow.start({"timed": True}, workflow_id="timed")
        workflow.start({"timed": False}, workflow_id="untimed")
        answered = workflow.start({"timed": True}, workflow_id="answered-later")
        expected = persistence.load("timed").history[-1].deadline
        assert expected is not None
    before = rows(url)

    migrations.upgrade(url, "wfp_0002", direction="downgrade")
    columns, indexes, revision = shape(url)
    assert "deadline" not in columns and INDEX not in indexes and revision == "wfp_0002"
    assert rows(url) == before  # every record kept as it was

    migrations.upgrade(url)
    columns, indexes, revision = shape(url)
    assert "deadline" in columns and INDEX in indexes and revision == "wfp_0003"
    assert rows(url) == before
    with DatabasePersistence(url, create_table=False) as persistence:
        deadlines = {i.workflow_id: i.deadline for i in persistence.list()}
        assert deadlines["timed"] == expected and deadlines["untimed"] is None
        assert deadlines["answered-later"] is not None
        # The filled column serves the listing, and the run goes on as usual.
        workflow = Workflow([ask], name="m", persistence=persistence)
        done = workflow.resume("answered-later", True, expected_version=answered.version)
        assert done.result is True
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert schema_diff(connection, metadata) == []
    finally:
        engine.dispose()
