"""The fan-out hub and the job follower against a real Valkey (no API process needed)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import redis

from api.fanout import RESYNC, Dropped, Hub, Subscriber
from api.follower import Cursor, JobFollower, parse_seq
from orchestrator.errors import ParamError
from orchestrator.events import Events, LogLine, connect, job_logs_key, parse_log_since
from orchestrator.settings import Settings

pytestmark = pytest.mark.anyio
WAIT_S = 10


@pytest.fixture
def small_events(settings: Settings) -> Any:
    ev = Events(
        connect(settings.effective_redis_url), logs_dir=settings.logs_dir, log_buffer_lines=10
    )
    yield ev
    ev.r.close()


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    h = Hub(
        settings.effective_redis_url,
        logs_dir=settings.logs_dir,
        queue_size=3,
        client_name=f"test-hub-{uuid.uuid4().hex[:8]}",
    )
    await h.start()
    assert h.stats()["subscribed"]
    yield h
    await h.stop()


def job_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def publish(events: Events, jid: str, type_: str, data: dict[str, Any]) -> None:
    await anyio.to_thread.run_sync(events.publish, jid, type_, data)


async def append(events: Events, jid: str, lines: list[str]) -> None:
    records: list[tuple[str, str | None, str]] = [("stdout", None, x) for x in lines]
    await anyio.to_thread.run_sync(events.append_logs, jid, records)


async def test_messages_reach_the_right_subscribers(hub: Hub, events: Events) -> None:
    a, b = job_id(), job_id()
    sub_a = hub.subscribe(a)
    sub_all = hub.subscribe(None, logs=False)
    sub_b = hub.subscribe(b)
    await publish(events, a, "progress", {"percent": 10, "message": "x"})
    await append(events, a, ["hello"])
    with anyio.fail_after(WAIT_S):
        first = await sub_a.next()
        second = await sub_a.next()
        only = await sub_all.next()
    assert first is not None and first["type"] == "progress" and first["data"]["percent"] == 10
    assert second is not None and second["type"] == "log"
    assert second["data"]["lines"][0]["line"] == "hello"
    assert only is not None and only["type"] == "progress"  # no log lines for this one
    assert await sub_all.next(timeout=0.2) is None
    assert await sub_b.next(timeout=0.2) is None  # another job's subscriber saw nothing


async def test_a_full_queue_drops_that_subscriber_only(hub: Hub, events: Events) -> None:
    jid = job_id()
    stuck = hub.subscribe(jid, label="stuck")
    keen = hub.subscribe(jid, label="keen")
    got = []
    for n in range(6):
        await publish(events, jid, "progress", {"percent": n, "message": ""})
        with anyio.fail_after(WAIT_S):
            msg = await keen.next()
        got.append(msg["data"]["percent"] if msg else None)
    assert got == [0, 1, 2, 3, 4, 5]  # the stuck one never slowed this one down
    assert stuck.dropped.is_set() and stuck.reason is not None
    assert "too slow" in stuck.reason and "more than 3 messages" in stuck.reason
    with pytest.raises(Dropped):
        await stuck.next(timeout=1)
    stats = hub.stats()
    assert stats["dropped"] == 1 and stats["recent_drops"][-1]["client"] == "stuck"
    assert stats["subscribers"] == 1  # the dropped one is gone, the keen one stays


async def test_the_hub_resubscribes_after_losing_its_connection(
    hub: Hub, events: Events, settings: Settings
) -> None:
    jid = job_id()
    sub = hub.subscribe(jid)
    r = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    try:
        mine = [
            c
            for c in r.client_list()
            if c.get("name") == hub.client_name and int(c.get("sub", 0)) > 0
        ]
        assert len(mine) == 1  # the hub's one subscription
        r.client_kill_filter(_id=mine[0]["id"])
        with anyio.fail_after(WAIT_S):
            assert await sub.next() is RESYNC  # "you may have missed something"
        await publish(events, jid, "progress", {"percent": 1, "message": ""})
        with anyio.fail_after(WAIT_S):
            msg = await sub.next()
        assert msg is not None and msg["type"] == "progress"
    finally:
        r.close()


async def test_listeners_get_events_but_not_logs_unless_asked(hub: Hub, events: Events) -> None:
    jid = job_id()
    seen: list[str] = []
    done = anyio.Event()

    def nudge(msg: dict[str, Any]) -> None:
        if msg.get("job_id") != jid:
            return  # (another test's job on the same database, running meanwhile)
        seen.append(msg["type"])
        if msg["type"] == "created":
            done.set()

    remove = hub.listen(nudge)
    await append(events, jid, ["a line"])
    await publish(events, jid, "created", {})
    with anyio.fail_after(WAIT_S):
        await done.wait()
    assert seen == ["created"]
    remove()
    remove()  # harmless twice


async def test_read_logs_falls_back_to_the_file_once_the_buffer_rolled(
    hub: Hub, small_events: Events
) -> None:
    jid = job_id()
    await append(small_events, jid, [f"l{i}" for i in range(1, 51)])  # buffer keeps 10
    old = await hub.read_logs(jid, since=5, limit=100)
    assert [x["line"] for x in old] == [f"l{i}" for i in range(6, 51)]
    assert [x["seq"] for x in old] == list(range(6, 51))
    page = await hub.read_logs(jid, since=5, limit=7)
    assert [x["seq"] for x in page] == list(range(6, 13))
    live = await hub.read_logs(jid, since=45, limit=100)
    assert [x["seq"] for x in live] == [46, 47, 48, 49, 50]
    assert await hub.read_logs(jid, since=50) == []
    assert await hub.read_logs(job_id(), since=0) == []  # no such log anywhere


async def test_seq_at_finds_the_last_line_written_by_a_time(
    hub: Hub, small_events: Events, settings: Settings
) -> None:
    jid = job_id()
    for b in range(5):  # five batches of ten; each batch shares one time
        await append(small_events, jid, [f"l{b * 10 + i}" for i in range(1, 11)])
    lines = await hub.read_logs(jid, since=0, limit=100)
    assert [x["seq"] for x in lines] == list(range(1, 51))
    at = {n: datetime.fromisoformat(lines[n - 1]["ts"]) for n in (10, 30, 50)}
    assert at[10] < at[30] < at[50]
    first = datetime.fromisoformat(lines[0]["ts"])

    # Line 10 left the buffer (10 lines: 41..50): found in the whole-log file.
    assert await hub.seq_at(jid, at[10]) == 10
    assert await hub.seq_at(jid, at[50]) == 50  # in the buffer
    assert await hub.seq_at(jid, first - timedelta(microseconds=1)) == 0
    assert await hub.seq_at(jid, at[50] + timedelta(days=1)) == 50

    small_events.r.delete(job_logs_key(jid))  # the live buffer is gone: the file answers
    assert await hub.seq_at(jid, at[30]) == 30
    assert await hub.seq_at(job_id(), at[30]) == 0  # no log anywhere

    other = job_id()
    await append(small_events, other, [f"m{i}" for i in range(1, 21)])
    (settings.logs_dir / f"{other}.jsonl").unlink()  # no file: the buffer is all there is
    assert await hub.seq_at(other, first - timedelta(days=1)) == 10


async def collect(follower: JobFollower) -> list[tuple[str, dict[str, Any], Cursor]]:
    out = []
    with anyio.fail_after(WAIT_S):
        async for batch in follower.batches():
            out.extend(batch)
    return out


async def test_follower_merges_drains_and_ends_with_the_outcome_and_resumes_exactly(
    hub: Hub, events: Events
) -> None:
    jid = job_id()
    await publish(events, jid, "started", {"status": "running"})
    await append(events, jid, ["one", "two"])
    await publish(events, jid, "progress", {"percent": 50, "message": "half"})
    await append(events, jid, ["three"])
    await publish(events, jid, "succeeded", {"status": "succeeded"})
    # A line written after the outcome is still drained before it (never lost).
    await append(events, jid, ["late"])

    items = await collect(JobFollower(hub, hub.subscribe(jid), jid, Cursor()))
    shape = [(k, p.get("line") or p["type"]) for k, p, _ in items]
    assert shape == [
        ("event", "started"),
        ("log", "one"),
        ("log", "two"),
        ("event", "progress"),
        ("log", "three"),
        ("log", "late"),
        ("event", "succeeded"),
    ]
    cursors = [c.encode() for _, _, c in items]
    assert len(set(cursors)) == len(cursors)

    for k in range(len(items) - 1):  # (after the outcome the routes answer 204)
        cursor = Cursor.parse(items[k][2].encode())
        rest = await collect(JobFollower(hub, hub.subscribe(jid), jid, cursor))
        assert [c.encode() for _, _, c in rest] == cursors[k + 1 :], k


async def test_follower_wakes_on_live_messages(hub: Hub, events: Events) -> None:
    jid = job_id()
    sub = hub.subscribe(jid)
    follower = JobFollower(hub, sub, jid, Cursor(), emit_events=False, poll_s=30)
    got: list[str] = []
    arrived = [anyio.Event() for _ in range(5)]  # got[n] is here

    async def follow() -> None:
        async for batch in follower.batches():
            got.extend(p["line"] for _, p, _ in batch)
            for ev in arrived[: len(got)]:
                ev.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            # One line at a time, each once the last has come (with no wake-up it would
            # wait for the 30-s poll): the hub's queues hold 3 here, and a loaded machine
            # that ran the producer alone for six messages dropped the follower as too slow.
            for n in range(5):
                await append(events, jid, [f"live-{n}"])
                await arrived[n].wait()
            await publish(events, jid, "failed", {"status": "failed"})
    assert got == [f"live-{n}" for n in range(5)]
    assert follower.final is not None and follower.final["type"] == "failed"


def test_cursors_and_line_numbers_name_the_bad_field() -> None:
    assert Cursor.parse("1700000000000-3|42") == Cursor("1700000000000-3", 42)
    assert Cursor("5-0", 7).encode() == "5-0|7"
    for bad in ("", "garbage", "1-0", "1-0|x", "x|1", "1-0|-1"):
        with pytest.raises(ParamError) as err:
            Cursor.parse(bad, "Last-Event-ID")
        assert err.value.field == "Last-Event-ID"
    assert parse_seq("12") == 12
    with pytest.raises(ParamError) as err:
        parse_seq("-1")
    assert err.value.field == "since"
    assert parse_log_since("12") == 12
    noon = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert parse_log_since("2026-01-31T12:00:00Z") == noon
    assert parse_log_since("2026-01-31T12:00:00") == noon  # no zone: UTC
    assert parse_log_since("2026-01-31T13:00:00+01:00") == noon
    for bad in ("-1", "soon", "2026-02-30T00:00:00"):
        with pytest.raises(ParamError) as err:
            parse_log_since(bad)
        assert err.value.field == "since" and "ISO 8601" in str(err.value)


class CountingHub(Hub):
    """The real hub, counting its stream reads (to see which wake-ups cost a read)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    async def read_events(self, job_id: str, after: str, count: int = 1000) -> list[dict[str, Any]]:
        self.reads.append("events")
        return await super().read_events(job_id, after, count)

    async def read_logs(self, job_id: str, since: int = 0, limit: int = 1000) -> list[LogLine]:
        self.reads.append("logs")
        return await super().read_logs(job_id, since, limit)

    async def read_both(
        self, job_id: str, after: str, since: int, count: int = 1000, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], list[LogLine]]:
        self.reads.append("events+logs")  # (one snapshot: one round trip)
        return await super().read_both(job_id, after, since, count, limit)


