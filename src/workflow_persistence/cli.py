"""The ``workflow-persistence`` command line, for operators.

Every command takes ``--url``, before or after the command's name (default:
``$WORKFLOW_PERSISTENCE_URL``, else the local SQLite file). Errors are one line on stderr
and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import importlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from workflow_persistence._runtime.picture import mermaid, path_picture
from workflow_persistence._runtime.workflow import Workflow, workflows_by_name
from workflow_persistence._serialization.codec import UnresolvedObject
from workflow_persistence._serialization.serializers import JsonSerializer
from workflow_persistence._sql.operations import first_line
from workflow_persistence._storage.database import DatabasePersistence

from . import migrations
from ._ids import check_workflow_id
from ._serialization import framing as _framing
from ._snapshot import Decision, ErrorInfo, StoredSnapshotInfo, utc_now
from .errors import CorruptSnapshotError, PersistenceError, WorkflowError

__all__ = ["format_age", "import_workflows", "main", "parse_age"]

DISTRIBUTION = "workflow-persistence"

_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_AGE_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


#: Cutoffs are clamped here: nothing was stored before, and older instants may not fit
#: a database's datetime type (MySQL's DATETIME starts at year 1000).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class CommandError(Exception):
    """A failure worth one line on stderr."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        print(f"{parser.prog} {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The version pip installed (package metadata), ``unknown`` when run from a bare tree."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    """``--limit``: 0 would list nothing, and some tools read it as "no limit": refuse it."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, not {number} (leave --limit out to list every workflow)"
        )
    return number


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``1d12h``, ``90m``, ``2w``, ``30s`` as a timedelta."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _AGE_PART.sub("", compact):
        raise argparse.ArgumentTypeError(
            f"not an age: {text!r} (use a number and a unit: 7d, 12h, 30m, 45s, 2w)"
        )
    age = timedelta()
    try:
        for number, unit in _AGE_PART.findall(compact):
            age += timedelta(**{_AGE_UNITS[unit]: float(number)})
    except OverflowError:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} is too large") from None
    return age


def _cutoff(age: timedelta) -> datetime:
    """The instant ``age`` ago (never before 1970, where no snapshot can be)."""
    try:
        return max(datetime.now(UTC) - age, _EARLIEST)
    except OverflowError:
        return _EARLIEST


