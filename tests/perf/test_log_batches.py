"""Log lines in batches: one script call per batch keeps every line, in order, numbered
exactly, in the live buffer, the stored log and the wake-up message; a reporter whose
buffer is full makes the job's output wait instead of dropping lines while the channel
takes them, and still drops the oldest (saying so) while the channel is unreachable."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest

import workers.attempt as attempt_mod
from orchestrator.events import EVENTS_CHANNEL, Events, job_logs_key
from workers.channels import LogBatch, Unreachable
from workers.launchers._lines import LineSplitter


def test_batches_keep_every_line_in_order_with_exact_numbers(events: Events) -> None:
    job = f"perf-{uuid.uuid4().hex[:8]}"
    pubsub = events.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS_CHANNEL)
    try:
        lines = [
            ("stdout" if i % 3 else "stderr", "build" if i % 2 else None, f'line {i} é"\\')
            for i in range(1, 2501)
        ]
        last = 0
        for start in range(0, len(lines), 700):
            last = events.append_logs(job, lines[start : start + 700])
        assert last == 2500
        # The live buffer: the last log_buffer_lines lines, ids = line numbers.
        live = events.r.xrange(job_logs_key(job))
        assert len(live) == events.log_buffer_lines
        assert live[-1][0] == "2500-0" and live[0][0] == f"{2501 - events.log_buffer_lines}-0"
        assert live[-1][1] == {
            "ts": live[-1][1]["ts"],
            "stream": "stdout",  # (2500: not a multiple of 3; even: no step)
            "step": "",
            "line": 'line 2500 é"\\',
        }
        # The stored log: every line, in order, one JSON record each.
        stored = [json.loads(x) for x in events.log_path(job).read_text().splitlines()]
        assert [r["seq"] for r in stored] == list(range(1, 2501))
        assert [(r["stream"], r["step"], r["line"]) for r in stored] == lines
        # The wake-up messages carry the same records, batch by batch.
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(got) < 2500:
            assert time.monotonic() < deadline, f"only {len(got)} lines published"
            msg = pubsub.get_message(timeout=1)
            if msg is None:  # (also what an ignored subscribe confirmation reads as)
                continue
            body = json.loads(msg["data"])
            if body["job_id"] == job:
                assert (
                    body["type"] == "log"
                    and body["data"]["seq"] == body["data"]["lines"][-1]["seq"]
                )
                got += body["data"]["lines"]
        assert got == stored
        # A new Events (another process) goes on from the last number.
        other = Events(events.r, logs_dir=events.logs_dir, log_buffer_lines=events.log_buffer_lines)
        assert other.append_logs(job, [("stdout", None, "more")]) == 2501
    finally:
        pubsub.close()
        events.purge(job)


def test_a_new_log_starts_at_line_1_without_looking_where_it_ended(
    events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first attempt's log (DirectChannel marks it new as it claims) costs its first
    batch no read; the numbers are the same as after a look."""
    job = f"perf-{uuid.uuid4().hex[:8]}"
    events.log_is_new(job)

    def no_look(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("looked where the log ended")

    monkeypatch.setattr(events.r, "xrevrange", no_look)
    assert events.append_logs(job, [("stdout", None, "a"), ("stdout", None, "b")]) == 2
    assert events.append_logs(job, [("stderr", None, "c")]) == 3
    monkeypatch.undo()
    assert [eid for eid, _ in events.r.xrange(job_logs_key(job))] == ["1-0", "2-0", "3-0"]
    events.purge(job)


class _Channel:
    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.got: LogBatch = []

    def logs(self, _job: Any, batch: LogBatch) -> None:
        if not self.reachable:
            raise Unreachable("down")
        self.got += batch

    def progress(self, _job: Any, _percent: float, _message: str) -> None:
        pass

    def together(self) -> Any:
        return contextlib.nullcontext()


def _reporter(channel: _Channel) -> Any:
    # A stand-in with only what the reporter reads of an attempt: its channel and job id.
    attempt = SimpleNamespace(channel=channel, job=SimpleNamespace(id="j"))
    return attempt_mod._Reporter(cast(attempt_mod.Attempt, attempt))


def test_a_full_buffer_waits_for_the_watcher_instead_of_dropping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(attempt_mod, "_MAX_BUFFERED", 50)
    channel = _Channel()
    reporter = _reporter(channel)
    n = 5000
    producer = threading.Thread(
        target=lambda: [reporter.log("stdout", str(i)) for i in range(n)], daemon=True
    )
    producer.start()
    while producer.is_alive() or reporter.lines:
        reporter.flush()
        producer.join(0.001)
    assert reporter.dropped == 0
    assert [line for _s, _st, line in channel.got] == [str(i) for i in range(n)]


def test_an_unreachable_channel_still_drops_the_oldest_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(attempt_mod, "_MAX_BUFFERED", 50)
    channel = _Channel(reachable=False)
    reporter = _reporter(channel)
    reporter.log("stdout", "first")
    reporter.flush()  # fails: the channel is unreachable, so a full buffer must not wait
    done = threading.Event()

    def produce() -> None:
        for i in range(300):
            reporter.log("stdout", str(i))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert done.wait(30), "the producer blocked on an unreachable channel"
    assert reporter.dropped == 301 - 50
    channel.reachable = True
    reporter.flush()
    assert channel.got[0][0] == "system" and "251 log lines dropped" in channel.got[0][2]
    assert [line for _s, _st, line in channel.got[1:]] == [str(i) for i in range(250, 300)]


def test_the_splitters_fast_path_cuts_lines_as_the_byte_by_byte_one() -> None:
    """Whole chunks split at once give exactly the lines (and cuts of long ones) that the
    line-by-line path gives, however the bytes are chunked."""
    rng = random.Random(7)
    for _ in range(500):
        lines = [
            bytes(rng.choice(b"ab\r\xc3\xa9") for _ in range(rng.choice([0, 1, 5, 30, 80])))
            for _ in range(rng.randint(0, 50))
        ]
        data = b"\n".join(lines) + rng.choice([b"", b"\n", b"tail"])
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 8))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        limit = rng.choice([10, 40, 1000])
        fast: list[str] = []
        splitter = LineSplitter(fast.append, limit)
        for chunk in chunks:
            splitter.feed(chunk)
        splitter.close()
        slow: list[str] = []
        one_by_one = LineSplitter(slow.append, limit)
        for i in range(len(data)):
            one_by_one.feed(data[i : i + 1])  # (a 1-byte chunk never takes the fast path)
        one_by_one.close()
        assert fast == slow
