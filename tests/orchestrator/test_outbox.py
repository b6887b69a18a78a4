"""The process's outbox (orchestrator/events.py): a transition's event and its metric
increments are one script call; what several threads stage while a call is in flight goes
out in the next one, in order; a log batch carries the events staged before it; readers
see exactly what the one-event-per-call publisher gave them. On a real Valkey."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator import events as events_module
from orchestrator.events import (
    _SEND_LUA,
    EVENTS_CHANNEL,
    FIREHOSE_STREAM,
    METRICS_KEY,
    Events,
    connect,
)
from orchestrator.job import EventType, Job, utcnow
from orchestrator.listeners import EventPublisher, Listeners
from orchestrator.metrics import MetricsRecorder, increments
from tests.support import RedisCommands

WAIT_S = 5.0


class Calls(RedisCommands):
    """Counts the commands a client sends, once the outbox's script is loaded (a fresh
    server loads it on first use: a call not counted here)."""

    def __init__(self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        client.script_load(_SEND_LUA)
        super().__init__(client, monkeypatch)


def _job(job_id: str, status: str) -> Job:
    now = utcnow()
    times: dict[str, Any] = {"claimed_at": now - timedelta(seconds=0.2)}
    if status in ("running", "succeeded"):
        times["started_at"] = now - timedelta(seconds=0.1)
    if status == "succeeded":
        times["finished_at"] = now
    return Job.model_validate(
        {
            "id": job_id,
            "spec": {"executor": "process", "command": ["true"]},
            "status": status,
            "attempt": 1,
            "runner_id": "runner-1",
            "created_at": now - timedelta(seconds=1),
            **times,
        }
    )


@pytest.fixture
def pubsub(events: Events) -> Iterator[Any]:
    ps = events.r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(EVENTS_CHANNEL)
    while ps.get_message(timeout=0.01) is not None:  # (the subscribe answer; not a wait)
        pass
    yield ps
    ps.close()


def _messages(ps: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = ps.get_message(timeout=WAIT_S)
        assert msg is not None, f"only {len(out)} of {n} messages arrived"
        if msg["type"] == "message":
            out.append(json.loads(msg["data"]))
    return out


def test_a_transition_is_one_call_for_its_event_and_its_counters(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    listeners = Listeners([EventPublisher(events), MetricsRecorder.for_client(events.r)])
    done = _job("outbox-one-call", "succeeded")
    fields = increments(done, EventType.succeeded)
    assert fields, "a job's end counts"
    before = events.r.hgetall(METRICS_KEY)
    calls = Calls(events.r, monkeypatch)

    listeners.transition(done)

    assert calls.names == ["EVALSHA"]
    (stored,) = events.read_events(done.id)
    (msg,) = _messages(pubsub, 1)
    assert stored["type"] == msg["type"] == "succeeded"
    assert msg["id"] == stored["id"] and msg["data"] == stored["data"] == json.loads(
        json.dumps(done.public(), default=str)
    )
    assert msg["ts"] == stored["ts"] and msg["job_id"] == done.id
    fire = events.r.xrange(FIREHOSE_STREAM, min=msg["gid"], max=msg["gid"])
    assert fire and fire[0][1]["id"] == stored["id"] and fire[0][1]["job_id"] == done.id
    after = events.r.hgetall(METRICS_KEY)
    for key, n in fields.items():
        assert float(after[key]) - float(before.get(key, 0)) == pytest.approx(n)


def test_changes_handed_over_together_are_one_call_in_order(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    listeners = Listeners([EventPublisher(events), MetricsRecorder.for_client(events.r)])
    jid = "outbox-together"
    calls = Calls(events.r, monkeypatch)
    with listeners.together():
        listeners.transition(_job(jid, "claimed"))
        listeners.transition(_job(jid, "running"))
        listeners.progress(jid, 1, 50.0, "half")
        listeners.transition(_job(jid, "succeeded"))
    assert calls.names == ["EVALSHA"]
    want = ["claimed", "started", "progress", "succeeded"]
    assert [e["type"] for e in events.read_events(jid)] == want
    got = _messages(pubsub, 4)
    assert [m["type"] for m in got] == want
    assert [m["id"] for m in got] == [e["id"] for e in events.read_events(jid)]


def _callers(events: Events, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each command ``events``' client sends from now on."""
    callers: list[str] = []
    real = events.r.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        callers.append(threading.current_thread().name)
        return real(*args, **options)

    events.r.script_load(_SEND_LUA)  # (a fresh server loads the script on first use)
    monkeypatch.setattr(events.r, "execute_command", counted)
    return callers


