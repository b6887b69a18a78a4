"""The order of a job's items when the follower reads its two streams: a live client and a
client resuming from the same cursor get the same items in the same order.

A follower that reads merges the events and the log lines of ONE snapshot by time stamp.
The snapshot only holds when both lists stop at the same instant: a list that reaches
further than the other (the log read from its file after the snapshot, when the job had no
line in Redis yet; a page of lines cut short) sends a line before an event that was
written before it, and a replay (which reads both at once) sends them the other way round.
Seen in CI: a countdown's ``3...`` went out before its ``3 seconds remaining...``.

Against a real Valkey and the real publisher (orchestrator/events.py); the worker's next
call is made to land exactly where the race put it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from api.fanout import Hub, Subscriber
from api.follower import Cursor, Item, JobFollower
from orchestrator.events import Events
from orchestrator.settings import Settings
from tests.api.test_fanout import job_id

pytestmark = pytest.mark.anyio
WAIT_S = 10


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    h = Hub(
        settings.effective_redis_url,
        logs_dir=settings.logs_dir,
        client_name=f"test-hub-{uuid.uuid4().hex[:8]}",
    )
    await h.start()
    yield h
    await h.stop()


def _shape(items: list[Item]) -> list[tuple[str, str, str]]:
    return [(k, p.get("line") or p["type"], c.encode()) for k, p, c in items]


def _after_each_snapshot(hub: Hub, write: Any, times: int = 1) -> list[int]:
    """Run ``write`` (in a thread: the worker's call) right after each of the hub's next
    ``times`` snapshots (MULTI/EXEC) was taken, before the hub looks at anything else."""
    real = hub.redis.pipeline
    done: list[int] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def execute_then_write(*a: Any, **kw: Any) -> Any:
            out = await execute(*a, **kw)
            if len(done) < times:
                done.append(1)
                await anyio.to_thread.run_sync(write)
            return out

        pipe.execute = execute_then_write  # type: ignore[method-assign]  # (on this pipeline only)
        return pipe

    hub.redis.pipeline = pipeline  # type: ignore[method-assign]
    return done


async def _replay(hub: Hub, jid: str, cursor: Cursor, page: int = 1000) -> list[Item]:
    out: list[Item] = []
    follower = JobFollower(hub, hub.subscribe(jid), jid, cursor, page=page)
    with anyio.fail_after(WAIT_S):
        async for batch in follower.batches():
            out.extend(batch)
    return out


async def _follow_live(
    hub: Hub, jid: str, cursor: Cursor, items: int, end: Any, page: int = 1000
) -> list[Item]:
    """A live follower from ``cursor``: once it sent ``items`` items, ``end()`` ends the
    job; everything it sent, to the end."""
    sub = hub.subscribe(jid)
    follower = JobFollower(hub, sub, jid, cursor, poll_s=30, page=page)
    got: list[Item] = []
    enough = anyio.Event()

    async def follow() -> None:
        async for batch in follower.batches():
            got.extend(batch)
            if len(got) >= items:
                enough.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await enough.wait()
            await anyio.to_thread.run_sync(end)
    hub.unsubscribe(sub)
    return got


async def test_a_line_written_after_the_snapshot_does_not_overtake_its_event(
    hub: Hub, events: Events
) -> None:
    """The job has no log line in Redis when the follower's snapshot is taken; the worker's
    next call (a progress report, then the line printed after it) lands right after. The
    follower must not take that line from the log file while the snapshot, older, does
    not hold the event written before it."""
    jid = job_id()
    started = events.publish(jid, "started", {"status": "running"})["id"]
    events.log_is_new(jid)

    def worker_call() -> None:  # a countdown's first step, as its attempt sends it
        events.post(jid, "progress", {"percent": 0, "message": "3 seconds remaining..."})
        events.append_logs(jid, [("stdout", None, "3...")])

    writes = _after_each_snapshot(hub, worker_call)
    live = await _follow_live(
        hub,
        jid,
        Cursor(started, 0),
        items=2,
        end=lambda: events.publish(jid, "succeeded", {"status": "succeeded"}),
    )
    assert writes == [1]  # (the call did land after the first snapshot)
    replay = await _replay(hub, jid, Cursor(started, 0))
    assert [s[:2] for s in _shape(replay)] == [
        ("event", "progress"),
        ("log", "3..."),
        ("event", "succeeded"),
    ]
    assert _shape(live) == _shape(replay)


async def test_a_page_of_lines_does_not_let_a_later_event_overtake_the_next_page(
    hub: Hub, events: Events
) -> None:
    """A read whose page of lines is full stops short of the log's end: the events it got
    that come after the next (unread) line wait for it, whatever the page size."""
    jid = job_id()
    started = events.publish(jid, "started", {"status": "running"})["id"]
    events.append_logs(jid, [("stdout", None, x) for x in ("a", "b", "c")])  # one batch
    events.publish(jid, "progress", {"percent": 50, "message": "half"})
    events.append_logs(jid, [("stdout", None, "d")])

    def end() -> None:
        events.publish(jid, "succeeded", {"status": "succeeded"})

    live = await _follow_live(hub, jid, Cursor(started, 0), items=5, end=end, page=2)
    whole = await _replay(hub, jid, Cursor(started, 0))
    assert [s[:2] for s in _shape(whole)] == [
        ("log", "a"),
        ("log", "b"),
        ("log", "c"),
        ("event", "progress"),
        ("log", "d"),
        ("event", "succeeded"),
    ]
    assert _shape(live) == _shape(whole)
    for page in (1, 2, 3):  # (an ended job's replay, page by page)
        assert _shape(await _replay(hub, jid, Cursor(started, 0), page=page)) == _shape(whole)


class _Parking(Subscriber):
    """A subscriber that tells when its follower first waits for a message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parked = anyio.Event()

    async def next(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        self.parked.set()
        return await super().next(*args, **kwargs)


async def test_lines_after_a_gap_are_read_with_the_events_written_among_them(
    hub: Hub, events: Events
) -> None:
    """A log message whose lines do not continue the cursor (one was missed) makes the
    follower read. It must read both streams: the log alone may already hold lines written
    after an event whose message has not come yet."""
    jid = job_id()
    started = events.publish(jid, "started", {"status": "running"})["id"]
    events.log_is_new(jid)
    real = hub.subscribe(jid)
    # What the follower's subscriber gets: the hub's messages, except the line "one"; the
    # line "two" only once the worker's next call is in the streams; the rest only once
    # the follower has dealt with "two".
    gappy = _Parking(jid, logs=True, size=100, label="gappy")
    written, dealt = anyio.Event(), anyio.Event()

    async def relay() -> None:
        while True:
            msg = await real.next()
            if msg is None:
                continue
            lines = [ln["line"] for ln in (msg.get("data") or {}).get("lines", [])]
            if lines == ["one"]:
                continue
            if lines == ["two"]:
                await written.wait()
                gappy.queue.put_nowait(msg)
                await dealt.wait()
                continue
            gappy.queue.put_nowait(msg)

    follower = JobFollower(hub, gappy, jid, Cursor(started, 0), poll_s=30)
    got: list[Item] = []
    four, done = anyio.Event(), anyio.Event()

    async def follow() -> None:
        async for batch in follower.batches():
            got.extend(batch)
            dealt.set()
            if len(got) >= 4:
                four.set()
        done.set()

    def worker_call() -> None:
        events.post(jid, "progress", {"percent": 50, "message": "half"})
        events.append_logs(jid, [("stdout", None, "three")])

    one: list[tuple[str, str | None, str]] = [("stdout", None, "one")]
    two: list[tuple[str, str | None, str]] = [("stdout", None, "two")]
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            tg.start_soon(follow)
            await gappy.parked.wait()  # (its first read done: nothing yet)
            await anyio.to_thread.run_sync(events.append_logs, jid, one)
            await anyio.to_thread.run_sync(events.append_logs, jid, two)
            await anyio.to_thread.run_sync(worker_call)
            written.set()
            await four.wait()
            await anyio.to_thread.run_sync(
                events.publish, jid, "succeeded", {"status": "succeeded"}
            )
            await done.wait()
            tg.cancel_scope.cancel()  # (the relay)
    hub.unsubscribe(real)
    replay = await _replay(hub, jid, Cursor(started, 0))
    assert [s[:2] for s in _shape(replay)] == [
        ("log", "one"),
        ("log", "two"),
        ("event", "progress"),
        ("log", "three"),
        ("event", "succeeded"),
    ]
    assert _shape(got) == _shape(replay)
