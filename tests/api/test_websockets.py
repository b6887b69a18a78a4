"""The WebSocket routes over real sockets: the queue feed and a job's live log.

Clients are the ``websockets`` package's own (sync) client against the real uvicorn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support import Stack

WAIT_S = 30


class Peer:
    """A WebSocket client that keeps every message, so a wait can find one already seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any] | str) -> None:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        for m in self.seen:
            if pred(m):
                self.seen.remove(m)
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; saw {self.seen[-5:]}")
            try:
                m = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                continue
            if pred(m):
                return m
            self.seen.append(m)


def ws_url(stack: Stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + "/api/v1" + path


@pytest.fixture
def peers(stack: Stack) -> Iterator[Callable[[], Peer]]:
    opened: list[ClientConnection] = []

    def open_peer() -> Peer:
        ws = connect(ws_url(stack, "/ws/queue"), open_timeout=10)
        opened.append(ws)
        return Peer(ws)

    yield open_peer
    for ws in opened:
        ws.close()


def of_type(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())


def test_two_queue_clients_stay_in_sync(peers: Callable[[], Peer]) -> None:
    a, b = peers(), peers()
    for p in (a, b):
        state = p.wait_for(of_type("queue_state"), "queue_state on connect")
        assert isinstance(state["jobs"], list) and "total" in state["stats"]
        assert "workers" in state["stats"]

    a.send(
        {
            "type": "create_job",
            "job_type": "countdown",
            "params": {"seconds": 30},
            "name": "ws-made",
            "request_id": "r-1",
        }
    )
    ack = a.wait_for(of_type("ack", action="create_job"), "create_job ack")
    assert ack["request_id"] == "r-1"
    job_id = ack["job_id"]
    for p in (a, b):
        created = p.wait_for(
            lambda m: m.get("type") == "job_created" and m["job"]["id"] == job_id, "job_created"
        )
        assert created["job"]["name"] == "ws-made" and created["job"]["type"] == "countdown"
        p.wait_for(of_type("stats_update"), "stats_update after a transition")
    # It really runs: both see it start and make progress.
    for p in (a, b):
        p.wait_for(of_type("job_started", job_id=job_id), "job_started")
        p.wait_for(of_type("job_progress", job_id=job_id), "job_progress")

    b.send({"type": "cancel_job", "job_id": job_id})
    b.wait_for(of_type("ack", action="cancel_job", job_id=job_id), "cancel_job ack")
    for p in (a, b):
        gone = p.wait_for(of_type("job_cancelled", job_id=job_id), "job_cancelled")
        assert gone["job"]["status"] == "cancelled"

    a.send({"type": "ping"})
    a.wait_for(of_type("pong"), "pong")
    b.send("this is not json")
    err = b.wait_for(of_type("error"), "error for a non-JSON message")
    assert "not JSON" in err["error"]
    b.send({"type": "ping"})
    b.wait_for(of_type("pong"), "pong after the error: the socket still works")


def test_bad_messages_get_errors_and_the_socket_stays_open(peers: Callable[[], Peer]) -> None:
    p = peers()
    p.wait_for(of_type("queue_state"), "queue_state")
    cases: list[tuple[Any, dict[str, Any]]] = [
        ({"type": "launch_rockets"}, {"field": "type"}),
        ([1, 2, 3], {}),
        (
            {"type": "create_job", "job_type": "countdown", "params": {"seconds": 1000}},
            {"field": "params.seconds"},
        ),
        ({"type": "create_job", "job_type": "no-such-type"}, {"field": "job_type"}),
        ({"type": "create_job", "spec": {"executor": "process"}}, {"field": "spec"}),
        (
            {"type": "create_job", "spec": {"executor": "process", "command": []}},
            {"field": "spec.command"},
        ),
        ({"type": "create_job"}, {"field": "job_type"}),
        ({"type": "cancel_job"}, {"field": "job_id"}),
        ({"type": "cancel_job", "job_id": "no-such-job"}, {"code": 404}),
    ]
    for i, (msg, expect) in enumerate(cases):
        if isinstance(msg, dict):
            msg = {**msg, "request_id": i}
        p.send(json.dumps(msg))
        err = p.wait_for(of_type("error"), f"error for {msg}")
        assert err["error"], err
        for k, v in expect.items():
            assert err.get(k) == v, (msg, err)
        if isinstance(msg, dict):
            assert err["request_id"] == i
    p.ws.send(b"\x00binary")
    assert "JSON" in p.wait_for(of_type("error"), "error for a binary frame")["error"]
    p.send({"type": "ping"})
    p.wait_for(of_type("pong"), "pong")


def test_create_job_with_a_spec_and_completion_reaches_the_feed(peers: Callable[[], Peer]) -> None:
    p = peers()
    p.wait_for(of_type("queue_state"), "queue_state")
    p.send(
        {
            "type": "create_job",
            "spec": {"executor": "process", "command": ["sh", "-c", "echo '::result {\"x\": 1}'"]},
        }
    )
    job_id = p.wait_for(of_type("ack", action="create_job"), "ack")["job_id"]
    done = p.wait_for(of_type("job_completed", job_id=job_id), "job_completed")
    assert done["result"] == {"x": 1}
    p.seen.clear()  # the stats_update that follows the completion, not an older one
    stats = p.wait_for(of_type("stats_update"), "stats_update")["stats"]
    assert stats["succeeded"] >= 1

    p.send(
        {"type": "create_job", "spec": {"executor": "process", "command": ["sh", "-c", "exit 4"]}}
    )
    bad = p.wait_for(of_type("ack", action="create_job"), "ack")["job_id"]
    failed = p.wait_for(of_type("job_failed", job_id=bad), "job_failed")
    assert failed["status"] == "failed" and "4" in failed["error"]


def test_clear_completed_hides_ended_jobs_from_this_connection_only(
    stack: Stack, peers: Callable[[], Peer]
) -> None:
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 3}})
    stack.wait_status(job["id"], timeout=30)
    a, b = peers(), peers()
    for p in (a, b):
        assert job["id"] in [j["id"] for j in p.wait_for(of_type("queue_state"), "state")["jobs"]]
    a.send({"type": "clear_completed"})
    cleared = a.wait_for(of_type("cleared"), "cleared")
    assert job["id"] in cleared["job_ids"]
    a.send({"type": "get_state"})
    assert job["id"] not in [j["id"] for j in a.wait_for(of_type("queue_state"), "state")["jobs"]]
    b.send({"type": "get_state"})
    assert job["id"] in [j["id"] for j in b.wait_for(of_type("queue_state"), "state")["jobs"]]
    assert stack.job(job["id"])["status"] == "succeeded"  # hidden, not deleted


