"""``GET /api/v1/events``: every job's events, filtered by label, resumable."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.support import TERMINAL, Stack


def test_firehose_by_label_sees_exactly_that_labels_jobs(obs_stack: Stack) -> None:
    mine = {"fire-run": uuid.uuid4().hex}
    theirs = {"fire-run": uuid.uuid4().hex}
    got: list[tuple[str, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=obs_stack.url, timeout=30) as client,
        connect_sse(
            client, "GET", "/api/v1/events", params={"label": f"fire-run={mine['fire-run']}"}
        ) as es,
    ):
        assert es.response.status_code == 200
        ids = set()
        for i in range(6):
            labels = mine if i % 2 == 0 else theirs
            j = obs_stack.submit({"executor": "process", "command": ["true"], "labels": labels})
            if labels is mine:
                ids.add(j["id"])
        ended: set[str] = set()
        for sse in es.iter_sse():
            if sse.event == "gap":
                continue
            msg = json.loads(sse.data)
            got.append((sse.id, msg))
            if msg["type"] in TERMINAL:
                ended.add(msg["job_id"])
            if ended == ids:
                break
    assert {m["job_id"] for _, m in got} == ids
    for job_id in ids:
        types = [m["type"] for _, m in got if m["job_id"] == job_id]
        assert types == ["created", "claimed", "started", "succeeded"], types
    # Resume after the first event: the rest, exactly, in order.
    with (
        httpx.Client(base_url=obs_stack.url, timeout=30) as client,
        connect_sse(
            client,
            "GET",
            "/api/v1/events",
            params={"label": f"fire-run={mine['fire-run']}"},
            headers={"Last-Event-ID": got[0][0]},
        ) as es,
    ):
        again = []
        for sse in es.iter_sse():
            again.append((sse.id, json.loads(sse.data)))
            if len(again) == len(got) - 1:
                break
    assert again == got[1:]


def test_firehose_filters_by_status_and_refuses_bad_input(obs_stack: Stack) -> None:
    h = obs_stack.http
    assert h.get("/api/v1/events", params={"label": "novalue"}).status_code == 422
    assert "label" in h.get("/api/v1/events", params={"label": "novalue"}).text
    bad_status = h.get("/api/v1/events", params={"status": "exploded"})
    assert bad_status.status_code == 422 and "status" in bad_status.text
    bad_id = h.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert bad_id.status_code == 422 and "Last-Event-ID" in bad_id.text
    run = {"fire-run": uuid.uuid4().hex}
    with (
        httpx.Client(base_url=obs_stack.url, timeout=30) as client,
        connect_sse(
            client,
            "GET",
            "/api/v1/events",
            params={"label": f"fire-run={run['fire-run']}", "status": "failed"},
        ) as es,
    ):
        ok = obs_stack.submit({"executor": "process", "command": ["true"], "labels": run})
        bad = obs_stack.submit({"executor": "process", "command": ["false"], "labels": run})
        obs_stack.wait_status(ok["id"])
        sse = next(iter(es.iter_sse()))
        msg = json.loads(sse.data)
    assert (msg["job_id"], msg["type"], sse.event) == (bad["id"], "failed", "failed")
