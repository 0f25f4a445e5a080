"""Workflow events: dataclasses that carry what one node hands to the next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    """Base of every workflow event; subclasses are dataclasses."""


@dataclass
class StartEvent(Event):
    """Received by the node that begins a run; carries nothing."""


@dataclass
class StopEvent(Event):
    """Returned by the node that ends a run; ``result`` becomes ``RunResult.result``."""

    result: Any = None