@pytest.fixture
async def counting_hub(settings: Settings) -> AsyncIterator[CountingHub]:
    h = CountingHub(
        settings.effective_redis_url,
        logs_dir=settings.logs_dir,
        client_name=f"test-hub-{uuid.uuid4().hex[:8]}",
        max_connections=2,
    )
    await h.start()
    yield h
    await h.stop()


async def test_event_messages_name_the_previous_event_the_hub_saw(
    counting_hub: CountingHub, events: Events, settings: Settings
) -> None:
    hub, jid, other = counting_hub, job_id(), job_id()
    sub = hub.subscribe(jid, logs=False)
    ids = []
    for n in range(3):
        ev = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": n})
        ids.append(ev["id"])
        await publish(events, other, "progress", {})  # another job's events: its own chain
        await append(events, jid, [f"line {n}"])  # log lines are not links
    got: list[tuple[str, str | None]] = []
    with anyio.fail_after(WAIT_S):
        while len(got) < 3:
            msg = await sub.next()
            if msg is not None and msg["type"] == "progress":
                got.append((msg["id"], msg["prev"]))
    # The first one the hub saw has no known predecessor; then each names the one before.
    assert got == [(ids[0], None), (ids[1], ids[0]), (ids[2], ids[1])]

    # After a lost subscription the chain starts again: what was missed is unknown.
    r = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    try:
        mine = [
            c
            for c in r.client_list()
            if c.get("name") == hub.client_name and int(c.get("sub", 0)) > 0
        ]
        r.client_kill_filter(_id=mine[0]["id"])
        with anyio.fail_after(WAIT_S):
            assert await sub.next() is RESYNC
    finally:
        r.close()
    fourth = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 3})
    with anyio.fail_after(WAIT_S):
        msg = await sub.next()
    assert msg is not None and msg["id"] == fourth["id"] and msg["prev"] is None


