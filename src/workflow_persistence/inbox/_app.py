"""The inbox's routes: pages for people, the same under ``/api/`` as JSON.

Every request first asks the host's ``authorize(request)`` who is there. A run is shown or
answered only if its metadata holds every key of ``Access.metadata`` (the list is
filtered by it; a single run outside it is "not found", so ids do not leak) and it belongs
to one of the inbox's workflows. Answers and retries go through the workflow's own
``resume`` with the version the page showed: a second submit, or a stale page, finds the
run moved on and answers nothing (409).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import inspect
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from workflow_persistence import errors
from workflow_persistence._runtime.workflow import Workflow, workflows_by_name
from workflow_persistence._snapshot import Decision, StoredSnapshotInfo, WorkflowSnapshot, utc_now
from workflow_persistence._storage.base import LISTED_STATUSES, metadata_matches
from workflow_persistence.abc import AsyncPersistence, Persistence
from workflow_persistence.cli import meta_pair, question, to_jsonable

from ._forms import AnswerForm, FormError, answer_form, read_answer
from ._openapi import openapi_document
from ._security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Csrf,
    SecurityHeaders,
    new_session,
    set_cookie,
)
from ._svg import layout

__all__ = ["Access", "Authorize", "create_app"]

MetadataValue = str | int | bool
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Longest value shown in a run's state summary (the API gives the whole state).
SUMMARY_CHARS = 300


@dataclass(frozen=True)
class Access:
    """Who is asking, as ``authorize`` decided: ``user`` is recorded as ``answered_by``;
    only runs whose metadata holds every item of ``metadata`` are visible; with
    ``answer=False`` they can be read but not answered or retried (403)."""

    user: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    answer: bool = True


#: ``authorize(request)``: the Access of whoever sent it, or None; sync or async.
Authorize = Callable[[Request], "Access | Awaitable[Access | None] | None"]


class Refusal(Exception):
    """A request the inbox turns down, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_TITLES = {400: "Bad request", 401: "Sign in required", 403: "Not allowed", 404: "Not found",
           409: "Already answered", 422: "Answer not accepted"}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workflow_persistence.inbox", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["q"] = lambda text: quote(str(text), safe="")
    env.filters["when"] = _when
    env.filters["pretty"] = lambda value: json.dumps(
        to_jsonable(value), indent=2, ensure_ascii=False
    )
    env.filters["question"] = question
    return env


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Page:
    """One page of the list: overdue runs first (on the first page), then the others."""

    overdue: list[StoredSnapshotInfo]
    runs: list[StoredSnapshotInfo]
    next_cursor: str | None


