"""The live lane (api/wire.py): a client parked at the live edge gets the next message
written by the hub's task, straight to its connection, instead of waking its own task.

On the real stack (uvicorn over sockets, real clients): what the clients get is what the
usual path would give (every line and event, in order, once, with ids that resume
exactly), and the lane is what carried most of it. Then the lane's rules, on a follower
and a wire of the test's own (fast tier): it takes only what provably continues the
cursor, never the job's end, never while a write is under way or the socket is behind.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from api.fanout import RESYNC, Subscriber
from api.follower import Cursor, Item, JobFollower
from api.wire import DIRECT_BYTES, Wire
from orchestrator.events import Events
from tests.support import Stack, events_of, wait_until

API = "/api/v1"
LINES = 40
PROGRESS = 10


def _ended(ev: Any) -> bool:
    return ev.event in ("complete", "error")


def _sse(
    stack: Stack,
    path: str,
    into: list[Any],
    errors: list[BaseException],
    until: Any = _ended,
    **kw: Any,
) -> None:
    try:
        with (
            httpx.Client(base_url=stack.url, timeout=httpx.Timeout(10, read=30)) as c,
            connect_sse(c, "GET", path, **kw) as es,
        ):
            assert es.response.status_code == 200
            for ev in es.iter_sse():
                if ev.event == "message" and not ev.data:
                    continue  # (a keep-alive comment)
                into.append(ev)
                if until(ev):
                    return
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


@pytest.fixture
def published(stack: Stack) -> Any:
    ev = events_of(stack)
    yield ev
    ev.r.close()


def test_clients_at_the_live_edge_get_everything_in_order_through_the_lane(
    stack: Stack, published: Events
) -> None:
    job = stack.submit({"executor": "process", "command": ["sleep", "60"]})
    jid = job["id"]
    stack.wait_status(jid, "running")
    streams = {
        "logs": f"{API}/jobs/{jid}/logs/stream",
        "events": f"{API}/jobs/{jid}/events",
        "firehose": f"{API}/events",  # (every job's events: this one's end ends it here)
    }
    got: dict[str, list[list[Any]]] = {k: [[], [], []] for k in streams}
    errors: list[BaseException] = []

    def mine_ended(ev: Any) -> bool:
        return ev.event == "cancelled" and json.loads(ev.data)["job_id"] == jid

    threads = [
        threading.Thread(
            target=_sse,
            args=(stack, path, into, errors, _ended if kind != "firehose" else mine_ended),
        )
        for kind, path in streams.items()
        for into in got[kind]
    ]
    before = stack.http.get(f"{API}/streams").json()
    for t in threads:
        t.start()
    wait_until(
        lambda: (
            stack.http.get(f"{API}/streams").json()["subscribers"]
            >= before["subscribers"] + len(threads)
        ),
        30,
        what="the clients to subscribe",
    )
    # In lock step: each message once every client has the one before (so every
    # follower is parked at the live edge when the next one comes).
    sent_lines: list[str] = []
    for i in range(1, LINES + 1):
        line = f"live-{i}"
        published.append_logs(jid, [("stdout", None, line)])
        sent_lines.append(line)
        if i % (LINES // PROGRESS) == 0:
            published.publish(jid, "progress", {"percent": i, "message": f"at {i}"})

        def every_client_has(line: str = line) -> bool:
            return all(
                any(json.loads(e.data).get("line") == line for e in into if e.event == "log")
                for kind in ("logs", "events")
                for into in got[kind]
            )

        wait_until(every_client_has, 10, what=f"every client to get {line}")
        if i % (LINES // PROGRESS) == 0:

            def every_firehose_has(i: int = i) -> bool:
                return all(
                    any(json.loads(e.data).get("data", {}).get("percent") == i for e in into)
                    for into in got["firehose"]
                )

            wait_until(every_firehose_has, 10, what=f"every firehose client to get progress {i}")
    after = stack.http.get(f"{API}/streams").json()
    assert stack.http.post(f"{API}/jobs/{jid}/cancel").status_code == 200
    for t in threads:
        t.join(30)
    assert not errors, errors

    progress = [i for i in range(1, LINES + 1) if i % (LINES // PROGRESS) == 0]
    for into in got["logs"]:
        assert [json.loads(e.data)["line"] for e in into] == sent_lines
        assert [int(e.id) for e in into] == sorted(int(e.id) for e in into)
    # (after each one's "status" head: the job as it was when that client came)
    first = [(e.event, e.data, e.id) for e in got["events"][0][1:]]
    for into in got["events"]:
        assert into[0].event == "status"
        assert [(e.event, e.data, e.id) for e in into[1:]] == first  # the same for all
        evs = [e for e in into if e.event in ("log", "progress")]
        assert [json.loads(e.data)["line"] for e in evs if e.event == "log"] == sent_lines
        assert [json.loads(e.data)["percent"] for e in evs if e.event == "progress"] == progress
        assert into[-1].event == "cancelled"
    for into in got["firehose"]:
        mine = [json.loads(e.data) for e in into]
        mine = [m for m in mine if m["job_id"] == jid]
        assert [m["data"]["percent"] for m in mine if m["type"] == "progress"] == progress
        assert mine[-1]["type"] == "cancelled"
    # Lines and progress, to 9 clients: most went by the lane (a message that came while
    # a follower was not parked yet took the usual path, as it must).
    deliveries = (LINES + PROGRESS) * len(got["events"]) + LINES * len(got["logs"])
    deliveries += PROGRESS * len(got["firehose"])
    assert after["live"] - before["live"] >= deliveries // 2

    # A lane-written id resumes exactly: after the 10th line, the rest and the end.
    events = got["events"][0]
    tenth = next(e for e in events if e.event == "log" and json.loads(e.data)["line"] == "live-10")
    rest: list[Any] = []
    _sse(stack, streams["events"], rest, errors, headers={"Last-Event-ID": tenth.id})
    assert not errors, errors
    assert [(e.event, e.data) for e in rest] == [
        (e.event, e.data) for e in events[events.index(tenth) + 1 :]
    ]


# ---------------------------------------------------------------- the rules (fast tier)


class Writer:
    def __init__(self) -> None:
        self.ok = True
        self.items: list[Item] = []

    def ready(self) -> bool:
        return self.ok

    def write(self, items: list[Item]) -> None:
        self.items += items


def _follower(logs: bool = True) -> tuple[JobFollower, Writer]:
    sub = Subscriber("j", logs=True, size=10, label="t")
    follower = JobFollower(None, sub, "j", Cursor("5-0", 3), emit_events=not logs)  # type: ignore[arg-type]
    writer = Writer()
    follower.writer = writer
    return follower, writer


def _lines(*seqs: int) -> dict[str, Any]:
    lines = [{"seq": s, "ts": "t", "stream": "stdout", "line": f"l{s}"} for s in seqs]
    return {"type": "log", "job_id": "j", "data": {"lines": lines}}


def _event(eid: str, prev: str | None, kind: str = "progress") -> dict[str, Any]:
    return {"id": eid, "prev": prev, "job_id": "j", "type": kind, "ts": "t", "data": {}}


def test_the_lane_takes_lines_that_continue_the_cursor() -> None:
    follower, writer = _follower()
    assert follower._take(_lines(3, 4, 5))  # (line 3 it had: 4 and 5 are new)
    assert [p["seq"] for _, p, _ in writer.items] == [4, 5]
    assert follower.cursor == Cursor("5-0", 5)
    assert follower._take(_lines(4, 5))  # all seen: nothing to write, nothing to read
    assert len(writer.items) == 2


def test_the_lane_leaves_a_gap_a_resync_and_the_end_to_the_usual_path() -> None:
    follower, writer = _follower(logs=False)
    assert not follower._take(_lines(5))  # line 4 missing: a read is due
    assert not follower._take(_event("7-0", "6-0"))  # its predecessor is not ours
    assert not follower._take(_event("7-0", None))  # unknown predecessor
    assert not follower._take(RESYNC)
    assert not follower._take(_event("6-0", "5-0", kind="succeeded"))  # the end
    assert writer.items == [] and follower.cursor == Cursor("5-0", 3)
    assert follower._take(_event("6-0", "5-0"))  # the very next event
    assert [(k, p["id"]) for k, p, _ in writer.items] == [("event", "6-0")]
    assert follower.cursor == Cursor("6-0", 3)


def test_the_lane_waits_while_the_wire_is_not_ready() -> None:
    follower, writer = _follower()
    writer.ok = False  # a write under way, or a client behind
    assert not follower._take(_lines(4))
    assert follower.cursor == Cursor("5-0", 3) and writer.items == []


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


class _Flow:
    write_paused = False


class _Cycle:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.flow = _Flow()
        self.disconnected = self.response_complete = False


def test_a_wire_frames_chunks_as_uvicorn_does_and_counts_them_for_the_access_log() -> None:
    state: dict[str, Any]
    cycle, state = _Cycle(), {}
    wire = Wire(cycle, state)
    assert wire.ready()
    wire.write(b"data: x\r\n\r\n")
    assert cycle.transport.out == [b"b\r\ndata: x\r\n\r\n\r\n"]
    assert state[DIRECT_BYTES] == 11
    cycle.transport.buffered = 1  # the client is behind
    assert not wire.ready()
    cycle.transport.buffered, cycle.flow.write_paused = 0, True
    assert not wire.ready()
    cycle.flow.write_paused, cycle.response_complete = False, True
    assert not wire.ready()


def test_no_wire_where_the_server_is_not_uvicorns_httptools() -> None:
    async def send(_message: Any) -> None: ...

    assert Wire.of({"type": "http"}) is None
    assert Wire.of({"type": "http", "launchbay.server_send": send}) is None
