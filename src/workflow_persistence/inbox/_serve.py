"""``workflow-persistence serve``: the inbox for operators, on this machine by default.

As Jupyter does, it prints a URL with a token; opening it logs the browser in (a cookie),
and nothing else gets in. ``--no-token`` lets anyone who can reach the port in, so it is
only for a loopback address behind other protection.
"""

from __future__ import annotations

import getpass
import ipaddress
import secrets
import sys
from collections.abc import Iterable
from urllib.parse import quote

import uvicorn
from starlette.requests import Request

from workflow_persistence._runtime.workflow import Workflow
from workflow_persistence.abc import Persistence

from ._app import Access, create_app
from ._security import TokenLogin

__all__ = ["serve"]


def _operator() -> str:
    try:
        return f"{getpass.getuser()} (serve)"
    except Exception:  # no user name in this environment
        return "operator (serve)"


def serve(
    workflows: Workflow | Iterable[Workflow],
    persistence: Persistence,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    require_token: bool = True,
    user: str | None = None,
) -> None:
    """Run the inbox until interrupted; answers are recorded as given by ``user``."""
    user = user or _operator()
    login: TokenLogin | None = None

    def authorize(request: Request) -> Access | None:
        if login is None or login.logged_in(request):
            return Access(user)
        return None

    app = create_app(workflows, persistence=persistence, authorize=authorize)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/"
    if require_token:
        token = token or secrets.token_urlsafe(24)
        login = TokenLogin(app, token)
        print(f"The inbox is at {url}?token={quote(token)}", flush=True)
    else:
        print(f"The inbox is at {url} (no token: anyone who reaches the port gets in)",
              flush=True)
        if not _loopback(host):
            print(f"warning: {host} is not a loopback address", file=sys.stderr, flush=True)
    uvicorn.run(login or app, host=host, port=port, log_level="warning", proxy_headers=False)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