def test_changes_handed_over_without_waiting_go_out_from_the_outbox_thread_in_order(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``together(wait=False)``: the caller sends nothing itself (the outbox's thread does),
    and what the caller flushes next still goes out after it."""
    listeners = Listeners([EventPublisher(events), MetricsRecorder.for_client(events.r)])
    jid = "outbox-soon"
    callers = _callers(events, monkeypatch)
    with listeners.together(wait=False):
        listeners.transition(_job(jid, "claimed"))
        listeners.transition(_job(jid, "running"))
    assert [m["type"] for m in _messages(pubsub, 2)] == ["claimed", "started"]
    assert callers == ["outbox"]  # (one call, and not this thread's)
    with listeners.together(wait=False):
        listeners.transition(_job(jid, "succeeded"))
    listeners.progress(jid, 1, 100.0, "after")  # (this thread's flush: after the one before)
    assert [m["type"] for m in _messages(pubsub, 2)] == ["succeeded", "progress"]
    want = ["claimed", "started", "succeeded", "progress"]
    assert [e["type"] for e in events.read_events(jid)] == want


def test_what_is_handed_over_without_waiting_leaves_with_a_flush_that_comes_first(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox's thread lets what ``flush_soon`` staged wait ``SOON_S``: a short job's
    claim events leave with its end's, in one call (here the wait is made long, so the
    caller's flush surely comes first)."""
    monkeypatch.setattr(events_module, "SOON_S", 30.0)
    listeners = Listeners([EventPublisher(events)])
    jid = "outbox-soon-coalesced"
    callers = _callers(events, monkeypatch)
    with listeners.together(wait=False):
        listeners.transition(_job(jid, "claimed"))
        listeners.transition(_job(jid, "running"))
    listeners.transition(_job(jid, "succeeded"))  # (this thread's flush, at once)
    assert [m["type"] for m in _messages(pubsub, 3)] == ["claimed", "started", "succeeded"]
    assert callers == [threading.current_thread().name]  # one call, the caller's


class _CountingEvent(threading.Event):
    """An Event that counts the waits that had to block (a wake-up of the waiter)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.blocked += 1
        return super().wait(timeout)


def test_hand_overs_that_keep_coming_cost_the_outbox_thread_no_wake_up_each(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While hand-overs keep coming (a pool child claiming job after job), the outbox's
    thread looks once per SOON_S instead of waiting to be woken by each: 60 hand-overs
    over ~1.2 s with SOON_S 0.25 s leave it blocked on its event only before the first and
    after the last (it was blocked at the start of every window before: 5 or more here).
    Each hand-over still goes out within a look, in order, from the outbox's thread."""
    monkeypatch.setattr(events_module, "SOON_S", 0.25)
    outbox = events_module.outbox_of(events.r)
    soon = _CountingEvent()
    monkeypatch.setattr(outbox, "_soon", soon)
    listeners = Listeners([EventPublisher(events)])
    callers = _callers(events, monkeypatch)
    n = 60
    for i in range(n):
        with listeners.together(wait=False):
            listeners.transition(_job(f"outbox-stream-{i}", "claimed"))
        time.sleep(0.02)  # (the pace of the stream under test, not a synchronisation)
    got = _messages(pubsub, n)
    assert [m["job_id"] for m in got] == [f"outbox-stream-{i}" for i in range(n)]
    assert set(callers) == {"outbox"}
    assert soon.blocked <= 2, f"the outbox's thread was woken {soon.blocked} times"


def test_what_threads_stage_while_a_call_is_in_flight_keeps_each_jobs_order(
    events: Events, pubsub: Any
) -> None:
    threads, per = 6, 40
    start = threading.Barrier(threads)

    def publish(t: int) -> None:
        start.wait(WAIT_S)
        for i in range(per):
            if i % 3:
                events.post(f"outbox-order-{t}", "progress", {"i": i})
                events.flush()
            else:
                events.publish(f"outbox-order-{t}", "progress", {"i": i})

    workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT_S * 4)
    seen: dict[str, list[int]] = {}
    for msg in _messages(pubsub, threads * per):
        seen.setdefault(msg["job_id"], []).append(msg["data"]["i"])
    for t in range(threads):
        jid = f"outbox-order-{t}"
        assert seen[jid] == list(range(per))
        assert [e["data"]["i"] for e in events.read_events(jid)] == list(range(per))


def test_a_log_batch_carries_the_events_staged_before_it(
    events: Events, pubsub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jid = "outbox-logs"
    events.append_logs(jid, [("stdout", None, "one")])
    _messages(pubsub, 1)
    calls = Calls(events.r, monkeypatch)
    events.post(jid, "progress", {"percent": 50.0})
    events.append_logs(jid, [("stdout", None, "two"), ("stderr", "s1", "three")])
    assert calls.names == ["EVALSHA"]
    progress, batch = _messages(pubsub, 2)
    assert progress["type"] == "progress" and isinstance(progress["id"], str)
    assert batch["type"] == "log" and batch["id"] is None
    assert batch["data"]["seq"] == 3
    assert [(r["seq"], r["stream"], r["step"], r["line"]) for r in batch["data"]["lines"]] == [
        (2, "stdout", None, "two"),
        (3, "stderr", "s1", "three"),
    ]
    assert progress["ts"] <= batch["ts"]
    stored = [json.loads(raw) for raw in events.log_path(jid).read_text().splitlines()]
    assert [r["line"] for r in stored] == ["one", "two", "three"]
    assert stored[1:] == batch["data"]["lines"]
    live = events.r.xrange(f"lb:job:{jid}:logs")
    assert [eid for eid, _ in live] == ["1-0", "2-0", "3-0"]


def test_a_log_batch_sent_again_after_its_answer_was_lost_is_kept_once(
    events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis ran the call, then stopped before answering (a graceful shutdown does that):
    # the runner keeps the batch and sends it again. No line twice, none refused, and the
    # job's later lines still go in (a refused re-send used to lose every later line).
    jid = "outbox-resent"
    events.append_logs(jid, [("stdout", None, "one")])
    real = events.r.evalsha
    lost = [True]

    def ran_then_lost(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        if lost:
            lost.clear()
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    monkeypatch.setattr(events.r, "evalsha", ran_then_lost)
    batch: list[tuple[str, str | None, str]] = [("stdout", None, "two"), ("stdout", None, "three")]
    with pytest.raises(redis.ConnectionError):
        events.append_logs(jid, batch)
    assert events.append_logs(jid, batch) == 3  # sent again, as the runner does
    assert events.append_logs(jid, [("stdout", None, "four")]) == 4
    live = events.r.xrange(f"lb:job:{jid}:logs")
    assert [(eid, f["line"]) for eid, f in live] == [
        ("1-0", "one"),
        ("2-0", "two"),
        ("3-0", "three"),
        ("4-0", "four"),
    ]
    stored = [json.loads(raw)["line"] for raw in events.log_path(jid).read_text().splitlines()]
    assert stored == ["one", "two", "three", "four"]


def test_a_script_flushed_from_redis_is_loaded_again(events: Events) -> None:
    events.r.script_flush()
    got = events.publish("outbox-noscript", "created", {"n": 1})
    assert events.read_events("outbox-noscript")[0]["id"] == got["id"]


def test_with_redis_down_a_listener_failure_is_logged_and_nothing_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # (a port nobody listens on: the fast tier allows the refusal)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    events = Events(connect(f"redis://127.0.0.1:{port}/0"), logs_dir=tmp_path, log_buffer_lines=10)
    listeners = Listeners([EventPublisher(events), MetricsRecorder.for_client(events.r)])
    with caplog.at_level(logging.WARNING):
        listeners.transition(_job("outbox-down", "succeeded"))
        listeners.progress("outbox-down", 1, 10.0, "x")
    assert any("listener" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    assert any("not published" in r.getMessage() for r in caplog.records)
    with pytest.raises(redis.ConnectionError):
        events.append_logs("outbox-down", [("stdout", None, "kept by the caller")])
    assert not events.log_path("outbox-down").exists()
    with pytest.raises(redis.ConnectionError):
        events.publish("outbox-down", "created", {})
    assert events._outbox is not None and not events._outbox._args  # nothing kept staged


def test_what_is_staged_while_a_call_is_in_flight_goes_out_together_in_the_next(
    events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    jid = "outbox-in-flight"
    in_flight, release = threading.Event(), threading.Event()
    real = events.r.evalsha
    calls: list[int] = []

    def held(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        calls.append(numkeys)
        if len(calls) == 1:  # the first call stays in flight until the test lets it go
            in_flight.set()
            assert release.wait(WAIT_S)
        return real(sha, numkeys, *keys_and_args)

    events.r.script_load(_SEND_LUA)
    monkeypatch.setattr(events.r, "evalsha", held)
    first = threading.Thread(target=events.publish, args=(jid, "created", {"n": 0}))
    first.start()
    assert in_flight.wait(WAIT_S)
    for n in range(1, 6):
        events.post(jid, "progress", {"n": n})
    second = threading.Thread(target=events.flush)
    second.start()
    release.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert calls == [3, 2 + 5]  # (firehose, metrics and one stream key per event)
    assert [e["data"]["n"] for e in events.read_events(jid)] == [0, 1, 2, 3, 4, 5]
