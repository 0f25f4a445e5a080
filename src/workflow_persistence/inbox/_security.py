"""What keeps the inbox safe to expose: CSRF tokens, security headers, ``serve``'s login.

CSRF: the inbox gives each browser a random session id in an HttpOnly, SameSite=Strict
cookie. Its CSRF token is an HMAC of that id and the user ``authorize`` returned, under
the app's secret key; every form carries it in a hidden field and every API POST in the
``X-CSRF-Token`` header, and the server recomputes and compares it in constant time. A
page of another site can neither read the token nor make the browser send the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Csrf",
    "SecurityHeaders",
    "TokenLogin",
    "set_cookie",
]

SESSION_COOKIE = "wfp_inbox_session"
LOGIN_COOKIE = "wfp_inbox_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none';"
        b" object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pages, API, static file)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in HEADERS if n not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def cookie_path(request: Request) -> str:
    """Where the app is mounted: its cookies go to it alone."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + "/"


def set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


class Csrf:
    """Per-session CSRF tokens (see the module's docstring)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @staticmethod
    def session(request: Request) -> str | None:
        value = request.cookies.get(SESSION_COOKIE)
        return value if value and len(value) <= 128 else None

    def token(self, session: str, user: str) -> str:
        message = f"{session}\x00{user}".encode("utf-8", "backslashreplace")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, request: Request, user: str, given: str | None) -> bool:
        session = self.session(request)
        if session is None or not given:
            return False
        return hmac.compare_digest(self.token(session, user), given)


def new_session() -> str:
    return secrets.token_urlsafe(32)


class TokenLogin:
    """``serve``'s front door, as Jupyter's: the printed URL carries a token; opening it
    sets a login cookie (HttpOnly, SameSite=Strict) and drops the token from the address.

    ``authorize`` (below) lets in the requests that carry that cookie. Tokens and cookies
    are compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token
        self._cookie = secrets.token_urlsafe(32)

    def logged_in(self, request: Request) -> bool:
        return hmac.compare_digest(request.cookies.get(LOGIN_COOKIE, ""), self._cookie)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        given = [value for key, value in query if key == "token"]
        if not given:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response
        if hmac.compare_digest(given[-1].encode(), self._token.encode()):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            target = request.url.path + (f"?{rest}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            set_cookie(response, request, LOGIN_COOKIE, self._cookie)
        else:
            response = PlainTextResponse(
                "wrong token: open the URL that `workflow-persistence serve` printed",
                status_code=401,
            )
        await response(scope, receive, send)
