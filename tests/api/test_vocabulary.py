"""GET /meta serves the API's vocabulary, and bad input reads the same over HTTP and
WebSocket."""

from __future__ import annotations

import json
from typing import Any

import httpx
from websockets.sync.client import connect

from orchestrator.job import EXECUTORS, TERMINAL_STATUSES, EventType, JobStatus
from tests.support import Stack


def test_meta_serves_the_vocabulary_of_the_sources(api: httpx.Client) -> None:
    r = api.get("/api/v1/meta")
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["executors"] == list(EXECUTORS)
    assert meta["statuses"] == [s.value for s in JobStatus]
    assert set(meta["terminal_statuses"]) == {s.value for s in TERMINAL_STATUSES}
    assert meta["event_types"] == [e.value for e in EventType]
    assert sorted(meta["stream_end_events"]) == ["cancelled", "complete", "failed", "timed_out"]
    op = api.get("/openapi.json").json()["paths"]["/api/v1/meta"]["get"]
    assert op["operationId"] == "meta-vocabulary"


def _ws_reply(stack: Stack, msg: dict[str, Any]) -> dict[str, Any]:
    with connect(stack.url.replace("http://", "ws://") + "/api/v1/ws/queue") as ws:
        ws.send(json.dumps({**msg, "request_id": "q"}))
        while True:
            reply = json.loads(ws.recv(timeout=30))
            if reply.get("request_id") == "q":
                return reply


def test_a_bad_spec_gets_the_same_problems_over_http_and_websocket(
    api: httpx.Client, stack: Stack
) -> None:
    spec = {"executor": "process", "command": [], "max_attempts": 0, "labels": {"docker": 1}}
    http = api.post("/api/v1/jobs", json=spec).json()
    ws = _ws_reply(stack, {"type": "create_job", "spec": spec})
    assert {f["field"] for f in http["fields"]} == {"command", "max_attempts", "labels.docker"}
    # The WebSocket message holds the spec under "spec": the same problems, named so.
    assert ws["type"] == "error" and ws["fields"] == [
        {**f, "field": f"spec.{f['field']}"} for f in http["fields"]
    ]
    assert ws["field"] == ws["fields"][0]["field"]
    assert ws["error"].startswith("invalid request: spec.")
    assert http["error"] == ws["error"].replace("spec.", "")
