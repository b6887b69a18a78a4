"""Access logs as JSON lines, one per request, with a request id.

The id is the caller's ``X-Request-ID`` when it is a sane token (so a proxy's id carries
through), else a new one; it is answered in ``X-Request-ID`` and is in the log line, so a
user's report of a failed call finds its line. Lines go to stderr (logger
``launchbay.access``): ``launchbay up`` writes each service's output to
``$LAUNCHBAY_HOME/service-logs/api.log``. A long stream (SSE) logs once, when it ends.
The query string is not logged: it may carry ``?token=``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.wire import DIRECT_BYTES

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("launchbay.access")


def _handler() -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


class AccessLog:
    """ASGI middleware: a request id header on every HTTP answer, and one JSON line."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled
        if enabled:
            _handler()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SANE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                client = scope.get("client")
                line = {
                    "ts": datetime.now(UTC).isoformat(),
                    "type": "access",
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "bytes": sent + scope["state"].get(DIRECT_BYTES, 0),  # (api/wire.py)
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "user_agent": next(
                        (v.decode("latin-1") for k, v in scope["headers"] if k == b"user-agent"),
                        None,
                    ),
                }
                log.info(json.dumps(line))
