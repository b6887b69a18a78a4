"""How the API reads request bodies: bounded, and JSON strictly.

Every body has a bound (:class:`BodyLimit`): past it the answer is 413 with a JSON problem,
at once when ``Content-Length`` says so, else as soon as the streamed body goes past it.


A ``\\ud800`` escape names half a character: Python's parser takes it, but no answer or
stored row holding one can be encoded, so it would fail later, as a 500. Such a body is
refused when it is read (FastAPI answers 422 naming the body; the WebSocket an error
message), and so is one nested too deeply to parse. ``NaN`` and ``Infinity`` (not JSON
either) are left to the models, which refuse them naming the field (``allow_inf_nan``
off, and the JSON size checks of free-form fields).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A \u escape of a surrogate: only then can the value hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def strict_loads(raw: bytes | str) -> Any:
    """``json.loads`` that refuses lone surrogates and runaway nesting with
    :class:`json.JSONDecodeError` (as any other text that is not JSON)."""
    try:
        doc = raw.decode() if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("not UTF-8 text", "", exc.start) from None
    try:
        value = json.loads(doc)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", doc, 0) from None
    at = _SURROGATE_ESCAPE.search(doc)
    if at is not None and _has_lone_surrogate(value):
        raise json.JSONDecodeError(
            "a \\u escape names half a character (a lone surrogate)", doc, at.start()
        )
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is read by :func:`strict_loads` (every router's
    ``route_class``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


class BodyTooLarge(HTTPException):
    """A body that went past its bound while it streamed in (the app answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def too_large(limit: int) -> str:
    return f"the request body is larger than this route takes ({limit} bytes)"


class BodyLimit:
    """Bounds every HTTP request body; ``limit_for(path)`` says how many bytes a path takes."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = json.dumps({"error": too_large(limit), "code": 413}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # (the body it did not read is still coming)
            ]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded, send)
