"""The fan-out's steady state: a live client costs a queue put and a write, no stream read.

Seeded chains (the first event a client sees needs no read), the firehose taken from the
messages, the subscriber's timed wait, the SSE response's HEAD answer and its stuck-client
watchdog, and the streams bench's wire parsers (so the bench measures the API, not itself).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from api.fanout import Subscriber, _head_of
from api.follower import Cursor, JobFollower
from api.routes.firehose import _Filter, _follow, _Tail
from api.sse import HubEventSource
from bench.wire import SSEClient, _resp_array
from orchestrator.events import EVENTS_CHANNEL, FIREHOSE_STREAM, Events
from orchestrator.job import Job, utcnow
from orchestrator.settings import Settings
from tests.api.test_fanout import CountingHub, append, job_id, publish

pytestmark = pytest.mark.anyio
WAIT_S = 10


@pytest.fixture
async def counting_hub(settings: Settings) -> AsyncIterator[CountingHub]:
    h = CountingHub(
        settings.effective_redis_url,
        logs_dir=settings.logs_dir,
        client_name=f"test-hub-{uuid.uuid4().hex[:8]}",
        send_timeout_s=0.4,
    )
    await h.start()
    yield h
    await h.stop()


async def test_a_seeded_chain_lets_a_jobs_first_events_skip_the_read(
    counting_hub: CountingHub, events: Events
) -> None:
    hub, jid = counting_hub, job_id()
    sub = hub.subscribe(jid)
    epoch = hub.epoch
    last = await hub.last_event_id(jid)  # a fresh job: no event yet
    hub.seed(epoch, jid, last)
    follower = JobFollower(hub, sub, jid, Cursor(), poll_s=30)
    got: list[str] = []
    seen = {1: anyio.Event(), 4: anyio.Event()}

    async def follow() -> None:
        async for batch in follower.batches():
            got.extend(p.get("line") or p["type"] for _, p, _ in batch)
            for n, ev in seen.items():
                if len(got) >= n:
                    ev.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()
            assert hub.reads == ["events+logs"]  # the first look, on connecting
            del hub.reads[:]
            await publish(events, jid, "started", {"status": "running"})  # the very first
            await seen[1].wait()
            await append(events, jid, ["one"])
            await publish(events, jid, "progress", {"percent": 50})
            await append(events, jid, ["two"])
            await seen[4].wait()
            assert hub.reads == []  # 1,000 clients of a new job: not 2,000 reads at once
            await publish(events, jid, "succeeded", {"status": "succeeded"})
    assert got == ["started", "one", "progress", "two", "succeeded"]


async def test_a_seed_is_kept_only_while_nothing_newer_or_lost_is_known(
    counting_hub: CountingHub, events: Events
) -> None:
    hub, jid = counting_hub, job_id()
    sub = hub.subscribe(jid, logs=False)
    first = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 0})
    # A read that saw the event before its message reached the hub: the seed is that
    # event, and its message, when it comes, is not taken as the next.
    hub.seed(hub.epoch, jid, first["id"])
    with anyio.fail_after(WAIT_S):
        msg = await sub.next()
    assert msg is not None and msg["id"] == first["id"] and msg["prev"] is None
    second = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 1})
    with anyio.fail_after(WAIT_S):
        msg = await sub.next()
    assert msg is not None and msg["id"] == second["id"] and msg["prev"] == first["id"]
    # An older read, or one from before a resubscription, changes nothing.
    hub.seed(hub.epoch, jid, first["id"])
    hub.seed(hub.epoch - 1, job_id(), None)
    third = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 2})
    with anyio.fail_after(WAIT_S):
        msg = await sub.next()
    assert msg is not None and msg["id"] == third["id"] and msg["prev"] == second["id"]


async def test_the_firehose_takes_chained_events_from_the_messages(
    counting_hub: CountingHub, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, jid = counting_hub, job_id()
    reads: list[Any] = []
    real_xrange = hub.redis.xrange

    async def xrange(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("min"))
        return await real_xrange(*args, **kwargs)

    monkeypatch.setattr(hub.redis, "xrange", xrange)
    sub = hub.subscribe(None, logs=False, label="sse firehose")
    epoch = hub.epoch
    last = await hub.redis.xrevrange(FIREHOSE_STREAM, count=1)
    hub.seed(epoch, None, last[0][0] if last else None)
    cursor = last[0][0] if last else "0-0"
    keep = _Filter(None, {}, set(), set())  # type: ignore[arg-type]
    stream = _follow(hub, sub, _Tail(cursor, keep), poll_s=30)
    frames: list[dict[str, Any]] = []

    async def take(n: int) -> None:
        while sum(f["job_id"] == jid for f in frames) < n:
            chunk = await stream.__anext__()
            for block in chunk.decode().split("\r\n\r\n"):
                data = [ln[6:] for ln in block.split("\r\n") if ln.startswith("data: ")]
                if data and block.startswith("id: "):
                    frames.append({"gid": block[4:].split("\r\n")[0], **json.loads(data[0])})

    with anyio.fail_after(WAIT_S):
        first = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 0})
        await take(1)
        reads_at_start = len(reads)  # the gap check and the first page
        sent = [first["id"]]
        for n in range(1, 5):
            sent.append(
                (await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": n}))["id"]
            )
        await take(5)
    await stream.aclose()  # type: ignore[attr-defined]  # (an async generator)
    mine = [f for f in frames if f["job_id"] == jid]
    assert [f["id"] for f in mine] == sent
    assert [f["data"]["n"] for f in mine] == [0, 1, 2, 3, 4]
    assert len(reads) == reads_at_start  # no read per event, per client
    gids = [f["gid"] for f in frames]
    assert gids == sorted(gids, key=lambda g: tuple(map(int, g.split("-"))))


async def test_the_timed_wait_ends_with_none_or_the_next_message() -> None:
    sub = Subscriber("j", logs=True, size=10, label="t")
    assert await sub.next(0.01) is None
    assert await sub.next(0.01) is None  # (the one timer is re-armed)

    async def later() -> None:
        await anyio.wait_all_tasks_blocked()
        sub.queue.put_nowait({"type": "progress", "n": 1})

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        with anyio.fail_after(WAIT_S):
            msg = await sub.next(60)
    assert msg == {"type": "progress", "n": 1}


async def _one_chunk() -> AsyncIterator[bytes]:
    yield b"event: log\r\ndata: {}\r\n\r\n"
    await anyio.sleep_forever()


async def test_head_gets_the_sse_headers_and_no_stream(counting_hub: CountingHub) -> None:
    sub = counting_hub.subscribe("j", label="sse test")
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        await anyio.sleep_forever()

    resp = HubEventSource(_one_chunk(), hub=counting_hub, sub=sub, ping=60)
    with anyio.fail_after(WAIT_S):
        await resp({"type": "http", "method": "HEAD"}, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-store"
    assert sent[1]["body"] == b""
    assert counting_hub.stats()["subscribers"] == 0


async def test_a_write_that_never_completes_is_dropped_by_the_watchdog(
    counting_hub: CountingHub,
) -> None:
    sub = counting_hub.subscribe("j", label="sse stuck")
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()  # the socket takes no data

    async def receive() -> Any:
        await anyio.sleep_forever()

    resp = HubEventSource(_one_chunk(), hub=counting_hub, sub=sub, ping=60)
    with anyio.fail_after(WAIT_S):
        await resp({"type": "http", "method": "GET"}, receive, send)
    assert sub.stuck and sub.reason is not None and "took no data" in sub.reason
    assert len(sent) == 2  # the headers and the write that stuck: no farewell after it
    assert counting_hub.stats()["subscribers"] == 0


# ---------------------------------------------------------------------- bench/wire


def test_the_bench_sse_client_parses_chunked_events_split_anywhere() -> None:
    body = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(c), c)
            for c in (
                b'id: 1\r\nevent: log\r\ndata: {"line": "1 5.0"}\r\n\r\n: ping\r\n\r\n',
                b'id: 2\r\nevent: log\r\ndata: {"line": "2 6.0"}\r\n\r\nevent: com',
                b"plete\r\ndata: {}\r\n\r\n",
            )
        )
        + b"0\r\n\r\n"
    )
    wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + body

    class Transport:
        closed = False

        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    async def run(step: int) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        client = SSEClient("/x", lambda e, d: got.append((e, d)))
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        for at in range(0, len(wire), step):
            client.data_received(wire[at : at + step])
        assert transport.closed and await client.status == 200
        return got

    for step in (1, 7, len(wire)):
        got = asyncio.run(run(step))
        assert got == [
            ("log", '{"line": "1 5.0"}'),
            ("log", '{"line": "2 6.0"}'),
            ("complete", "{}"),
        ]


def test_the_bench_pubsub_client_parses_resp_pushes() -> None:
    msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    sub = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    assert _resp_array(sub + msg, 0) == ([b"subscribe", b"ch", b"1"], len(sub))
    assert _resp_array(sub + msg, len(sub)) == ([b"message", b"ch", b"hello"], len(sub + msg))
    assert _resp_array(msg[:-3], 0) == (None, 0)  # not all here yet


async def test_a_message_nobody_follows_is_not_decoded_but_still_chains(
    counting_hub: CountingHub, events: Events
) -> None:
    # The listeners (metrics, agents' long polls) get the head; a follower gets it all;
    # and the chain the hub keeps (``prev``) goes on through the heads.
    hub, jid = counting_hub, job_id()
    heard: list[dict[str, Any]] = []
    got = anyio.Event()

    def listener(msg: dict[str, Any]) -> None:
        if msg.get("job_id") == jid:
            heard.append(msg)
            got.set()

    unlisten = hub.listen(listener, logs=True)
    try:
        first = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 0})
        with anyio.fail_after(WAIT_S):
            await got.wait()
        assert heard[0]["id"] == first["id"] and "data" not in heard[0]  # the head only
        got = anyio.Event()
        await append(events, jid, ["a line"])
        with anyio.fail_after(WAIT_S):
            await got.wait()
        assert heard[-1]["type"] == "log" and "data" not in heard[-1]
        sub = hub.subscribe(jid)  # now somebody follows it: decoded whole
        second = await anyio.to_thread.run_sync(events.publish, jid, "progress", {"n": 1})
        with anyio.fail_after(WAIT_S):
            msg = await sub.next()
        assert msg is not None and msg["data"] == {"n": 1}
        assert msg["prev"] == first["id"]  # (chained through the undecoded one)
        assert heard[-1]["id"] == second["id"] and heard[-1]["data"] == {"n": 1}
        hub.unsubscribe(sub)
    finally:
        unlisten()


async def test_the_heads_read_without_decoding_are_the_messages_own(
    settings: Settings, events: Events
) -> None:
    # (api/fanout.py reads the heads of what orchestrator/events.py publishes)
    jid = job_id()
    pubsub = events.r.pubsub()
    pubsub.subscribe(EVENTS_CHANNEL)
    try:
        subscribed = pubsub.get_message(timeout=WAIT_S)
        assert subscribed is not None and subscribed["type"] == "subscribe"
        await anyio.to_thread.run_sync(events.publish, jid, "succeeded", {"id": jid, "x": [1]})
        await append(events, jid, ["one", "two"])
        raw: list[str] = []
        while len(raw) < 2:
            m = pubsub.get_message(timeout=WAIT_S)
            assert m is not None, "a message did not come"
            if m["type"] == "message" and json.loads(m["data"])["job_id"] == jid:
                raw.append(m["data"])
    finally:
        pubsub.close()
    for data in raw:
        head, whole = _head_of(data), json.loads(data)
        assert head is not None, data[:200]
        assert head == {k: whole[k] for k in head}
    assert [json.loads(d)["type"] for d in raw] == ["succeeded", "log"]


def _ended_job(jid: str, ago_s: float) -> Job:
    now = utcnow()
    return Job.model_validate(
        {
            "id": jid,
            "spec": {"executor": "builtin", "type": "fibonacci", "params": {"count": 1}},
            "status": "succeeded",
            "created_at": now - timedelta(seconds=ago_s + 1),
            "finished_at": now - timedelta(seconds=ago_s),
        }
    )


async def _follow_to_the_end(follower: JobFollower, got: list[Any]) -> None:
    async for batch in follower.batches():
        got.extend(batch)


async def _after_started(
    hub: CountingHub, events: Events, ended_ago_s: float
) -> tuple[Subscriber, str, JobFollower]:
    """A job that started, a follower at that event, told by the store that the job
    ended ``ended_ago_s`` ago: its subscription, the started event's id, the follower."""
    jid = job_id()
    await publish(events, jid, "started", {"status": "running"})
    sub = hub.subscribe(jid)
    started = await hub.last_event_id(jid)
    assert started is not None
    ended = _ended_job(jid, ended_ago_s)
    return sub, started, JobFollower(hub, sub, jid, Cursor(started, 0), ended=ended)


