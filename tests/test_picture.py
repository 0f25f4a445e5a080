"""Workflow.to_mermaid and ``show ID --graph``: the graph, and where a run stands on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflow_persistence import (
    DatabasePersistence,
    InMemoryPersistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowFailedError,
    WorkflowState,
)
from workflow_persistence._runtime.picture import END, START, levels, path_picture
from workflow_persistence.migrations import upgrade

from .inbox_flows import loop_workflow, refund_workflow
from .test_cli import fails, ok

REPO = Path(__file__).resolve().parents[1]


def classes(text: str) -> dict[str, set[str]]:
    """``class n0,n1 completed`` lines as {class: {ids}}."""
    found: dict[str, set[str]] = {}
    for ids, name in re.findall(r"^    class (\S+) (\w+)$", text, flags=re.MULTILINE):
        found.setdefault(name, set()).update(ids.split(","))
    return found


def test_the_whole_graph_names_nodes_and_the_events_between_them() -> None:
    text = refund_workflow().to_mermaid()
    assert text.startswith("flowchart TD\n")
    assert '    n0["draft"]' in text
    assert '    n2["pay"]' in text
    assert "    start --> n0" in text
    assert '    n0 -- "Drafted" --> n1' in text
    assert '    n1 -- "Approved" --> n2' in text
    assert '    n2 -- "StopEvent" --> stop' in text
    assert classes(text) == {}  # nothing marked without a run


def test_a_waiting_run_marks_completed_nodes_and_the_current_one() -> None:
    store = InMemoryPersistence()
    workflow = refund_workflow(store)
    workflow.start({"amount": 5}, workflow_id="r1")
    text = workflow.to_mermaid(store.load("r1"))
    assert classes(text) == {"completed": {"n0"}, "current": {"n1"}}


def test_a_failed_run_marks_its_node_failed() -> None:
    store = InMemoryPersistence()
    workflow = refund_workflow(store)
    workflow.start({"amount": 2, "fail_payment": True}, workflow_id="r2")
    with pytest.raises(WorkflowFailedError):
        workflow.resume("r2", "yes")
    text = workflow.to_mermaid(store.load("r2"))
    assert classes(text) == {"completed": {"n0", "n1"}, "failed": {"n2"}}


def test_a_loop_is_one_node_with_an_edge_back() -> None:
    store = InMemoryPersistence()
    workflow = loop_workflow(store)
    workflow.start(workflow_id="l1")
    workflow.resume("l1", "a")
    snapshot = store.load("l1")
    assert snapshot.completed_nodes == ["begin", "count"]
    whole = workflow.to_mermaid(snapshot)
    assert '    n1 -- "Counted" --> n1' in whole
    assert '    n1 -- "StopEvent" --> stop' in whole
    assert classes(whole) == {"completed": {"n0", "n1"}, "current": {"n1"}}
    path = path_picture(snapshot)
    assert path.nodes == ("begin", "count")
    assert path.edges == ((START, "", "begin"), ("begin", "", "count"), ("count", "", "count"))


def test_a_node_that_does_not_declare_what_it_returns_has_no_edges_out() -> None:
    def first(event: StartEvent, state: WorkflowState):  # type: ignore[no-untyped-def]
        return StopEvent()

    picture = Workflow([first], name="bare").picture()
    assert picture.edges == ((START, "", "first"),)
    assert levels(picture) == {START: 0, "first": 1}


def test_levels_put_each_node_below_the_one_that_leads_to_it() -> None:
    rows = levels(refund_workflow().picture())
    assert rows == {START: 0, "draft": 1, "approve": 2, "pay": 3, END: 4}


def test_show_graph_prints_the_path_or_the_whole_graph(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pic.db'}"
    upgrade(url)
    store = DatabasePersistence(url)
    workflow = refund_workflow(store)
    workflow.start({"amount": 3}, workflow_id="run-1")

    path = ok("show", "run-1", "--graph", "--url", url)
    assert path.startswith("flowchart TD\n")
    assert "    start --> n0\n    n0 --> n1\n" in path
    assert "pay" not in path  # from the snapshot alone: only where the run went
    assert classes(path) == {"completed": {"n0"}, "current": {"n1"}}

    whole = ok(
        "show", "run-1", "--graph", "--workflows", "tests.inbox_flows:WORKFLOWS", "--url", url,
        cwd=REPO,
    )
    assert whole == workflow.to_mermaid(store.load("run-1"))

    line = fails("show", "run-1", "--graph", "--workflows", "tests.inbox_flows:NOPE",
                 "--url", url, cwd=REPO)
    assert "has no 'NOPE'" in line
    line = fails("show", "run-1", "--graph", "--workflows", "tests.inbox_flows",
                 "--url", url, cwd=REPO)
    assert "pkg.module:NAME" in line
