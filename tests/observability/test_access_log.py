"""JSON access lines with a request id that is also answered as a header."""

from __future__ import annotations

import json
import re

from tests.support import Stack, wait_until


def _lines(stack: Stack) -> list[dict]:
    out = []
    log = stack.settings.home / "service-logs" / "api.log"
    for raw in log.read_text(errors="replace").splitlines():
        if raw.startswith("{") and '"type": "access"' in raw:
            out.append(json.loads(raw))
    return out


def test_request_id_is_answered_and_logged_as_json(obs_stack: Stack) -> None:
    mine = obs_stack.http.get("/api/v1/jobs", headers={"X-Request-ID": "req-abc.123"})
    assert mine.status_code == 200
    assert mine.headers["x-request-id"] == "req-abc.123"
    fresh = obs_stack.http.get("/api/v1/jobs?limit=1&token=secret-looking")
    rid = fresh.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    # A header that is not a sane token is replaced, not echoed.
    odd = obs_stack.http.get("/api/v1/jobs", headers={"X-Request-ID": "a b<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
    missing = obs_stack.http.get("/api/v1/jobs/nope")
    assert missing.status_code == 404

    def logged() -> dict[str, dict] | None:
        by_id = {x["request_id"]: x for x in _lines(obs_stack)}
        wanted = ("req-abc.123", rid, missing.headers["x-request-id"])
        return by_id if all(w in by_id for w in wanted) else None

    by_id = wait_until(logged, timeout=10, what="the access lines in api.log")
    line = by_id["req-abc.123"]
    assert line["method"] == "GET" and line["path"] == "/api/v1/jobs" and line["status"] == 200
    assert line["duration_ms"] >= 0 and line["bytes"] > 0
    assert "secret-looking" not in json.dumps(by_id[rid])  # the query string is never logged
    assert by_id[missing.headers["x-request-id"]]["status"] == 404