class Inbox:
    """The app's state and its handlers."""

    def __init__(
        self,
        workflows: dict[str, Workflow],
        persistence: Persistence | AsyncPersistence,
        authorize: Authorize,
        secret_key: bytes,
    ) -> None:
        self.workflows = workflows
        self.persistence = persistence
        self.authorize = authorize
        self.csrf = Csrf(secret_key)
        self.env = _environment()

    # -- who, and what they may see ------------------------------------------------------

    async def access(self, request: Request) -> Access:
        decided = self.authorize(request)
        if inspect.isawaitable(decided):
            decided = await decided
        if decided is None:
            raise Refusal(401, "sign in to see the inbox")
        if not isinstance(decided, Access):
            raise TypeError(f"authorize() must return an Access or None, not {decided!r:.80}")
        return decided

    async def _store(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.persistence, method)
        if isinstance(self.persistence, AsyncPersistence):
            return await call(*args, **kwargs)
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))

    async def run(
        self, access: Access, workflow_id: str, *, gone: str = "no run {!r} here"
    ) -> tuple[WorkflowSnapshot, Workflow]:
        """The run, if this user may see it; else 404 (the same for a run that does not
        exist and one outside the access, so ids do not leak)."""
        try:
            snapshot: WorkflowSnapshot = await self._store("load", workflow_id)
        except (errors.WorkflowNotFoundError, errors.InvalidWorkflowIdError):
            raise Refusal(404, gone.format(workflow_id)) from None
        workflow = self.workflows.get(snapshot.workflow_name or "")
        visible = isinstance(snapshot.metadata, dict) and metadata_matches(
            snapshot.metadata, access.metadata.items()
        )
        if workflow is None or not visible:
            raise Refusal(404, gone.format(workflow_id))
        return snapshot, workflow

    async def page(self, access: Access, params: Mapping[str, list[str]], size: int) -> Page:
        filters = self._filters(access, params)
        if filters is None:
            return Page([], [], None)
        cursor = _cursor(params.get("cursor", [""])[-1])
        overdue: list[StoredSnapshotInfo] = []
        if cursor is None:  # the first page starts with the overdue runs
            overdue = await self._store("list", **filters, deadline_before=utc_now(), limit=size)
            overdue.sort(key=lambda i: i.deadline or utc_now())
        runs: list[StoredSnapshotInfo] = await self._store(
            "list", **filters, cursor=cursor, limit=size + 1
        )
        more = len(runs) > size
        runs = runs[:size]
        next_cursor = _encode_cursor(runs[-1]) if more else None
        shown = {i.workflow_id for i in overdue}
        return Page(overdue, [i for i in runs if i.workflow_id not in shown], next_cursor)

    def _filters(self, access: Access, params: Mapping[str, list[str]]) -> dict[str, Any] | None:
        """``list`` filters from the query and the access; None when they cannot match."""
        names = [n for n in params.get("workflow", []) if n] or list(self.workflows)
        if any(n not in self.workflows for n in names):
            return None
        statuses = [s for s in params.get("status", []) if s] or ["interrupted"]
        if any(s not in LISTED_STATUSES for s in statuses):
            raise Refusal(400, f"status takes {', '.join(sorted(LISTED_STATUSES))}")
        wanted: dict[str, MetadataValue] = {}
        for text in params.get("meta", []):
            if not text.strip():
                continue
            try:
                key, value = meta_pair(text.strip())
            except argparse.ArgumentTypeError as exc:
                raise Refusal(400, f"meta takes KEY=VALUE: {exc}") from None
            wanted[key] = value
        for key, value in access.metadata.items():
            if key in wanted and not metadata_matches({key: wanted[key]}, [(key, value)]):
                return None
            wanted[key] = value
        return {"status": statuses, "workflow_name": names, "metadata": wanted}

    # -- answering and retrying ----------------------------------------------------------

    async def resume(
        self, access: Access, workflow_id: str, version: Any, *, answer: Any = None, retry: bool
    ) -> tuple[str, str]:
        """Answer (or retry) the run at ``version``: its new status and a sentence."""
        if not access.answer:
            raise Refusal(403, f"{access.user} may read this inbox but not answer")
        snapshot, workflow = await self.run(access, workflow_id, gone=_GONE)
        if type(version) is not int:
            raise Refusal(400, "version must be the run's version, a whole number")
        wanted = "failed" if retry else "interrupted"
        if snapshot.version != version or snapshot.status != wanted:
            raise Refusal(409, _moved_on(snapshot, version, retry))
        kwargs: dict[str, Any] = {"expected_version": version}
        if not retry:
            kwargs["answered_by"] = access.user
        try:
            if isinstance(workflow.persistence, AsyncPersistence):
                result = await workflow.aresume(workflow_id, answer, **kwargs)
            else:  # a sync resume runs its nodes in a worker thread, off the event loop
                call = functools.partial(workflow.resume, workflow_id, answer, **kwargs)
                result = await asyncio.to_thread(call)
        except errors.InvalidAnswerError as exc:
            raise Refusal(422, str(exc)) from exc
        except errors.SerializationError as exc:
            raise Refusal(422, f"the answer cannot be stored: {exc}") from exc
        except errors.ConflictError as exc:
            raise Refusal(409, f"already answered: {exc}") from exc
        except errors.WorkflowFailedError as exc:
            return "failed", f"answer recorded; the next step failed: {exc}"
        except errors.WorkflowError as exc:
            raise Refusal(409, str(exc)) from exc
        done = "retried" if retry else "answer recorded"
        return result.status, f"{done}; the run is {result.status}"

    # -- views ----------------------------------------------------------------------------

    def run_view(self, snapshot: WorkflowSnapshot, workflow: Workflow) -> dict[str, Any]:
        pending = _pending(snapshot)
        schema = None if pending is None else pending.answer_schema
        deadline = None if pending is None else pending.deadline
        return {
            **_identity(snapshot),
            "completed_nodes": list(snapshot.completed_nodes),
            "question": to_jsonable(snapshot.interrupt) if pending else None,
            "answer_schema": schema,
            "deadline": _iso(deadline),
            "overdue": deadline is not None and deadline <= utc_now(),
            "state": to_jsonable(snapshot.state),
            "metadata": to_jsonable(snapshot.metadata),
            "history": [_decision_view(d) for d in snapshot.history],
            "error": to_jsonable(snapshot.error),
            "created_at": _iso(snapshot.created_at),
            "updated_at": _iso(snapshot.updated_at),
            "mermaid": workflow.to_mermaid(snapshot),
        }


