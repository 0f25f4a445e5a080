"""A picture of a workflow: its nodes and the events between them, and where a run is.

One description (:class:`Picture`) feeds both renderings: Mermaid text here, for
``Workflow.to_mermaid`` and ``workflow-persistence show ID --graph``, and the inbox's
server-drawn SVG.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

from workflow_persistence._events import StartEvent, StopEvent

if TYPE_CHECKING:
    from workflow_persistence._events import Event
    from workflow_persistence._snapshot import WorkflowSnapshot

    from .graph import NodeSpec

__all__ = ["END", "START", "Picture", "graph_picture", "mermaid", "path_picture"]

#: The two ends of every picture; no node can be named so (a node name is a Python name).
START = "(start)"
END = "(end)"
#: Statuses whose ``current_node`` is where the run stands.
_AT_A_NODE = frozenset({"interrupted", "failed", "running"})


@dataclass(frozen=True)
class Picture:
    """Nodes in reading order (the first run first), edges ``(from, label, to)``.

    ``completed`` are the nodes a run finished; ``current`` the one it stands at,
    ``failed`` when that node failed; ``ended`` when the run completed.
    """

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str, str], ...]
    completed: frozenset[str] = field(default_factory=frozenset)
    current: str | None = None
    failed: bool = False
    ended: bool = False


def _marked(
    nodes: tuple[str, ...], edges: list[tuple[str, str, str]], snapshot: WorkflowSnapshot | None
) -> Picture:
    if snapshot is None:
        return Picture(nodes, tuple(edges))
    return Picture(
        nodes,
        tuple(edges),
        completed=frozenset(snapshot.completed_nodes),
        current=snapshot.current_node if snapshot.status in _AT_A_NODE else None,
        failed=snapshot.status == "failed",
        ended=snapshot.status == "completed",
    )


def graph_picture(
    graph: Mapping[type[Event], NodeSpec], snapshot: WorkflowSnapshot | None = None
) -> Picture:
    """The whole graph: an edge for each event a node declares it returns.

    A node without a return annotation has no edges out: which events it returns is
    only known when it runs.
    """
    by_event = {event: spec.name for event, spec in graph.items()}
    edges: list[tuple[str, str, str]] = [(START, "", by_event[StartEvent])]
    for spec in graph.values():
        for event in spec.returns or ():
            target = END if event is StopEvent else by_event[event]
            edges.append((spec.name, event.__name__, target))
    return _marked(_reading_order(list(by_event.values()), edges), edges, snapshot)


def path_picture(snapshot: WorkflowSnapshot) -> Picture:
    """The path a run took, from the snapshot alone: its completed nodes in order, then
    the node it stands at (a node met twice in a loop is drawn once, with an edge back)."""
    path = [START, *snapshot.completed_nodes]
    if snapshot.status in _AT_A_NODE and snapshot.current_node is not None:
        path.append(snapshot.current_node)
    elif snapshot.status == "completed":
        path.append(END)
    edges: list[tuple[str, str, str]] = []
    for source, target in pairwise(path):
        if (source, "", target) not in edges:
            edges.append((source, "", target))
    nodes = tuple(name for name in dict.fromkeys(path) if name not in (START, END))
    return _marked(nodes, edges, snapshot)


def _reading_order(names: list[str], edges: list[tuple[str, str, str]]) -> tuple[str, ...]:
    """Breadth first from the start, then the nodes nothing reaches, as declared."""
    following: dict[str, list[str]] = {}
    for source, _, target in edges:
        following.setdefault(source, []).append(target)
    seen: dict[str, None] = {}
    queue = deque([START])
    while queue:
        for target in following.get(queue.popleft(), []):
            if target != END and target not in seen:
                seen[target] = None
                queue.append(target)
    return (*seen, *(name for name in names if name not in seen))


def levels(picture: Picture) -> dict[str, int]:
    """Each node's row, counted from the start: its distance along forward edges."""
    following: dict[str, list[str]] = {}
    for source, _, target in picture.edges:
        following.setdefault(source, []).append(target)
    level = {START: 0}
    queue = deque([START])
    while queue:
        source = queue.popleft()
        for target in following.get(source, []):
            if target not in level:
                level[target] = level[source] + 1
                queue.append(target)
    level.pop(END, None)  # the end goes below every node, however it is reached
    bottom = max(level.values())
    for name in picture.nodes:  # unreached nodes: one row below the rest, side by side
        if name not in level:
            level[name] = bottom + 1
    if any(target == END for _, _, target in picture.edges):
        level[END] = max(level.values()) + 1
    return level


def mermaid(picture: Picture) -> str:
    """Mermaid ``flowchart`` text; completed, current and failed nodes carry a class."""
    ids = {START: "start", END: "stop"}
    ids.update({name: f"n{i}" for i, name in enumerate(picture.nodes)})
    lines = ["flowchart TD", '    start(["start"])']
    lines += [f'    {ids[name]}["{_label(name)}"]' for name in picture.nodes]
    if any(target == END for _, _, target in picture.edges):
        lines.append('    stop(["end"])')
    for source, label, target in picture.edges:
        arrow = f'-- "{_label(label)}" -->' if label else "-->"
        lines.append(f"    {ids[source]} {arrow} {ids[target]}")
    lines += [
        "    classDef completed fill:#dcfce7,stroke:#15803d,color:#14532d",
        "    classDef current fill:#fef3c7,stroke:#b45309,stroke-width:3px,color:#78350f",
        "    classDef failed fill:#fee2e2,stroke:#b91c1c,stroke-width:3px,color:#7f1d1d",
    ]
    done = [ids[name] for name in picture.nodes if name in picture.completed]
    if picture.ended:
        done.append("stop")
    if done:
        lines.append(f"    class {','.join(done)} completed")
    if picture.current is not None and picture.current in ids:
        kind = "failed" if picture.failed else "current"
        lines.append(f"    class {ids[picture.current]} {kind}")
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    """Text inside a quoted Mermaid label: quotes and markup as entities."""
    for raw, entity in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(raw, entity)
    return text
