"""Live job events and logs over SSE, against the real stack (uvicorn + Celery worker).

Clients are real: httpx + httpx_sse over sockets. Every wait is bounded by the client's
read timeout or ``wait_until``; nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from orchestrator.events import Events
from tests.support import Stack, wait_until

API = "/api/v1"
TERMINAL_SSE = {"complete", "failed", "cancelled", "timed_out"}
LINES_5000 = {
    "executor": "process",
    "command": ["sh", "-c", "i=1; while [ $i -le 5000 ]; do echo line-$i; i=$((i+1)); done"],
}


def collect(
    client: httpx.Client,
    path: str,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> list[ServerSentEvent]:
    """Every event of one SSE response until the server closes it (or ``stop_after``)."""
    out: list[ServerSentEvent] = []
    with connect_sse(client, "GET", path, headers=dict(headers or {}), params=params) as es:
        assert es.response.status_code == 200, es.response.read()
        assert es.response.headers["content-type"].startswith("text/event-stream")
        for ev in es.iter_sse():
            if ev.event == "message" and not ev.data:
                continue  # httpx_sse turns a keep-alive comment into an empty event
            out.append(ev)
            if stop_after is not None and len(out) >= stop_after:
                break
    return out


@pytest.fixture
def sse(stack: Stack) -> Any:
    # The read timeout bounds every wait: a stream that stalls fails the test.
    with httpx.Client(base_url=stack.url, timeout=httpx.Timeout(10, read=30)) as c:
        yield c


def test_countdown_streams_status_progress_complete_and_resumes(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 3}})
    events = collect(sse, f"{API}/jobs/{job['id']}/events")  # returns only when it closes

    names = [e.event for e in events]
    assert names[0] == "status"
    assert json.loads(events[0].data)["id"] == job["id"]
    percents = [json.loads(e.data)["percent"] for e in events if e.event == "progress"]
    assert len(percents) >= 3, names
    assert percents == sorted(percents) and percents[0] < percents[-1] == 100
    assert names[-1] == "complete" and sum(n in TERMINAL_SSE for n in names) == 1
    final = json.loads(events[-1].data)
    assert final["status"] == "succeeded" and final["result"]["seconds"] == 3
    assert "log" in names  # the countdown's "3...", "2...", "1..." lines ride along
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids)

    replay = collect(sse, f"{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": events[1].id})
    assert [(e.event, e.id, json.loads(e.data)) for e in replay] == [
        (e.event, e.id, json.loads(e.data)) for e in events[2:]
    ]

    # ?since= is the same cursor for clients that cannot set headers.
    again = collect(sse, f"{API}/jobs/{job['id']}/events", params={"since": events[1].id})
    assert [e.id for e in again] == [e.id for e in events[2:]]


def test_resume_after_the_end_answers_204_so_eventsource_stops(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 5}})
    events = collect(sse, f"{API}/jobs/{job['id']}/events")
    assert events[-1].event == "complete"
    r = sse.get(f"{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": events[-1].id})
    assert r.status_code == 204


def test_an_event_published_after_the_end_does_not_reopen_the_stream(
    stack: Stack, sse: httpx.Client, stack_events: Events
) -> None:
    # A cancel asked while the job was ending publishes cancel_requested after the
    # terminal event (a race the soak test found); the stream still ends at the end.
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 5}})
    events = collect(sse, f"{API}/jobs/{job['id']}/events")
    assert events[-1].event == "complete"
    stack_events.publish(job["id"], "cancel_requested", {"id": job["id"]})
    r = sse.get(f"{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": events[-1].id})
    assert r.status_code == 204
    # From the start (a cursor before the first event and line), the replay still ends at
    # the end and never shows what came after it.
    replay = collect(sse, f"{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": "0-0|0"})
    assert replay[-1].event == "complete"
    assert "cancel_requested" not in [e.event for e in replay]


def test_ended_job_streams_its_state_and_outcome_then_closes(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit({"executor": "process", "command": ["sh", "-c", "echo hi; exit 3"]})
    stack.wait_status(job["id"], timeout=30)
    events = collect(sse, f"{API}/jobs/{job['id']}/events")
    assert [e.event for e in events] == ["status", "log", "failed"]
    assert json.loads(events[1].data)["line"] == "hi"
    assert json.loads(events[-1].data)["exit_code"] == 3


def test_unknown_job_is_404_everywhere(sse: httpx.Client) -> None:
    for path in ("events", "logs", "logs/stream"):
        r = sse.get(f"{API}/jobs/nope-{path.replace('/', '-')}/{path}")
        assert r.status_code == 404, (path, r.text)
        assert "not found" in r.json()["error"]


def test_a_bad_resume_cursor_is_422_naming_it(stack: Stack, sse: httpx.Client) -> None:
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 3}})
    r = sse.get(f"{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": "garbage"})
    assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID"
    r = sse.get(f"{API}/jobs/{job['id']}/logs/stream", params={"since": "x"})
    assert r.status_code == 422 and r.json()["field"] == "since"
    r = sse.get(f"{API}/jobs/{job['id']}/logs", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["error"]


def test_5000_lines_reach_a_log_stream_client_in_order_and_stay_readable(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit(LINES_5000)
    events = collect(sse, f"{API}/jobs/{job['id']}/logs/stream")  # closes after the last line
    lines = [json.loads(e.data) for e in events]
    assert {e.event for e in events} == {"log"}
    assert [ln["line"] for ln in lines] == [f"line-{i}" for i in range(1, 5001)]
    assert [ln["seq"] for ln in lines] == list(range(1, 5001))
    assert [e.id for e in events] == [str(i) for i in range(1, 5001)]
    assert all(ln["stream"] == "stdout" and ln["ts"] for ln in lines)
    assert stack.job(job["id"])["status"] == "succeeded"

    # After the end the whole log reads back in pages (the live buffer holds only 1000).
    got: list[dict[str, Any]] = []
    since = 0
    for _ in range(10):
        page = sse.get(
            f"{API}/jobs/{job['id']}/logs", params={"since": since, "limit": 1000}
        ).json()
        assert page["job_status"] == "succeeded"
        if not page["items"]:
            break
        got += page["items"]
        since = page["next_since"]
    assert [ln["line"] for ln in got] == [f"line-{i}" for i in range(1, 5001)]
    assert [ln["seq"] for ln in got] == list(range(1, 5001))

    text = sse.get(f"{API}/jobs/{job['id']}/logs", params={"format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.splitlines() == [f"line-{i}" for i in range(1, 5001)]
    tail = sse.get(f"{API}/jobs/{job['id']}/logs", params={"since": 4990}).json()
    assert [ln["line"] for ln in tail["items"]] == [f"line-{i}" for i in range(4991, 5001)]
    assert tail["next_since"] == 5000


# 1100 lines, a pause longer than the runner's 50 ms flush, then 400 more: the pause puts
# a batch boundary (and so a later time) right after line 1100.
LINES_1500 = {
    "executor": "process",
    "command": [
        "sh",
        "-c",
        "i=1; while [ $i -le 1500 ]; do echo line-$i; "
        "[ $i -eq 1100 ] && sleep 0.3; i=$((i+1)); done",
    ],
}


def _when(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def test_logs_since_a_time_start_after_the_lines_written_by_then(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit(LINES_1500)
    stack.wait_status(job["id"], timeout=60)
    logs = f"{API}/jobs/{job['id']}/logs"
    lines = sse.get(logs, params={"limit": 5000}).json()["items"]
    assert [ln["line"] for ln in lines] == [f"line-{i}" for i in range(1, 1501)]
    # Line 200 has left the live buffer (1000 lines) and is read from the whole-log file;
    # line 1100 is still in the buffer.
    for n in (200, 1100):
        when = lines[n - 1]["ts"]
        expected = [ln["line"] for ln in lines if _when(ln["ts"]) > _when(when)]
        if n == 1100:
            assert expected == [f"line-{i}" for i in range(1101, 1501)]
        assert expected and expected[-1] == "line-1500"
        text = sse.get(logs, params={"since": when, "format": "text"}).text.splitlines()
        assert text == expected, n
        page = sse.get(logs, params={"since": when, "limit": 10}).json()
        assert [ln["line"] for ln in page["items"]] == expected[:10]
        assert page["next_since"] == page["items"][-1]["seq"]  # and resumes by number
        streamed = collect(sse, f"{logs}/stream", params={"since": when})
        assert [json.loads(e.data)["line"] for e in streamed] == expected

    first, last = _when(lines[0]["ts"]), _when(lines[-1]["ts"])
    before = (first - timedelta(seconds=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(sse.get(logs, params={"since": before, "limit": 5000}).json()["items"]) == 1500
    naive = (first - timedelta(seconds=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert len(sse.get(logs, params={"since": naive, "limit": 5000}).json()["items"]) == 1500
    after = sse.get(logs, params={"since": (last + timedelta(seconds=1)).isoformat()}).json()
    assert after["items"] == [] and after["next_since"] == 1500

    for bad in ("yesterday", "-1", "2026-13-01T00:00:00"):
        r = sse.get(logs, params={"since": bad})
        assert r.status_code == 422 and r.json()["field"] == "since", bad
        assert "ISO 8601" in r.json()["error"]


def test_log_stream_resumes_after_a_disconnect_losing_nothing(
    stack: Stack, sse: httpx.Client
) -> None:
    job = stack.submit(LINES_5000)
    path = f"{API}/jobs/{job['id']}/logs/stream"
    first = collect(sse, path, stop_after=1234)  # then hang up mid-stream
    rest = collect(sse, path, headers={"Last-Event-ID": first[-1].id})
    lines = [json.loads(e.data)["line"] for e in first + rest]
    assert lines == [f"line-{i}" for i in range(1, 5001)]
    # Resuming at the very end: nothing left, and the server says so with 204.
    r = sse.get(path, headers={"Last-Event-ID": rest[-1].id})
    assert r.status_code == 204


def test_many_clients_at_once_see_the_same_stream(stack: Stack, tmp_path: Path) -> None:
    go = tmp_path / "go"
    # The job waits for the file, so every client is connected before anything happens.
    job = stack.submit(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                'while [ ! -e "$1" ]; do sleep 0.05; done; '
                "for i in $(seq 1 300); do echo n-$i; done; echo '::progress 50 half'; "
                "for i in $(seq 301 600); do echo n-$i; done",
                "sh",
                str(go),
            ],
        }
    )
    clients = 12
    results: dict[int, list[tuple[str | None, Any]]] = {}
    errors: list[BaseException] = []

    def watch(n: int) -> None:
        try:
            with httpx.Client(base_url=stack.url, timeout=httpx.Timeout(10, read=30)) as c:
                evs = collect(c, f"{API}/jobs/{job['id']}/events")
            results[n] = [(e.event, json.loads(e.data)) for e in evs if e.event != "status"]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def completed() -> int:
        return int(stack.http.get(f"{API}/streams").json()["ended"].get("complete", 0))

    before = completed()
    threads = [threading.Thread(target=watch, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        wait_until(
            lambda: c.get(f"{API}/streams").json()["subscribers"] >= clients,
            30,
            what=f"{clients} SSE clients to subscribe",
        )
    go.touch()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # The hub counts how each answer ended: these, with the job's end sent.
    wait_until(lambda: completed() >= before + clients, 10, what="the answers counted")
    assert len(results) == clients
    first = results[0]
    logs = [d["line"] for ev, d in first if ev == "log"]
    assert logs == [f"n-{i}" for i in range(1, 301)] + ["::progress 50 half"] + [
        f"n-{i}" for i in range(301, 601)
    ]
    # The progress event comes after the 300 lines printed before it.
    at = first.index(("progress", {"percent": 50.0, "message": "half", "attempt": 1}))
    assert [d["line"] for ev, d in first[:at] if ev == "log"][-1] == "n-300"
    assert first[-1][0] == "complete"
    for n in range(1, clients):
        assert results[n] == first


def test_a_client_that_leaves_is_counted_as_left(stack: Stack, sse: httpx.Client) -> None:
    def left() -> int:
        return int(sse.get(f"{API}/streams").json()["ended"].get("left", 0))

    before = left()
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 30}})
    with (
        httpx.Client(base_url=stack.url, timeout=10) as c,
        c.stream("GET", f"{API}/jobs/{job['id']}/events") as r,
    ):
        assert r.status_code == 200
        next(r.iter_lines())  # (the status event: the answer is under way)
    wait_until(lambda: left() >= before + 1, 10, what="the answer counted as left")
    stack.http.post(f"{API}/jobs/{job['id']}/cancel")


def test_hub_reports_its_subscription(sse: httpx.Client) -> None:
    hub = sse.get(f"{API}/streams").json()
    assert hub["subscribed"] is True and hub["queue_size"] >= 1
    wait_until(
        lambda: sse.get(f"{API}/streams").json()["subscribers"] == 0,
        10,
        what="stream subscribers of earlier tests to be released",
    )