#: A POST to a run that is not there: most often one answered already, whose completed
#: run left the store (a kept run gets 409 instead).
_GONE = (
    "already answered, or not yours: run {!r} no longer waits here (a run that completes"
    " leaves the inbox)"
)


def _pending(snapshot: WorkflowSnapshot) -> Decision | None:
    if snapshot.status != "interrupted" or not snapshot.history:
        return None
    last = snapshot.history[-1]
    return last if last.answered_at is None else None


def _moved_on(snapshot: WorkflowSnapshot, version: int, retry: bool) -> str:
    if snapshot.version != version:
        return (
            f"already answered: run {snapshot.workflow_id!r} has moved on since version"
            f" {version} (it is {snapshot.status} at version {snapshot.version}); nothing"
            " was done"
        )
    wanted = "failed, to retry" if retry else "waiting for an answer"
    return f"run {snapshot.workflow_id!r} is {snapshot.status}, not {wanted}; nothing was done"


def _decision_view(decision: Decision) -> dict[str, Any]:
    return {
        "node": decision.node,
        "question": to_jsonable(decision.payload),
        "answer": to_jsonable(decision.answer),
        "asked_at": _iso(decision.asked_at),
        "answered_at": _iso(decision.answered_at),
        "answered_by": decision.answered_by,
        "answered_via": decision.answered_via,
        "deadline": _iso(decision.deadline),
    }


def _iso(value: object) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def _identity(run: StoredSnapshotInfo | WorkflowSnapshot) -> dict[str, Any]:
    """The fields a listed run and a loaded one share."""
    return {
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "status": run.status,
        "version": run.version,
        "current_node": run.current_node,
    }


def info_view(info: StoredSnapshotInfo) -> dict[str, Any]:
    deadline = info.deadline
    return {
        **_identity(info),
        "question": info.interrupt,
        "metadata": info.metadata,
        "deadline": _iso(deadline),
        "overdue": deadline is not None and deadline <= utc_now(),
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
    }


