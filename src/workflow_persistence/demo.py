"""``workflow-persistence demo``: a refund that waits for a manager's approval.

The run starts, pauses at ``interrupt()`` and is saved; the demo shows what was saved,
then a fresh Python process resumes the run with the manager's answer. A second refund is
left waiting, so the commands the demo suggests at the end have something to show.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from workflow_persistence._runtime.interrupts import interrupt
from workflow_persistence._runtime.workflow import Workflow, WorkflowState
from workflow_persistence._storage.database import DatabasePersistence

from ._events import Event, StartEvent, StopEvent
from .migrations import URL_ENV_VAR, resolve_url

#: The run the demo leaves waiting; one id, so running the demo again replaces it.
WAITING_ID = "demo-refund-waiting"

# -- the workflow ---------------------------------------------------------------------------


@dataclass
class RefundDrafted(Event):
    text: str
    amount: Decimal


@dataclass
class RefundApproved(Event):
    approver: str


def receive_request(event: StartEvent, state: WorkflowState) -> RefundDrafted:
    """Check the request and draft the refund."""
    amount = Decimal(state["amount"])
    state["risk"] = "low" if amount <= 100 else "high"
    state["draft"] = f"Refund {amount:.2f} {state['currency']} to {state['customer']}"
    return RefundDrafted(state["draft"], amount)


def manager_approval(event: RefundDrafted, state: WorkflowState) -> RefundApproved | StopEvent:
    """Pause until a manager answers; the answer arrives when the run is resumed."""
    answer = interrupt(
        {
            "question": f"Approve a refund of {event.amount:.2f} {state['currency']}"
            f" to {state['customer']}?",
            "draft": event.text,
            "risk": state["risk"],
        }
    )
    if str(answer).strip().lower() not in ("yes", "y", "approve"):
        return StopEvent(result={"refunded": None, "reason": f"declined: {answer!r}"})
    return RefundApproved(approver=state.metadata.get("assignee", "manager"))


def issue_refund(event: RefundApproved, state: WorkflowState) -> StopEvent:
    """Pay out, and end the run."""
    state["reference"] = f"RF-{secrets.token_hex(3).upper()}"
    return StopEvent(
        result={
            "refunded": f"{Decimal(state['amount']):.2f} {state['currency']}",
            "approved_by": event.approver,
            "reference": state["reference"],
        }
    )


def refund_workflow(url: str) -> Workflow:
    return Workflow(
        [receive_request, manager_approval, issue_refund],
        name="refund-approval",
        persistence=DatabasePersistence(url),
    )


# -- the walk-through -------------------------------------------------------------------------


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(url: Any) -> None:
    url = str(url)
    workflow = refund_workflow(url)
    workflow_id = f"demo-refund-{secrets.token_hex(4)}"
    _say("workflow-persistence demo: a refund that needs a manager's approval")
    _say(f"database: {_hide_password(url)}")
    _say()
    _say("1. Start the run")
    _say("   A customer asks for a 30.00 EUR refund; the workflow drafts it and asks a manager.")
    run = workflow.start(
        {"amount": "30.00", "currency": "EUR", "customer": "ana@example.com", "order": "A-1017"},
        workflow_id=workflow_id,
        metadata={"user": "ana", "channel": "support-portal", "assignee": "maria"},
    )
    _say(f"   -> {run.status}: the run paused at interrupt() and was saved")
    _say()

    persistence = workflow.persistence
    assert isinstance(persistence, DatabasePersistence)  # as refund_workflow made it
    snapshot = persistence.load(workflow_id)
    stored = persistence.serializer.dumps(snapshot)
    _say("2. What was saved")
    rows = [
        ("workflow id", f"{snapshot.workflow_id} (workflow {snapshot.workflow_name})"),
        ("status", f"{snapshot.status}, version {snapshot.version}, {len(stored)} bytes"),
        ("next node", f"{snapshot.current_node} (gets {type(snapshot.event).__name__})"),
        ("completed", " -> ".join(snapshot.completed_nodes) or "-"),
        ("question", snapshot.interrupt["question"]),
        ("state", ", ".join(f"{k}={v}" for k, v in snapshot.state.items())),
        ("metadata", ", ".join(f"{k}={v}" for k, v in snapshot.metadata.items())),
        ("saved at", snapshot.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    for label, value in rows:
        _say(f"   {label:<12} {value}")
    _say()

    _say('3. Resume it in a fresh process with the manager\'s answer "yes"')
    child = subprocess.run(  # noqa: S603 - this Python, this module, our own arguments
        [sys.executable, "-m", "workflow_persistence.demo", "--resume", workflow_id,
         "--answer", "yes"],
        env={**os.environ, URL_ENV_VAR: url},  # not in argv, where a password would show
        check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"the resuming process failed with exit status {child.returncode}")
    _say()
    _say("4. A completed run deletes its record")
    left = "yes" if persistence.exists(workflow_id) else "nothing"
    _say(f"   stored under {workflow_id}: {left}")
    _say()
    _leave_one_waiting(workflow)
    _say()
    _say("Next: look at the waiting run, then answer it from yet another process")
    url_option = _url_option(url)
    cli = _script("workflow-persistence", "workflow_persistence.cli")
    for command in (
        [*cli, "list", *url_option],
        [*cli, "show", WAITING_ID, *url_option],
        [*_python_module("workflow_persistence.demo"), "--resume", WAITING_ID, "--answer", "no",
         *url_option],
    ):
        _say(f"   {shlex.join(command)}")
    if url_option and _has_password(url):
        _say("   (with the database password in place of ***)")
    if isinstance(persistence, DatabasePersistence):
        persistence.close()


def _leave_one_waiting(workflow: Workflow) -> None:
    """Pause a second refund and keep it: what `list` and `show` will find."""
    persistence = workflow.persistence
    assert isinstance(persistence, DatabasePersistence)  # as refund_workflow made it
    replaced = persistence.delete(WAITING_ID)  # the one an earlier demo left
    run = workflow.start(
        {"amount": "240.00", "currency": "EUR", "customer": "ben@example.com", "order": "B-2203"},
        workflow_id=WAITING_ID,
        metadata={"user": "ben", "channel": "email", "assignee": "maria"},
    )
    _say("5. A second refund waits for its answer")
    _say(f"   -> {run.status}: {run.interrupt['question']} (risk {run.state['risk']})")
    earlier = ", replacing the one an earlier demo left" if replaced else ""
    _say(f"   stored under {WAITING_ID}{earlier}")


def _url_option(url: str) -> list[str]:
    """``--url`` for the suggested commands, unless they find this database on their own."""
    if url == str(resolve_url(None)):
        return []
    return ["--url", _hide_password(url)]


def _script(name: str, module: str) -> list[str]:
    """How to type a console script of this installation: its name when on PATH, else a path.

    ``make demo`` runs from ``.venv`` without activating it: a bare
    ``workflow-persistence`` would not be found there.
    """
    installed = Path(sys.executable).with_name(name)
    if installed.is_file():
        return [_shortest(installed, name)]
    return _python_module(module)  # run from a source tree, not installed


def _python_module(module: str) -> list[str]:
    return [_shortest(Path(sys.executable), "python"), "-m", module]


def _shortest(path: Path, name: str) -> str:
    found = shutil.which(name)
    if found is not None and Path(found).absolute() == path.absolute():
        return name
    if path.absolute().is_relative_to(Path.cwd()):
        return os.path.join(".", path.absolute().relative_to(Path.cwd()))  # a path, not a name
    return str(path)


def _resume_here(url: str, workflow_id: str, answer: str) -> None:
    """What the fresh process does: load the run by id and continue it."""
    workflow = refund_workflow(url)
    pid = os.getpid()
    _say(f"   [process {pid}] loaded {workflow_id}, resuming node manager_approval")
    run = workflow.resume(workflow_id, answer)
    _say(f"   [process {pid}] -> {run.status}: {run.result}")


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _has_password(url: str) -> bool:
    try:
        return make_url(url).password is not None
    except Exception:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workflow_persistence.demo")
    parser.add_argument("--url", default=None, help=f"default: ${URL_ENV_VAR}, else SQLite")
    parser.add_argument("--resume", metavar="ID")
    parser.add_argument("--answer", default="yes")
    args = parser.parse_args(argv)
    url = str(resolve_url(args.url))
    if args.resume:
        _resume_here(url, args.resume, args.answer)
    else:
        run_demo(url)


if __name__ == "__main__":
    # Run as a script this module is __main__, and its event classes would be stored
    # under that name; use the importable module so both processes agree.
    from workflow_persistence.demo import main as _main

    _main()