async def test_an_end_the_store_shows_first_is_told_by_its_own_event(
    counting_hub: CountingHub, events: Events
) -> None:
    """The store says ended before the end's event is in the stream (it is published just
    after the commit): the follower waits for that event, so the last item's cursor is
    its id and a client resuming from there is told 204, not sent the end again."""
    sub, started, follower = await _after_started(counting_hub, events, 0)
    got: list[Any] = []
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow_to_the_end, follower, got)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # (waiting for the end's event, not telling it from the row)
            await publish(events, follower.job_id, "succeeded", {"status": "succeeded"})
    counting_hub.unsubscribe(sub)
    ended = await counting_hub.last_event_id(follower.job_id)
    assert [(kind, p["type"]) for kind, p, _ in got] == [("event", "succeeded")]
    assert ended is not None and ended != started
    assert got[-1][2] == Cursor(ended, 0)


async def test_a_long_ended_job_without_its_end_event_ends_at_once(
    counting_hub: CountingHub, events: Events
) -> None:
    """Its end's event was lost (or trimmed): the row tells the end, with no wait."""
    sub, started, follower = await _after_started(counting_hub, events, 3600)
    got: list[Any] = []
    with anyio.fail_after(1.5):  # (less than the grace a just-ended job gets)
        await _follow_to_the_end(follower, got)
    counting_hub.unsubscribe(sub)
    assert [(kind, p["type"], c) for kind, p, c in got] == [
        ("event", "succeeded", Cursor(started, 0))
    ]