def format_age(age: timedelta) -> str:
    """The compact form :func:`parse_age` reads: ``7d``, ``1d12h``, ``90s``."""
    seconds = int(age.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _persistence(url: str | None) -> DatabasePersistence:
    """The store the read and delete commands work on; they never create anything."""
    resolved = migrations.resolve_url(url)
    try:
        parsed = make_url(resolved)
    except sa_exc.ArgumentError:
        parsed = None  # DatabasePersistence reports it
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
            raise CommandError(f"no SQLite database at {path}; run `workflow-persistence migrate`")
    serializer = JsonSerializer(unknown_classes="stand-in")
    return DatabasePersistence(resolved, serializer=serializer, create_table=False)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def to_jsonable(value: Any) -> Any:
    """A JSON view of a decoded snapshot value, for people to read."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN or Infinity
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return _jsonable_dict(value)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return {"bytes (base64)": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, UnresolvedObject):
        return {"__class__": value.class_path, "fields": to_jsonable(value.fields)}
    if isinstance(value, enum.Enum):
        name = f"{type(value).__qualname__}.{value.name}"
        return {"__enum__": name, "value": to_jsonable(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Decision | ErrorInfo):  # the snapshot's own parts
            return fields
        return {"__class__": f"{type(value).__module__}:{type(value).__qualname__}", **fields}
    return repr(value)


def _jsonable_dict(value: dict[Any, Any]) -> dict[str, Any]:
    """JSON keys are strings: other keys show as their repr, kept apart from string keys."""
    view: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str):
            name = key
        else:
            name = repr(key)
            while name in value or name in view:  # {1: ..., "1": ...} both stay visible
                name = f"{name} ({type(key).__name__})"
        view[name] = to_jsonable(item)
    return view


def _cmd_migrate(args: argparse.Namespace) -> None:
    url = migrations.resolve_url(args.url)
    try:
        migrations.upgrade(url)
    except sa_exc.OperationalError as exc:
        raise CommandError(f"cannot reach the database: {first_line(exc)}") from exc
    print(f"workflow_interrupts is up to date in {_safe_url(url)}")


def _cmd_list(args: argparse.Namespace) -> None:
    with _persistence(args.url) as persistence:
        infos = persistence.list(
            status=args.status,
            workflow_name=args.workflow,
            metadata=_metadata_filter(args.meta),
            updated_before=None if args.older_than is None else _cutoff(args.older_than),
            deadline_before=utc_now() if args.overdue else None,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([_info_view(i) for i in infos], indent=2, ensure_ascii=False, default=str))
    elif infos:
        print("\n".join(_table(infos, shutil.get_terminal_size().columns)))
    else:
        print(_nothing_listed(args))


def _info_view(info: StoredSnapshotInfo) -> dict[str, Any]:
    """Every field of a listed record, datetimes as ISO 8601 text."""
    view: dict[str, Any] = {}
    for f in dataclasses.fields(info):
        value = getattr(info, f.name)
        view[f.name] = _iso(value) if isinstance(value, datetime) else value
    return view


_COLUMNS = ("WORKFLOW ID", "STATUS", "WORKFLOW", "NODE", "QUESTION", "UPDATED (UTC)")
_GAP = "  "
_MIN_QUESTION = 12  # the question keeps this much even when the other columns are wide


def _table(infos: Sequence[StoredSnapshotInfo], width: int) -> list[str]:
    """One line per record; the question is cut so that a line fits ``width``.

    When a listed run's question has a deadline, a last column shows each deadline and
    marks those that passed as overdue.
    """
    now = utc_now()
    timed = any(i.deadline is not None for i in infos)
    headers = (*_COLUMNS, "DEADLINE (UTC)") if timed else _COLUMNS
    rows = [
        (
            _one_line(i.workflow_id),
            _one_line(i.status),
            _one_line(i.workflow_name or "-"),
            _one_line(i.current_node or "-"),
            question(i.interrupt),
            _iso_seconds(i.updated_at),
            *((_deadline_cell(i.deadline, now),) if timed else ()),
        )
        for i in infos
    ]
    widths = [max(len(headers[c]), *(len(r[c]) for r in rows)) for c in range(len(headers))]
    others = sum(widths) - widths[4] + len(_GAP) * (len(headers) - 1)
    widths[4] = min(widths[4], max(width - others, _MIN_QUESTION))
    lines = []
    for row in [headers, *rows]:
        cells = [*row[:4], _cut(row[4], widths[4]), *row[5:]]
        lines.append(_GAP.join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)))
    return [line.rstrip() for line in lines]


def _iso_seconds(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def _deadline_cell(deadline: datetime | None, now: datetime) -> str:
    """The deadline of a run's question; "overdue" once it passed ("-" when it has none)."""
    if deadline is None:
        return "-"
    return f"{_iso_seconds(deadline)} overdue" if deadline <= now else _iso_seconds(deadline)


def question(interrupt: Any) -> str:
    """What a waiting run asks, in one line: the ``"question"`` of an object that has one,
    else the question's compact JSON text ("-" when it asks nothing)."""
    if interrupt is None:
        return "-"
    if isinstance(interrupt, dict) and "question" in interrupt:
        interrupt = interrupt["question"]
        if isinstance(interrupt, str):
            return _one_line(interrupt)
    return _one_line(json.dumps(interrupt, ensure_ascii=False, separators=(",", ":"), default=str))


def _one_line(text: str) -> str:
    """``text`` without line breaks or other control characters (shown escaped)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _nothing_listed(args: argparse.Namespace) -> str:
    """Say "no stored workflows" only when none is stored, not when a filter left none."""
    conditions = []
    if args.status:
        conditions.append(f"with status {' or '.join(args.status)}")
    if args.workflow:
        conditions.append(f"of workflow {' or '.join(map(repr, args.workflow))}")
    if args.meta:
        pairs = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.meta)
        conditions.append(f"with metadata {pairs}")
    if args.older_than is not None:
        conditions.append(f"not updated for {format_age(args.older_than)}")
    return " ".join(["no stored workflows", *conditions])


def _statuses(text: str) -> list[str]:
    """``--status interrupted,failed``: one or several, the library checks the names."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"not a status or a comma-separated list: {text!r}")
    return names


_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")  # "0017" stays text: an id, not a number


def meta_pair(text: str) -> tuple[str, str | int | bool]:
    """``--meta KEY=VALUE``. VALUE is text, except a whole number without leading zeros (an
    int) and ``true`` or ``false`` (a bool); write it as a JSON string (``code="7"``) for
    that text itself. Metadata values match exactly: the int 7 is not the text "7"."""
    key, equals, raw = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    value: str | int | bool = raw
    if raw in ("true", "false"):
        value = raw == "true"
    elif _INTEGER.fullmatch(raw):
        value = int(raw)
    elif len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a JSON string: {raw!r}") from None
        value = decoded
    return key, value


def _metadata_filter(pairs: Sequence[tuple[str, str | int | bool]]) -> dict[str, Any]:
    wanted: dict[str, Any] = {}
    for key, value in pairs:
        if key in wanted and wanted[key] != value:
            raise CommandError(f"--meta {key} is given twice: a record has one value per key")
        wanted[key] = value
    return wanted


def _cmd_show(args: argparse.Namespace) -> None:
    workflow_id = check_workflow_id(args.workflow_id)
    with _persistence(args.url) as persistence:
        record = persistence._read(workflow_id)  # raw bytes: the header, the size
        if record is None:
            raise CommandError(f"no workflow snapshot is stored under id {args.workflow_id!r}")
        data, version, created_at, updated_at, expires_at = record
        if expires_at is not None and expires_at <= utc_now():
            raise CommandError(
                f"no workflow snapshot is stored under id {args.workflow_id!r} (the record"
                f" there expired at {_iso(expires_at)}; prune removes it)"
            )
        fmt = _framing.format_name(_framing.unframe(data)[0]) if data[:4] == _framing.MAGIC else "?"
        try:
            # Decode the bytes just read: a second read could see a newer version.
            snapshot = persistence.serializer.loads(data)
        except CorruptSnapshotError as exc:
            if fmt == "pickle":
                raise CommandError(
                    f"{args.workflow_id!r} is a signed pickle ({len(data)} bytes, version"
                    f" {version}); only the application holding its key can read it"
                ) from exc
            raise
    if snapshot.workflow_id != workflow_id:
        raise CommandError(
            f"the record stored under {workflow_id!r} holds the snapshot of"
            f" {snapshot.workflow_id!r}"
        )
    if args.graph:
        if args.workflows is None:
            print(mermaid(path_picture(snapshot)), end="")
        else:
            workflow = _workflow_of(import_workflows(args.workflows), snapshot.workflow_name)
            print(workflow.to_mermaid(snapshot), end="")
        return
    view = {
        "workflow_id": snapshot.workflow_id,
        "status": snapshot.status,
        "workflow_name": snapshot.workflow_name,
        "version": version,
        "created_at": _iso(created_at),
        "updated_at": _iso(updated_at),
        "expires_at": None if expires_at is None else _iso(expires_at),
        "stored_bytes": len(data),
        "format": fmt,
        "current_node": snapshot.current_node,
        "event": to_jsonable(snapshot.event),
        "completed_nodes": snapshot.completed_nodes,
        "interrupt": to_jsonable(snapshot.interrupt),
        "result": to_jsonable(snapshot.result),
        "attempts": snapshot.attempts,
        "error": to_jsonable(snapshot.error),
        "history": to_jsonable(snapshot.history),
        "metadata": to_jsonable(snapshot.metadata),
        "state": to_jsonable(snapshot.state),
    }
    print(json.dumps(view, indent=2, ensure_ascii=False))


def import_workflows(spec: str) -> dict[str, Workflow]:
    """``pkg.module:NAME``: a Workflow, or an iterable of them, keyed by name.

    The current directory is searched first, as ``python -m`` and uvicorn do, so an
    app's own module is found without installing it.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise CommandError(f"--workflows takes pkg.module:NAME, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"--workflows {spec}: cannot import {module_name}: {exc}") from exc
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise CommandError(f"--workflows {spec}: {module_name} has no {attribute!r}") from None
    return workflows_by_name(found)


def _workflow_of(workflows: dict[str, Workflow], name: str | None) -> Workflow:
    if name in workflows:
        return workflows[name]
    if name is None and len(workflows) == 1:
        return next(iter(workflows.values()))
    raise CommandError(
        f"the run belongs to workflow {name!r}, which --workflows does not name"
        f" (it names {', '.join(map(repr, workflows))})"
    )


def _cmd_delete(args: argparse.Namespace) -> None:
    with _persistence(args.url) as persistence:
        if not persistence.delete(args.workflow_id):
            raise CommandError(f"no workflow snapshot is stored under id {args.workflow_id!r}")
    print(f"deleted {args.workflow_id}")


def _cmd_prune(args: argparse.Namespace) -> None:
    if args.status and args.older_than is None:
        raise CommandError(
            "--status chooses among the records --older-than selects (expired records are"
            " always pruned): give --older-than too"
        )
    cutoff = None if args.older_than is None else _cutoff(args.older_than)
    with _persistence(args.url) as persistence:
        if args.dry_run:
            print(_dry_run(persistence, cutoff, args))
            return
        removed = persistence.prune(cutoff, status=args.status)
    print(f"pruned {_count(removed)}{_selection(args)}")


def _dry_run(
    persistence: DatabasePersistence, cutoff: datetime | None, args: argparse.Namespace
) -> str:
    """What prune would delete: the records ``list`` finds with the same filters (it never
    shows expired ones), plus the expired ones, counted on their own index."""
    now = utc_now()
    old = 0 if cutoff is None else len(persistence.list(updated_before=cutoff, status=args.status))
    expired = _expired_count(persistence, now)
    parts = [f"{expired} expired"]
    if cutoff is not None:
        parts.insert(0, f"{old}{_selection(args, expired=False)}")
    return f"would prune {_count(old + expired)}: {', '.join(parts)} (nothing was deleted)"


def _expired_count(persistence: DatabasePersistence, now: datetime) -> int:
    table = persistence.table
    query = sa.select(sa.func.count()).select_from(table).where(table.c.expires_at <= now)
    with persistence.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _count(number: int) -> str:
    return f"{number} snapshot{'s' if number != 1 else ''}"


def _selection(args: argparse.Namespace, *, expired: bool = True) -> str:
    """The records a prune chose, as words: `` not updated for 7d with status failed``."""
    if args.older_than is None:
        return " (expired)" if expired else ""
    words = f" not updated for {format_age(args.older_than)}"
    if args.status:
        words += f" with status {' or '.join(args.status)}"
    return words + (", or expired" if expired else "")


def _cmd_serve(args: argparse.Namespace) -> None:
    try:
        from .inbox._serve import serve
    except ImportError as exc:
        raise CommandError(
            f"serve needs the inbox extra ({exc.name} is missing):"
            " pip install 'workflow-persistence[inbox]'"
        ) from exc
    if args.no_token and args.token is not None:
        raise CommandError("--token and --no-token contradict each other: give one")
    workflows = import_workflows(args.workflows)
    serializer = JsonSerializer(unknown_classes="stand-in")  # show runs of any class
    persistence = DatabasePersistence(
        migrations.resolve_url(args.url), serializer=serializer, create_table=False
    )
    serve(workflows.values(), persistence, host=args.host, port=args.port, token=args.token,
          require_token=not args.no_token, user=args.user)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(migrations.resolve_url(args.url))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="workflow-persistence",
        description="Inspect and manage saved workflow snapshots.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    url_help = (
        "database URL (default: $WORKFLOW_PERSISTENCE_URL, else sqlite:///workflow_persistence.db)"
    )
    parser.add_argument("--url", default=None, help=url_help)
    # Each command takes --url too; SUPPRESS keeps one given before the command from being
    # reset to the default, while one given after it wins.
    url_after = _Parser(add_help=False)
    url_after.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, run: Callable[[argparse.Namespace], None]) -> Any:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[url_after])
        sub.set_defaults(run=run)
        return sub

    command(
        "demo", "run a human-approval workflow: pause, save, resume in a new process", _cmd_demo
    )
    command("migrate", "create or upgrade the workflow_interrupts table", _cmd_migrate)
    listing = command("list", "list stored workflows, most recently updated first", _cmd_list)
    listing.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                         help="show at most N (1 or more)")
    listing.add_argument("--older-than", type=parse_age, default=None, metavar="AGE",
                         help="only workflows not updated for AGE (7d, 12h, 30m)")
    _status_option(listing, "only workflows with this status")
    listing.add_argument("--overdue", action="store_true",
                         help="only runs whose question's deadline has passed")
    listing.add_argument("--workflow", action="append", default=None, metavar="NAME",
                         help="only runs of the workflow with this name (repeatable)")
    listing.add_argument("--meta", action="append", type=meta_pair, default=[],
                         metavar="KEY=VALUE",
                         help="only runs whose metadata has KEY equal to VALUE (repeatable:"
                         " all must match); VALUE is text, a whole number is an int, true and"
                         ' false are bools, and "..." is text as written')
    listing.add_argument("--json", action="store_true",
                         help="print one JSON array with every listed field")
    show = command("show", "print one stored snapshot as JSON", _cmd_show)
    show.add_argument("workflow_id", metavar="ID")
    show.add_argument("--graph", action="store_true",
                      help="print a Mermaid flowchart of the run instead: the path it took,"
                      " or with --workflows the whole graph with its progress marked")
    show.add_argument("--workflows", default=None, metavar="pkg.module:NAME",
                      help="with --graph: the Workflow (or a list of them) the run belongs to")
    serving = command(
        "serve", "run the approvals inbox: a web page to answer waiting runs", _cmd_serve
    )
    serving.add_argument("--workflows", required=True, metavar="pkg.module:NAME",
                         help="the Workflow, or a list of them, whose runs to show and answer")
    serving.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: 127.0.0.1, this machine only)")
    serving.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serving.add_argument("--token", default=None,
                         help="the login token (default: a random one, printed at start)")
    serving.add_argument("--no-token", action="store_true",
                         help="let in anyone who reaches the port, without a token")
    serving.add_argument("--user", default=None,
                         help="the name answers are recorded under (default: your login name)")
    delete = command("delete", "delete one stored snapshot", _cmd_delete)
    delete.add_argument("workflow_id", metavar="ID")
    prune = command(
        "prune", "delete expired snapshots, and those not updated for a while", _cmd_prune
    )
    prune.add_argument("--older-than", type=parse_age, default=None, metavar="AGE",
                       help="also delete snapshots not updated for AGE, such as 7d, 12h, 30m"
                       " (without it, only expired ones)")
    _status_option(prune, "with --older-than: only snapshots with this status")
    prune.add_argument("--dry-run", action="store_true",
                       help="count what would be deleted, delete nothing")
    return parser


def _status_option(parser: argparse.ArgumentParser, help_: str) -> None:
    """``--status``, repeatable or comma-separated, flattened to one list (None: any)."""
    parser.add_argument(
        "--status", action="extend", type=_statuses, default=None, metavar="STATUS",
        help=f"{help_}: interrupted, failed, running, completed or unknown (repeatable, or"
        " comma-separated)",
    )



def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # e.g. an Alembic error: still one line, never a traceback
        print(f"workflow-persistence {args.command}: {_explain(exc)}", file=sys.stderr)
        return 1
    return 0


def _explain(exc: Exception) -> str:
    """One line for an operator; a refused login or a missing database is named as such."""
    refusal = _refusal(exc) or _missing_driver(exc)
    if refusal is not None:
        return refusal
    if isinstance(exc, CommandError | PersistenceError | WorkflowError):
        return first_line(exc)
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return f"database error: {first_line(exc)}"
    if isinstance(exc, OSError):
        return str(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


# -- a server that answered, and said no ----------------------------------------------------
# Such errors arrive as "cannot connect" (the library's StorageUnavailableError, or
# SQLAlchemy's OperationalError), but retrying will not help: the URL must change.

_MYSQL_LOGIN_REFUSED = frozenset({1045, 1698})  # access denied (wrong password, no such user)
_MYSQL_DATABASE_REFUSED = 1044  # access denied to the database named in the URL
_MYSQL_NO_DATABASE = 1049  # unknown database
_PG_LOGIN_REFUSED = frozenset({"28000", "28P01"})  # invalid authorization, invalid password
_PG_NO_DATABASE = "3D000"  # invalid catalog name
# psycopg reports a refused connection without a SQLSTATE: the server's FATAL line tells.
_PG_LOGIN_TEXT = re.compile(
    r'password authentication failed|role ".*" does not exist|no pg_hba\.conf entry'
    r"|no password supplied|authentication failed"
)
_PG_NO_DATABASE_TEXT = re.compile(r'database ".*" does not exist')

_FIX_LOGIN = "check the user name and password in --url or $" + migrations.URL_ENV_VAR
_FIX_DATABASE = "create that database, or correct its name in --url or $" + migrations.URL_ENV_VAR
_FIX_GRANT = "grant the user access to that database, or change the URL"


def _refusal(exc: BaseException) -> str | None:
    """A message naming a refused login or a missing database, if that is what ``exc`` is."""
    for error in _causes(exc):
        refusal = _mysql_refusal(error) or _postgresql_refusal(error)
        if refusal is not None:
            return refusal
    return None


#: The drivers the extras install: ``make demo`` and a plain ``pip install`` bring neither.
_DRIVER_EXTRAS = {"psycopg": ("PostgreSQL", "postgresql"), "pymysql": ("MySQL", "mysql")}


def _missing_driver(exc: BaseException) -> str | None:
    for error in _causes(exc):
        if isinstance(error, ImportError) and error.name in _DRIVER_EXTRAS:
            database, extra = _DRIVER_EXTRAS[error.name]
            return (
                f"the {database} driver ({error.name}) is not installed:"
                f" pip install 'workflow-persistence[{extra}]'"
            )
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it was raised from, and the driver error inside SQLAlchemy's wrapper."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        pending += [error.__context__, error.__cause__, getattr(error, "orig", None)]


def _mysql_refusal(error: BaseException) -> str | None:
    if type(error).__module__.partition(".")[0] != "pymysql" or len(error.args) < 2:
        return None
    code, text = error.args[0], str(error.args[1])
    if code in _MYSQL_LOGIN_REFUSED:
        return f"authentication failed: {text}; {_FIX_LOGIN}"
    if code == _MYSQL_DATABASE_REFUSED:
        return f"access denied: {text}; {_FIX_GRANT}"
    if code == _MYSQL_NO_DATABASE:
        return f"the database does not exist: {text}; {_FIX_DATABASE}"
    return None


def _postgresql_refusal(error: BaseException) -> str | None:
    if type(error).__module__.partition(".")[0] != "psycopg":
        return None
    sqlstate = getattr(error, "sqlstate", None)
    text = _server_says(str(error))
    if sqlstate in _PG_LOGIN_REFUSED or (sqlstate is None and _PG_LOGIN_TEXT.search(text)):
        return f"authentication failed: {text}; {_FIX_LOGIN}"
    if sqlstate == _PG_NO_DATABASE or (sqlstate is None and _PG_NO_DATABASE_TEXT.search(text)):
        return f"the database does not exist: {text}; {_FIX_DATABASE}"
    return None


def _server_says(message: str) -> str:
    """The server's own words from libpq's "connection to server ... failed: FATAL: ..."."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    _, fatal, said = line.partition("FATAL:")
    return said.strip() if fatal else line


def _safe_url(url: Any) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return str(url)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
