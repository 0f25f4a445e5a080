"""Workflows used by the runtime tests, importable from other processes."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from workflow_persistence import (
    Event,
    Persistence,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowState,
    interrupt,
)

# -- the example of the README -------------------------------------------------------------------

@dataclass
class Drafted(Event):
    text: str


def draft(event: StartEvent, state: WorkflowState) -> Drafted:
    state["draft"] = f"Refund {state['amount']} EUR"
    return Drafted(state["draft"])


def approve(event: Drafted, state: WorkflowState) -> StopEvent:
    answer = interrupt({"question": "Approve?", "draft": event.text})
    state["approved"] = answer == "yes"
    return StopEvent(result=state["approved"])


def approval_workflow(persistence: Persistence) -> Workflow:
    return Workflow([draft, approve], persistence=persistence)


# -- a node with a side effect, for exactly-once checks ------------------------------------

class SideEffects:
    """Counts how often the guarded node ran past its interrupt (thread-safe)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()

    def bump(self) -> None:
        with self.lock:
            self.count += 1


def counting_workflow(persistence: Persistence, effects: SideEffects, *, block: bool) -> Workflow:
    @dataclass
    class Asked(Event):
        pass

    def ask(event: StartEvent, state: WorkflowState) -> Asked:
        return Asked()

    def act(event: Asked, state: WorkflowState) -> StopEvent:
        answer = interrupt("go?")
        effects.bump()
        if block:  # hold the run until the test lets it finish
            effects.entered.set()
            effects.release.wait(timeout=30)
        return StopEvent(result=answer)

    return Workflow([ask, act], persistence=persistence, types=[Asked])


# -- a node that blocks until killed (take-over tests) ---------------------------------------

@dataclass
class Waiting(Event):
    pass


def start_waiting(event: StartEvent, state: WorkflowState) -> Waiting:
    return Waiting()


def hang_after_answer(event: Waiting, state: WorkflowState) -> StopEvent:
    answer = interrupt("continue?")
    if os.environ.get("WFP_TEST_HANG") == "1":
        print("entered", flush=True)
        sys.stdin.read()  # block until the parent kills this process
    return StopEvent(result=answer)


def hanging_workflow(persistence: Persistence) -> Workflow:
    return Workflow([start_waiting, hang_after_answer], persistence=persistence)


# -- a flaky node ------------------------------------------------------------------------------

class Flaky:
    """A callable node that fails until ``fixed``; its name is its class name."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0

    def __call__(self, event: StartEvent, state: WorkflowState) -> StopEvent:
        self.calls += 1
        state["writes"] = state.get("writes", 0) + 1
        if not self.fixed:
            raise ConnectionError(f"service unavailable (call {self.calls})")
        return StopEvent(result=state["writes"])


def url_of(persistence: Any) -> str:
    return str(persistence.engine.url.render_as_string(hide_password=False))