def test_log_socket_sends_every_line_in_order_then_closes(stack: Stack) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "i=1; while [ $i -le 3000 ]; do echo w-$i; i=$((i+1)); done; echo oops >&2",
            ],
        }
    )
    lines: list[dict[str, Any]] = []
    with (
        connect(ws_url(stack, f"/jobs/{job['id']}/logs/stream"), open_timeout=10) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        while True:
            lines.append(json.loads(ws.recv(timeout=WAIT_S)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert closed.value.rcvd.reason == "job succeeded"
    # stdout and stderr are two pipes: each keeps its order, their interleaving is the log's.
    assert [ln["line"] for ln in lines if ln["stream"] == "stdout"] == [
        f"w-{i}" for i in range(1, 3001)
    ]
    assert [ln["line"] for ln in lines if ln["stream"] == "stderr"] == ["oops"]
    assert [ln["seq"] for ln in lines] == list(range(1, 3002))
    stored = stack.http.get(f"/api/v1/jobs/{job['id']}/logs", params={"limit": 5000}).json()
    assert stored["items"] == lines

    # ?since= resumes after a line number.
    with connect(ws_url(stack, f"/jobs/{job['id']}/logs/stream?since=2998"), open_timeout=10) as ws:
        tail = []
        with pytest.raises(ConnectionClosed):
            while True:
                tail.append(json.loads(ws.recv(timeout=WAIT_S)))
    assert tail == lines[2998:]

    # ... or after an ISO time: the lines written after it. (A line's time is its batch's,
    # and a batch holds at most 2,000 lines: the first line's time has later lines after
    # it; line 1500's need not, when one batch holds lines 1,200 to 3,001.)
    when = lines[0]["ts"]
    cut = datetime.fromisoformat(when)
    expected = [ln for ln in lines if datetime.fromisoformat(ln["ts"]) > cut]
    assert expected and expected[-1] == lines[-1]
    query = urlencode({"since": when})
    with connect(ws_url(stack, f"/jobs/{job['id']}/logs/stream?{query}"), open_timeout=10) as ws:
        later = []
        with pytest.raises(ConnectionClosed):
            while True:
                later.append(json.loads(ws.recv(timeout=WAIT_S)))
    assert later == expected


def test_log_socket_for_an_unknown_job_closes_with_4404(stack: Stack) -> None:
    with (
        connect(ws_url(stack, "/jobs/nope/logs/stream"), open_timeout=10) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    assert "not found" in closed.value.rcvd.reason
