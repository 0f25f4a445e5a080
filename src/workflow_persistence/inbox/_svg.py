"""Where the picture's boxes and arrows go, for the run page's server-drawn SVG.

Rows by distance from the start, boxes centred in their row; an edge down is a straight
arrow, an edge back up (a loop) bends around the right-hand side. The template draws the
result; every label reaches it as data, so it is escaped like any other text.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_persistence._runtime.picture import END, START, Picture, levels

__all__ = ["Box", "Drawing", "Line", "layout"]

_ROW = 84  # vertical distance between rows
_BOX_H = 36
_GAP = 28  # between boxes in a row
_MARGIN = 16
_CHAR = 7.6  # average glyph width of the label font, in px


@dataclass(frozen=True)
class Box:
    label: str
    x: float
    y: float
    width: float
    height: float
    state: str  # "completed", "current", "failed", "pending", "terminal"
    rounded: bool

    @property
    def cx(self) -> float:
        return self.x + self.width / 2


@dataclass(frozen=True)
class Line:
    path: str
    label: str
    label_x: float
    label_y: float
    taken: bool  # the run went along it


@dataclass(frozen=True)
class Drawing:
    width: float
    height: float
    boxes: tuple[Box, ...]
    lines: tuple[Line, ...]


def _state(name: str, picture: Picture) -> str:
    if name == picture.current:
        return "failed" if picture.failed else "current"
    if name in picture.completed or (name == END and picture.ended):
        return "completed"
    if name == START:
        return "completed" if picture.completed or picture.current else "terminal"
    return "terminal" if name == END else "pending"


def layout(picture: Picture) -> Drawing:
    """Coordinates for every box and arrow of ``picture``."""
    rows = levels(picture)
    names = [START, *picture.nodes, *([END] if END in rows else [])]
    by_row: dict[int, list[str]] = {}
    for name in names:
        by_row.setdefault(rows[name], []).append(name)
    widths = {name: max(64.0, len(_text(name)) * _CHAR + 28) for name in names}
    row_width = {r: sum(widths[n] for n in ns) + _GAP * (len(ns) - 1) for r, ns in by_row.items()}
    inner = max(row_width.values())
    boxes: dict[str, Box] = {}
    for row, members in by_row.items():
        x = _MARGIN + (inner - row_width[row]) / 2
        for name in members:
            boxes[name] = Box(
                _text(name), x, _MARGIN + row * _ROW, widths[name], _BOX_H,
                _state(name, picture), name in (START, END),
            )
            x += widths[name] + _GAP
    right = _MARGIN + inner
    lines = []
    visited = set(picture.completed) | {START}
    for bend, (source, label, target) in enumerate(picture.edges):
        a, b = boxes[source], boxes[target]
        taken = source in visited and (
            target in picture.completed or target == picture.current
            or (target == END and picture.ended)
        )
        if b.y > a.y:
            x1, y1, x2, y2 = a.cx, a.y + a.height, b.cx, b.y
            path = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            lines.append(Line(path, label, (x1 + x2) / 2 + 6, (y1 + y2) / 2 + 4, taken))
            continue
        # Back up (or along) a row: around the right of everything.
        out = right + 18 + 14 * (bend % 4)
        y1, y2 = a.y + a.height / 2, b.y + b.height / 2 - (8 if a is b else 0)
        x1, x2 = a.x + a.width, b.x + b.width
        path = (
            f"M{x1:.1f},{y1 + (6 if a is b else 0):.1f} C{out:.1f},{y1 + 24:.1f}"
            f" {out:.1f},{y2 - 24:.1f} {x2:.1f},{y2:.1f}"
        )
        lines.append(Line(path, label, out + 4, (y1 + y2) / 2 + 4, taken))
    label_room = max((len(line.label) * _CHAR for line in lines if line.label), default=0)
    width = right + 18 + 14 * 4 + label_room + _MARGIN
    height = _MARGIN * 2 + max(rows.values()) * _ROW + _BOX_H
    return Drawing(width, height, tuple(boxes.values()), tuple(lines))


def _text(name: str) -> str:
    return {START: "start", END: "end"}.get(name, name)