def _encode_cursor(info: StoredSnapshotInfo) -> str:
    text = json.dumps([info.updated_at.isoformat(), info.workflow_id], ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _cursor(text: object) -> StoredSnapshotInfo | None:
    """The list cursor a page link carries: the last run shown, by time and id."""
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(str(text) + "=" * (-len(str(text)) % 4))
        stamp, workflow_id = json.loads(raw)
        updated_at = datetime.fromisoformat(stamp)
        if updated_at.tzinfo is None or not isinstance(workflow_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise Refusal(400, "cursor is not one this inbox made") from None
    return StoredSnapshotInfo(workflow_id, updated_at, updated_at, 0)


def _query(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


# -- pages --------------------------------------------------------------------------------


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


class Pages:
    """The HTML side: every page rendered on the server, no script needed."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        access: Access | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        session = self.inbox.csrf.session(request)
        fresh = session is None
        session = session or new_session()
        csrf = self.inbox.csrf.token(session, access.user) if access else ""
        context = {
            "root": _root(request), "access": access, "csrf": csrf, "csrf_field": CSRF_FIELD,
            "workflows": list(self.inbox.workflows), "statuses": sorted(LISTED_STATUSES),
            "flash": "", **context,
        }
        html = self.inbox.env.get_template(template).render(context)
        response = HTMLResponse(html, status_code=status)
        if fresh:
            set_cookie(response, request, SESSION_COOKIE, session)
        return response

    def refusal(self, request: Request, refusal: Refusal, access: Access | None) -> HTMLResponse:
        context = {"title": _TITLES.get(refusal.status, "Error"), "message": refusal.message}
        return self.render(request, "error.html", context, access=access, status=refusal.status)

    async def handle(
        self, request: Request, view: Callable[[Request, Access], Awaitable[Response]]
    ) -> Response:
        access = None
        try:
            access = await self.inbox.access(request)
            return await view(request, access)
        except Refusal as refusal:
            return self.refusal(request, refusal, access)
        except errors.InvalidArgumentError as exc:
            return self.refusal(request, Refusal(400, str(exc)), access)

    async def listing(self, request: Request, access: Access) -> Response:
        params = _query(request)
        page = await self.inbox.page(access, params, PAGE_SIZE)
        context = {
            "page": page,
            "now": utc_now(),
            "selected": params,
            "flash": request.query_params.get("flash", ""),
            "title": "Waiting runs",
        }
        return self.render(request, "list.html", context, access=access)

    async def show(self, request: Request, access: Access, **extra: Any) -> Response:
        workflow_id = request.path_params["workflow_id"]
        snapshot, workflow = await self.inbox.run(access, workflow_id)
        view = self.inbox.run_view(snapshot, workflow)
        form: AnswerForm | None = None
        if view["question"] is not None or _pending(snapshot) is not None:
            form = answer_form(view["answer_schema"])
        context = {
            "run": view,
            "form": form,
            "drawing": layout(workflow.picture(snapshot)),
            "summary": _summary(view["state"]),
            "flash": request.query_params.get("flash", ""),
            "title": f"Run {workflow_id}",
            "form_error": "",
            "values": {},
            **extra,
        }
        return self.render(request, "run.html", context, access=access)

    async def answer(self, request: Request, access: Access) -> Response:
        return await self._post(request, access, retry=False)

    async def retry(self, request: Request, access: Access) -> Response:
        return await self._post(request, access, retry=True)

    async def _post(self, request: Request, access: Access, *, retry: bool) -> Response:
        workflow_id = request.path_params["workflow_id"]
        form = await request.form()
        values = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not self.inbox.csrf.valid(request, access.user, values.get(CSRF_FIELD)):
            raise Refusal(403, "the form's CSRF token is missing or wrong: reload the page")
        try:
            version = int(values.get("version", ""))
        except ValueError:
            raise Refusal(400, "the form carries no version: reload the page") from None
        answer = None
        if not retry:
            snapshot, _ = await self.inbox.run(access, workflow_id, gone=_GONE)
            pending = _pending(snapshot)
            if pending is None or snapshot.version != version:
                raise Refusal(409, _moved_on(snapshot, version, retry=False))
            try:
                answer = read_answer(answer_form(pending.answer_schema), values)
            except FormError as exc:
                return await self._form_again(request, access, str(exc), values)
        try:
            status, message = await self.inbox.resume(
                access, workflow_id, version, answer=answer, retry=retry
            )
        except Refusal as refusal:
            if refusal.status != 422:
                raise
            return await self._form_again(request, access, refusal.message, values)
        target = f"{_root(request)}/?flash={quote(message)}"
        if status != "completed":
            target = f"{_root(request)}/runs/{quote(workflow_id, safe='')}?flash={quote(message)}"
        return RedirectResponse(target, status_code=303)

    async def _form_again(
        self, request: Request, access: Access, message: str, values: dict[str, str]
    ) -> Response:
        response = await self.show(request, access, form_error=message, values=values)
        response.status_code = 422
        return response


def _summary(state: Any) -> list[tuple[str, str]]:
    if not isinstance(state, dict):
        return []
    rows = []
    for key, value in state.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > SUMMARY_CHARS:
            text = text[: SUMMARY_CHARS - 1] + "…"
        rows.append((str(key), text))
    return rows


# -- the JSON API ---------------------------------------------------------------------------


class Api:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle(
        self, request: Request, view: Callable[[Request, Access], Awaitable[Response]]
    ) -> Response:
        try:
            access = await self.inbox.access(request)
            return await view(request, access)
        except Refusal as refusal:
            return JSONResponse({"detail": refusal.message}, status_code=refusal.status)
        except errors.InvalidArgumentError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    async def session(self, request: Request, access: Access) -> Response:
        session = self.inbox.csrf.session(request)
        fresh = session is None
        session = session or new_session()
        response = JSONResponse({
            "user": access.user,
            "can_answer": access.answer,
            "csrf_token": self.inbox.csrf.token(session, access.user),
            "workflows": list(self.inbox.workflows),
        })
        if fresh:
            set_cookie(response, request, SESSION_COOKIE, session)
        return response

    async def listing(self, request: Request, access: Access) -> Response:
        params = _query(request)
        limit_text = request.query_params.get("limit", str(PAGE_SIZE))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            raise Refusal(400, f"limit must be 1 to {MAX_PAGE_SIZE}")
        page = await self.inbox.page(access, params, int(limit_text))
        return JSONResponse({
            "overdue": [info_view(i) for i in page.overdue],
            "runs": [info_view(i) for i in page.runs],
            "next_cursor": page.next_cursor,
        })

    async def show(self, request: Request, access: Access) -> Response:
        snapshot, workflow = await self.inbox.run(access, request.path_params["workflow_id"])
        return JSONResponse(self.inbox.run_view(snapshot, workflow))

    async def answer(self, request: Request, access: Access) -> Response:
        return await self._post(request, access, retry=False)

    async def retry(self, request: Request, access: Access) -> Response:
        return await self._post(request, access, retry=True)

    async def _post(self, request: Request, access: Access, *, retry: bool) -> Response:
        if not self.inbox.csrf.valid(request, access.user, request.headers.get(CSRF_HEADER)):
            raise Refusal(
                403, f"the {CSRF_HEADER} header is missing or wrong: GET /api/session for one"
            )
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            raise Refusal(400, "the body must be JSON") from None
        if not isinstance(body, dict) or "version" not in body:
            raise Refusal(400, 'the body must be a JSON object with "version"')
        if not retry and "answer" not in body:
            raise Refusal(400, 'the body must carry "answer"')
        workflow_id = request.path_params["workflow_id"]
        status, message = await self.inbox.resume(
            access, workflow_id, body["version"], answer=body.get("answer"), retry=retry
        )
        return JSONResponse({"workflow_id": workflow_id, "status": status, "detail": message})


def create_app(
    workflows: Workflow | Iterable[Workflow],
    *,
    persistence: Persistence | AsyncPersistence,
    authorize: Authorize,
    secret_key: bytes | str | None = None,
) -> Starlette:
    """The approvals inbox as an ASGI app, to mount in a FastAPI or Starlette app.

    ``workflows``: the Workflows whose runs it shows (each with its own ``name``).
    ``persistence``: where to list and load runs from (usually the workflows' own).
    ``authorize(request)``, sync or async, returns an :class:`Access` for the person
    asking, or None (401). ``secret_key`` signs the CSRF tokens; without one a random
    key is made, so tokens last as long as the process: give every process of one
    deployment the same key.
    """
    if not isinstance(persistence, Persistence | AsyncPersistence):
        raise errors.InvalidArgumentError(
            f"persistence must be a Persistence or AsyncPersistence, not {persistence!r:.80}"
        )
    if not callable(authorize):
        raise errors.InvalidArgumentError("authorize must be a callable taking the request")
    if isinstance(secret_key, str):
        secret_key = secret_key.encode()
    inbox = Inbox(
        workflows_by_name(workflows), persistence, authorize, secret_key or secrets.token_bytes(32)
    )
    pages, api = Pages(inbox), Api(inbox)

    def route(path: str, handler: Any, view: Any, method: str, name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handler(request, view)  # type: ignore[no-any-return]

        return Route(path, endpoint, methods=[method], name=name)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(_root(request)))

    static = StaticFiles(directory=str(files("workflow_persistence.inbox") / "static"))
    routes = [
        route("/", pages.handle, pages.listing, "GET", "list"),
        route("/runs/{workflow_id:path}/answer", pages.handle, pages.answer, "POST", "answer"),
        route("/runs/{workflow_id:path}/retry", pages.handle, pages.retry, "POST", "retry"),
        route("/runs/{workflow_id:path}", pages.handle, pages.show, "GET", "run"),
        Route("/api/openapi.json", openapi, methods=["GET"], name="openapi"),
        route("/api/session", api.handle, api.session, "GET", "api_session"),
        route("/api/runs", api.handle, api.listing, "GET", "api_list"),
        route("/api/runs/{workflow_id:path}/answer", api.handle, api.answer, "POST", "api_answer"),
        route("/api/runs/{workflow_id:path}/retry", api.handle, api.retry, "POST", "api_retry"),
        route("/api/runs/{workflow_id:path}", api.handle, api.show, "GET", "api_run"),
        Mount("/static", app=static, name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
