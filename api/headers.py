"""What every HTTP answer carries: security headers, and truthful ``Allow`` answers.

* :class:`SecurityHeaders` — ``nosniff``, no framing, no referrer on every answer; the
  dashboard gets a Content-Security-Policy that allows only its own files (it has no
  inline script or style), API answers one that allows nothing. An answer that set its
  own (an artifact download: ``sandbox``) keeps it. ``/docs`` and ``/redoc`` load Swagger
  and ReDoc from a CDN with inline script, so they get no CSP.
* :class:`AllowedMethods` — ``OPTIONS`` on an API path answers 204 with the methods its
  routes take; another method they do not take answers 405 with the same ``Allow``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_EVERY_ANSWER = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_NO_CSP = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, api_prefix: str) -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(_NO_CSP):
            csp = None
        elif path.startswith(self.api_prefix + "/") or path == "/openapi.json":
            csp = API_CSP
        else:
            csp = DASHBOARD_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _EVERY_ANSWER:
                    headers.setdefault(name.decode(), value.decode())
                if csp is not None:
                    headers.setdefault("content-security-policy", csp)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _first_segment(path: str, prefix: str) -> str | None:
    """``jobs`` of ``{prefix}/jobs/…``; None for a path outside the prefix."""
    if not path.startswith(prefix + "/"):
        return None
    return path[len(prefix) + 1 :].split("/", 1)[0]


class AllowedMethods:
    """Answers ``OPTIONS`` (and a method no route of the path takes) for API paths."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute], api_prefix: str) -> None:
        self.app = app
        self.routes = routes
        self.api_prefix = api_prefix
        # The routes by the first segment after the prefix ("jobs"), those whose first
        # segment is a parameter under "": a request is matched against its few, not all.
        self._table: dict[str, list[tuple[re.Pattern[str], set[str], bool]]] | None = None

    def _build(self) -> dict[str, list[tuple[re.Pattern[str], set[str], bool]]]:
        table: dict[str, list[tuple[re.Pattern[str], set[str], bool]]] = {"": []}
        for route in iter_route_contexts(self.routes):
            if not route.methods or getattr(route, "path_regex", None) is None:
                continue
            path = route.path or "{"
            first = _first_segment(path, self.api_prefix)
            table.setdefault("" if first is None or "{" in first else first, []).append(
                (route.path_regex, set(route.methods), "{" not in path)
            )
        return table

    def allowed(self, path: str) -> set[str]:
        """The methods the routes matching ``path`` take (empty: no route has it)."""
        if self._table is None:  # (the routes are complete once the app serves)
            self._table = self._build()
        first = _first_segment(path, self.api_prefix)
        rows = self._table[""] + (self._table.get(first, []) if first else [])
        # A path a route names literally (/runs/cleanup) is that resource, not a value of
        # another's parameter (/runs/{job_id}): only the literal routes' methods count.
        matches = [(taken, literal) for regex, taken, literal in rows if regex.match(path)]
        if any(literal for _, literal in matches):
            matches = [m for m in matches if m[1]]
        return set().union(*(taken for taken, _ in matches))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.api_prefix + "/"):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        methods = self.allowed(path)
        if (not methods and method != "OPTIONS") or (method in methods and method != "OPTIONS"):
            await self.app(scope, receive, send)  # (no such path: the app's own 404)
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        if not methods:
            status, body = 404, json.dumps({"error": "no such API path", "code": 404}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        elif method == "OPTIONS":
            status, body = 204, b""
            headers = [(b"allow", allow.encode()), (b"content-length", b"0")]
        else:
            status = 405
            body = json.dumps(
                {"error": f"{method} is not allowed here; allowed: {allow}", "code": 405}
            ).encode()
            headers = [
                (b"allow", allow.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