async def test_a_follower_takes_chained_events_from_the_messages_without_reading(
    counting_hub: CountingHub, events: Events
) -> None:
    hub, jid = counting_hub, job_id()
    # Published before the client came, but the hub saw it: the chain starts here.
    await publish(events, jid, "started", {"status": "running"})
    sub = hub.subscribe(jid)
    follower = JobFollower(hub, sub, jid, Cursor(), poll_s=30)
    got: list[tuple[str, Any]] = []
    seen = {1: anyio.Event(), 2: anyio.Event(), 10: anyio.Event()}  # items so far -> event

    async def follow() -> None:
        async for batch in follower.batches():
            got.extend((k, p.get("line") or p["type"]) for k, p, _ in batch)
            for n, ev in seen.items():
                if len(got) >= n:
                    ev.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await seen[1].wait()
            assert hub.reads == ["events+logs"]  # the first look reads both streams
            del hub.reads[:]
            # From here each event names its predecessor and lines continue the cursor:
            # a live client costs no read at all, for events or for lines.
            await publish(events, jid, "progress", {"percent": 1, "message": "a"})
            await seen[2].wait()
            for n in range(2, 6):
                await append(events, jid, [f"line {n}"])
                await publish(events, jid, "progress", {"percent": n, "message": "b"})
            await seen[10].wait()
            assert hub.reads == []
            await publish(events, jid, "succeeded", {"status": "succeeded"})
    assert got == [
        ("event", "started"),
        ("event", "progress"),
        *[x for n in range(2, 6) for x in (("log", f"line {n}"), ("event", "progress"))],
        ("event", "succeeded"),
    ]
    assert hub.reads == ["logs"]  # the final drain of the log, once


async def test_a_follower_that_missed_a_message_reads_and_loses_nothing(
    counting_hub: CountingHub, events: Events
) -> None:
    hub, jid = counting_hub, job_id()
    real = hub.subscribe(jid)
    # The follower's subscriber gets what the hub delivers except the event with n == 1: the
    # next message names a predecessor the follower does not have.
    gappy = Subscriber(jid, logs=True, size=100, label="gappy")

    async def relay() -> None:
        while True:
            msg = await real.next()
            if msg is not None and (msg.get("data") or {}).get("n") != 1:
                gappy.queue.put_nowait(msg)

    first = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 0})
    follower = JobFollower(hub, gappy, jid, Cursor(), poll_s=30)
    items: list[dict[str, Any]] = []
    started, done = anyio.Event(), anyio.Event()

    async def follow() -> None:
        async for batch in follower.batches():
            items.extend(p for _, p, _ in batch)
            started.set()
        done.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            tg.start_soon(follow)
            await started.wait()  # it has read event 0
            reads = len(hub.reads)
            ids = [first["id"]]
            for n in range(1, 4):
                ev = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": n})
                ids.append(ev["id"])
            await publish(events, jid, "failed", {"status": "failed"})
            await done.wait()
            tg.cancel_scope.cancel()  # (the relay)
    assert follower.final is not None and follower.final["type"] == "failed"
    assert [p["id"] for p in items] == [*ids, follower.final["id"]]
    assert [p["data"].get("n") for p in items[:-1]] == [0, 1, 2, 3]
    assert {"events", "events+logs"} & set(hub.reads[reads:])  # the gap, filled from the stream
