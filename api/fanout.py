"""The per-process fan-out hub: one Redis subscription, many live clients.

Each API process holds ONE pub/sub subscription to ``lb:events`` and hands every message to
the in-process subscribers that want it (one job, or every job). A subscriber owns a bounded
``asyncio.Queue``; when it is full the subscriber is dropped with a reason instead of ever
making the hub (and so every other client) wait.

Pub/sub is only a wake-up. The Redis streams are the truth: after a wake-up a client reads
its job's streams from its own cursor (XRANGE with an exclusive start), so nothing is lost
or repeated and the order is exactly the stream's, even when pub/sub drops a message or two
publishers race. :class:`api.follower.JobFollower` implements that loop for one job, on
top of the hub's stream reads (``read_both``: one snapshot of both streams, cut where
both are known; ``read_logs`` for the log's drain after the job's end).

Two things keep that cheap with many clients:

* Stream reads share a small bounded pool (``BlockingConnectionPool``): a burst of clients
  waits its turn for a connection instead of failing, and the process's Redis connections
  stay few whatever the number of clients.
* Each event message gets ``prev``: the stream id of the job's previous event, as this hub
  saw it on its subscription (None when it does not know), and ``gprev``: the firehose's
  previous entry, likewise. Events are appended and published in one Lua script, so the
  channel's order is the streams' order; while the subscription lasts, ``prev`` is exactly
  the entry before. A follower whose cursor equals ``prev`` takes the event from the
  message and skips the read. A client that reads a stream's last id after subscribing
  tells the hub (:meth:`Hub.seed`), so even a job's first event, or the first after the
  hub started, needs no read: 1,000 clients would otherwise all read at once.
* A client parked at the live edge takes a message that continues its cursor on the
  hub's task, written straight to its connection (``Subscriber.live``, api/wire.py):
  no wake-up of its own task, no pass through the middleware (28 → 9-14 µs of CPU per
  client per message at 1,000 clients). Anything else queues, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aredis

from orchestrator.events import (
    EVENTS_CHANNEL,
    LogLine,
    decode_event,
    decode_log,
    job_events_key,
    job_logs_key,
)
from orchestrator.job import EventType, as_utc

log = logging.getLogger(__name__)

RESYNC: dict[str, Any] = {"type": EventType.resync}  # "you may have missed something: re-read"
_DROP: dict[str, Any] = {"type": "drop"}
_RETRY_MAX_S = 5.0
_TIMER_SLACK_S = 0.001  # (a loop timer may ring up to its clock resolution early)
_CHAIN_JOBS = 10000  # jobs whose last event id the hub remembers (least recently seen go)
_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


class Dropped(Exception):
    """The subscriber fell too far behind and was disconnected; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Queue(asyncio.Queue[dict[str, Any]]):
    """An ``asyncio.Queue`` whose puts also wake :meth:`Subscriber.next`'s timed wait."""

    waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: dict[str, Any]) -> None:
        super().put_nowait(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Subscriber:
    """One live client's view of the hub: a bounded queue of messages."""

    def __init__(self, job_id: str | None, *, logs: bool, size: int, label: str) -> None:
        self.job_id = job_id
        self.logs = logs
        self.label = label
        self.queue: _Queue = _Queue(maxsize=size)
        self._timer: asyncio.TimerHandle | None = None  # rings at ``_timer_at`` (loop time)
        self._timer_at = 0.0
        self.reason: str | None = None
        self.stuck = False  # dropped because its socket took no data: no farewell fits
        self.dropped = asyncio.Event()
        # When the write to its socket in progress began (loop time), None when idle: the
        # hub's watchdog drops a client stuck past ``send_timeout_s`` (one timer for all,
        # not one per write).
        self.sending_since: float | None = None
        # The live lane (api/wire.py): while its follower is parked at the live edge, a
        # callable that takes a message at once (writes it, moves the cursor on) and says
        # True, or says False and leaves it to the queue. ``live_at``: its last take (loop
        # time), which puts the follower's quiet-poll deadline off as a message would.
        self.live: Callable[[dict[str, Any]], bool] | None = None
        self.live_at = -math.inf

    async def next(
        self, timeout: float | None = None, live: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds; raises :class:`Dropped`.
        ``live``: the caller's live lane (``Subscriber.live``) while it waits."""
        queue = self.queue
        if not queue.empty():
            msg = queue.get_nowait()
        else:
            self.live = live
            try:
                if timeout is None:
                    msg = await queue.get()
                elif await self._wait(timeout):
                    msg = queue.get_nowait()
                else:
                    return None
            finally:
                self.live = None
        if msg is _DROP:
            raise Dropped(self.reason or "dropped")
        return msg

    async def _wait(self, timeout: float) -> bool:
        """Until the queue has a message (True) or ``timeout`` seconds passed (False).

        Not ``asyncio.wait_for`` or ``asyncio.timeout``: a task or a timer per wait, per
        client, cost more than the rest of a delivery. The one timer here rings at the
        oldest deadline and is re-armed then if the wait it was for has ended: once per
        ``timeout`` at most, however many messages come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue = self.queue
        while queue.empty():
            deadline = max(deadline, self.live_at + timeout)
            if loop.time() >= deadline - _TIMER_SLACK_S:
                return False
            if self._timer is None or self._timer_at > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = deadline
                self._timer = loop.call_at(deadline, self._ring)
            queue.waiter = loop.create_future()
            try:
                await queue.waiter
            finally:
                queue.waiter = None
        return True

    def _ring(self) -> None:
        self._timer = None
        waiter = self.queue.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> list[dict[str, Any]]:
        """Everything already queued, without waiting (coalesces a burst into one read)."""
        out = []
        while not self.queue.empty():
            msg = self.queue.get_nowait()
            if msg is _DROP:
                raise Dropped(self.reason or "dropped")
            out.append(msg)
        return out

    def _drop(self, reason: str) -> None:
        self.reason = reason
        self.live = None
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_DROP)
        self.dropped.set()


class Hub:
    """The process's single subscription to ``lb:events`` and its subscribers."""

    def __init__(
        self,
        redis_url: str,
        *,
        logs_dir: Path,
        queue_size: int = 1000,
        client_name: str = "launchbay-fanout",
        max_connections: int = 16,
        pool_wait_s: float = 30.0,
        send_timeout_s: float = 10.0,
    ) -> None:
        self.redis_url = redis_url
        self.logs_dir = logs_dir
        self.queue_size = queue_size
        self.send_timeout_s = send_timeout_s
        self.client_name = client_name
        self.max_connections = max_connections
        self.pool_wait_s = pool_wait_s
        self.r: aredis.Redis | None = None
        self._sub_r: aredis.Redis | None = None
        self._pool: aredis.BlockingConnectionPool | None = None
        # job id -> stream id of the last event seen on the subscription (see ``prev``).
        self._last_event: OrderedDict[str, str] = OrderedDict()
        self._last_gid: str | None = None  # the firehose's last entry seen (``gprev``)
        # Bumped at each (re)subscription: what a client read before it may be stale.
        self.epoch = 0
        self._live = False
        self._watchdog: asyncio.Task[None] | None = None
        self._by_job: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self._listeners: list[tuple[Callable[[dict[str, Any]], None], bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.received = 0
        self.live_deliveries = 0  # messages the live lane wrote (api/wire.py)
        self.dropped = 0
        self.dropped_by_kind: dict[str, int] = {}
        # How SSE answers ended (api/sse.py): "complete" (the job's end sent), "left" (the
        # client disconnected), "dropped", "shutdown", "error".
        self.ended: dict[str, int] = {}
        self.recent_drops: deque[dict[str, Any]] = deque(maxlen=20)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, ready_timeout: float = 5.0) -> None:
        """Connect and subscribe; a Redis that is down now is retried in the background."""
        # Named, so CLIENT LIST shows which connection is whose. Stream reads queue for one
        # of a few connections (the default pool raises past its max instead of waiting).
        self._pool = aredis.BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.max_connections,
            timeout=self.pool_wait_s,
            decode_responses=True,
            client_name=self.client_name,
        )
        self.r = aredis.Redis(connection_pool=self._pool)
        # The subscription has a connection of its own: it never waits behind reads.
        self._sub_r = aredis.Redis.from_url(
            self.redis_url, decode_responses=True, client_name=self.client_name
        )
        self._task = asyncio.create_task(self._run(), name="launchbay-fanout")
        self._watchdog = asyncio.create_task(self._watch_sends(), name="launchbay-fanout-sends")
        with anyio.move_on_after(ready_timeout):
            await self._subscribed.wait()

    async def stop(self) -> None:
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watchdog = None
        self._live = False
        for sub in list(self._all) + [s for subs in self._by_job.values() for s in subs]:
            sub._drop("the server is shutting down")
        self._by_job.clear()
        self._all.clear()
        self._last_event.clear()
        for client in (self.r, self._sub_r):
            if client is not None:
                await client.aclose()  # type: ignore[attr-defined]  # (stubs predate aclose)
        self.r = self._sub_r = None
        if self._pool is not None:
            await self._pool.disconnect()  # (a pool passed in is not closed by its client)
            self._pool = None

    @property
    def redis(self) -> aredis.Redis:
        if self.r is None:
            raise RuntimeError("the fan-out hub is not started")
        return self.r

    async def _run(self) -> None:
        delay = 0.1
        first = True
        assert self._sub_r is not None
        while True:
            pubsub = self._sub_r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                # Whatever was published while we were away broke every job's chain.
                self._last_event.clear()
                self._last_gid = None
                self.epoch += 1
                self._live = True
                self._subscribed.set()
                if not first:
                    # Messages published while we were away are gone: make everyone re-read.
                    self._broadcast(RESYNC)
                first, delay = False, 0.1
                async for raw in pubsub.listen():
                    if raw.get("type") == "message":
                        self._deliver(raw["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._live = False
                log.warning("fan-out subscription lost (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
            finally:
                self._live = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[attr-defined]

    async def _watch_sends(self) -> None:
        """Drop every client whose socket has taken no data for ``send_timeout_s``."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self.send_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            late = loop.time() - self.send_timeout_s
            for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
                since = sub.sending_since
                if since is not None and since <= late:
                    self.drop(sub, self.stuck_reason(), stuck=True)

    # ------------------------------------------------------------------ subscribers

    def subscribe(
        self, job_id: str | None = None, *, logs: bool = True, label: str = "client"
    ) -> Subscriber:
        """A new subscriber to one job's messages, or every job's when ``job_id`` is None.

        Subscribe BEFORE reading the streams, so nothing published in between is missed.
        """
        sub = Subscriber(job_id, logs=logs, size=self.queue_size, label=label)
        if job_id is None:
            self._all.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Idempotent."""
        if sub.job_id is None:
            self._all.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    def listen(
        self, callback: Callable[[dict[str, Any]], None], *, logs: bool = False
    ) -> Callable[[], None]:
        """Call ``callback(message)`` for every message (and RESYNC after a reconnect).

        For in-process consumers that only need a nudge (e.g. waking long polls): the
        callback runs in the hub's task, so it must be quick and must not block. It may
        be given only the message's head (``job_id``, ``type``, ``ts``; an event's ``id``
        and ``gid``), without its ``data``: a message no client follows is not decoded.
        Returns a function that removes it.
        """
        entry = (callback, logs)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def clients_by_kind(self) -> dict[str, int]:
        """Live subscribers by transport (the first word of their label: sse, ws)."""
        out: dict[str, int] = {}
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            kind = sub.label.split(" ", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "subscribed": self._subscribed.is_set() and self._task is not None,
            "subscribers": len(self._all) + sum(len(s) for s in self._by_job.values()),
            "queue_size": self.queue_size,
            "received": self.received,
            "live": self.live_deliveries,
            "dropped": self.dropped,
            "ended": dict(self.ended),
            "recent_drops": list(self.recent_drops),
        }

    def _deliver(self, data: str) -> None:
        head = _head_of(data)
        if head is not None and not self._all and not self._by_job.get(head["job_id"]):
            # Nobody follows this job: its head is all the chain and the listeners need
            # (a job's events carry the whole job: decoding each cost the API ~7 µs).
            msg, job_id = head, head["job_id"]
        else:
            try:
                msg = json.loads(data)
                job_id = msg["job_id"]
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed message on %s", EVENTS_CHANNEL)
                return
        self.received += 1
        is_log = msg.get("type") == EventType.log
        if not is_log:
            self._chain(job_id, msg)
        self._call_listeners(msg, is_log)
        for sub in [*self._by_job.get(job_id, ()), *self._all]:
            if is_log and not sub.logs:
                continue
            self._offer(sub, msg)

    def _chain(self, job_id: str, msg: dict[str, Any]) -> None:
        """Attach ``prev`` (the job's previous event id, None if unknown) and ``gprev``
        (the firehose's previous entry, None if unknown) to an event."""
        gid, last_gid = msg.get("gid"), self._last_gid
        if not isinstance(gid, str) or not _ID.match(gid):
            msg["gprev"] = self._last_gid = None
        elif last_gid is not None and _id_key(gid) <= _id_key(last_gid):
            msg["gprev"] = None  # (a seed had it already: see ``seed``)
        else:
            msg["gprev"], self._last_gid = last_gid, gid
        eid = msg.get("id")
        if not isinstance(eid, str) or not _ID.match(eid):
            msg["prev"] = None
            self._last_event.pop(job_id, None)  # (not one of ours: the chain is unsure now)
            return
        prev = self._last_event.pop(job_id, None)
        if prev is not None and _id_key(eid) <= _id_key(prev):
            # Read by a client's seed before its message got here: the head stays.
            msg["prev"], eid = None, prev
        else:
            msg["prev"] = prev
        self._last_event[job_id] = eid  # (re)inserted last: the most recently seen
        if len(self._last_event) > _CHAIN_JOBS:
            self._last_event.popitem(last=False)

    def seed(self, epoch: int, job_id: str | None, last_id: str | None) -> None:
        """What a client read after subscribing: ``last_id``, the last entry of ``job_id``'s
        event stream (of the firehose when ``job_id`` is None; None: the stream is empty).

        ``epoch`` is :attr:`epoch` as it was before the read. Kept only while the hub knows
        nothing newer and has held its subscription since: every later event's message then
        comes after it, so the next event's ``prev`` is ``last_id``. (A message for an entry
        the read already saw may still arrive: it is not taken as the next.)
        """
        if epoch != self.epoch or not self._live:
            return
        last = last_id or "0-0"
        if job_id is None:
            if self._last_gid is None:
                self._last_gid = last
        elif job_id not in self._last_event:
            self._last_event[job_id] = last
            if len(self._last_event) > _CHAIN_JOBS:
                self._last_event.popitem(last=False)

    def _call_listeners(self, msg: dict[str, Any], is_log: bool) -> None:
        for callback, logs in list(self._listeners):
            if is_log and not logs:
                continue
            try:
                callback(msg)
            except Exception:
                log.exception("fan-out listener failed")

    def _broadcast(self, msg: dict[str, Any]) -> None:
        self._call_listeners(msg, False)
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            self._offer(sub, msg)

    def _offer(self, sub: Subscriber, msg: dict[str, Any]) -> None:
        live = sub.live
        if live is not None and sub.queue.empty():  # (else it would pass queued ones)
            try:
                if live(msg):
                    sub.live_at = time.monotonic()  # (the loop's clock, or within ms)
                    self.live_deliveries += 1
                    return
            except Exception:  # the usual path then, for this client from now on
                log.exception("the live lane failed for %s (job %s)", sub.label, sub.job_id)
                sub.live = None
        try:
            sub.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.drop(
                sub,
                f"too slow: more than {self.queue_size} messages waiting; "
                "reconnect with your last event id to resume",
            )

    def drop(self, sub: Subscriber, reason: str, *, stuck: bool = False) -> None:
        """Disconnect ``sub`` with ``reason``, counted in :meth:`stats`; idempotent.
        ``stuck``: its socket took no data for ``send_timeout_s`` (nothing more is sent)."""
        if sub.reason is not None:
            return
        self.unsubscribe(sub)
        sub.stuck = stuck
        sub._drop(reason)
        self.dropped += 1
        kind = sub.label.split(" ", 1)[0]
        self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1
        self.recent_drops.append(
            {"client": sub.label, "job_id": sub.job_id, "reason": reason, "at": time.time()}
        )
        log.warning("dropped %s (job %s): %s", sub.label, sub.job_id, reason)

    def count_end(self, how: str) -> None:
        """One SSE answer ended ``how`` (see ``ended``)."""
        self.ended[how] = self.ended.get(how, 0) + 1

    def stuck_reason(self) -> str:
        return (
            f"too slow: the connection took no data for {self.send_timeout_s:g} s; "
            "reconnect with your last event id to resume"
        )

    # ------------------------------------------------------------------ stream reads

    async def last_event_id(self, job_id: str) -> str | None:
        last = await self.redis.xrevrange(job_events_key(job_id), count=1)
        return last[0][0] if last else None

    async def read_events(self, job_id: str, after: str, count: int = 1000) -> list[dict[str, Any]]:
        """Events strictly after stream id ``after`` ("0-0" for all)."""
        entries = await self.redis.xrange(
            job_events_key(job_id), min=f"({after}", max="+", count=count
        )
        return [decode_event(job_id, eid, f) for eid, f in entries]

    async def read_both(
        self, job_id: str, after: str, since: int, count: int = 1000, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], list[LogLine]]:
        """:meth:`read_events` and :meth:`read_logs` as one snapshot (MULTI/EXEC): an event
        and the lines written with it (one script call writes both) are both in it or both
        not. Two reads let such a call land between them, and a follower then had the lines
        without the event written before them, and sent them out of order.

        What comes back is where both streams are known, so that the two lists merged by
        time stamp (``JobFollower._merge``) are exactly the first items after the cursors,
        as a replay from there has them:

        * only lines the snapshot held: the whole-log file (read when the live buffer
          rolled past ``since``, after the snapshot) may already hold lines written since,
          with events the snapshot does not have (a job with no line in Redis yet has none
          to take from the file: its first lines are written to Redis first);
        * a full page of lines (``limit``) keeps back the events that come after the next
          line; a full page of events (``count``) keeps back the lines after its last
          event. What is kept back comes with the next read (a full page is read on at
          once)."""
        ekey, lkey = job_events_key(job_id), job_logs_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(ekey, min=f"({after}", max="+", count=count)
            # (one line more than a page: the first one not sent, to know where to stop)
            pipe.xrange(lkey, min=f"({since}-0", max="+", count=limit + 1)
            pipe.xrevrange(lkey, count=1)
            events, entries, top = await pipe.execute()
        evs = [decode_event(job_id, eid, f) for eid, f in events]
        last = _entry_seq(top[0][0]) if top else 0  # the snapshot's last line (0: none)
        lines = _from_buffer(entries, since)
        if lines is None:
            lines = []
            if last > since:
                # The live buffer rolled past ``since``: the older lines are in the whole-log
                # file, which only ever grows at its end (and is written just after Redis:
                # the buffer's own lines may not be in it yet).
                lines = await self._read_log_file(job_id, since, min(limit + 1, last - since))
                upto = lines[-1]["seq"] if lines else since
                if entries and _entry_seq(entries[0][0]) <= upto + 1:
                    rest = [decode_log(eid, f) for eid, f in entries if _entry_seq(eid) > upto]
                    lines += rest[: limit + 1 - len(lines)]
        return _consistent(evs, lines, count, limit, last)

    async def first_buffered_seq(self, job_id: str) -> int | None:
        first = await self.redis.xrange(job_logs_key(job_id), count=1)
        return int(first[0][0].split("-", 1)[0]) if first else None

    async def seq_at(self, job_id: str, when: datetime) -> int:
        """The number of the last log line written at or before ``when`` (0: none).

        Lines are numbered in the order they were written, so their times never go back and
        the search stops at the first line after ``when``: in the live buffer when it begins
        at or before ``when``, else in one pass over the whole-log file.
        """
        key = job_logs_key(job_id)
        first = await self.redis.xrange(key, count=1)
        first_seq = int(first[0][0].split("-", 1)[0]) if first else 0
        if first_seq and (first_seq == 1 or _line_time(first[0][1]["ts"]) <= when):
            since = first_seq - 1
            while entries := await self.redis.xrange(key, min=f"({since}-0", max="+", count=1000):
                for eid, fields in entries:
                    if _line_time(fields["ts"]) > when:
                        return int(eid.split("-", 1)[0]) - 1
                since = int(entries[-1][0].split("-", 1)[0])
            return since
        path = self.logs_dir / f"{job_id}.jsonl"
        found = await anyio.to_thread.run_sync(_seq_at_in_file, path, when)
        if found is None:  # no file: the buffer is all there is, and it is all later
            return max(first_seq - 1, 0)
        return found

    async def read_logs(self, job_id: str, since: int = 0, limit: int = 1000) -> list[LogLine]:
        """Log lines after ``since``: from the live buffer, else from the whole-log file.

        The file is only read when the buffer rolled past ``since`` or is gone; an empty
        answer from a live buffer means "nothing new" and costs one XRANGE.
        """
        key = job_logs_key(job_id)
        entries = await self.redis.xrange(key, min=f"({since}-0", max="+", count=limit)
        lines = _from_buffer(entries, since)
        if lines is not None:
            return lines
        if not entries and await self.redis.exists(key):
            return []
        return await self._read_log_file(job_id, since, limit)

    async def _read_log_file(self, job_id: str, since: int, limit: int) -> list[LogLine]:
        path = self.logs_dir / f"{job_id}.jsonl"
        return await anyio.to_thread.run_sync(_read_log_file, path, since, limit)


def _consistent(
    evs: list[dict[str, Any]], lines: list[LogLine], count: int, limit: int, last: int
) -> tuple[list[dict[str, Any]], list[LogLine]]:
    """:meth:`Hub.read_both`'s answer cut where both lists are known (see there): ``lines``
    holds up to ``limit + 1`` lines from the cursor on, ``last`` is the snapshot's last line.

    An event goes before a line when its time stamp is earlier, after it otherwise (ties:
    the line first), as in ``JobFollower._merge``; each stream keeps its own order."""
    last_event = evs[-1]["ts"] if len(evs) >= count else None  # (a full page of events)
    if len(lines) > limit:  # a full page of lines: the events after its next line wait
        bound = lines[limit]["ts"]
        evs, lines = [e for e in evs if e["ts"] < bound], lines[:limit]
    elif lines and lines[-1]["seq"] < last:
        # The file does not reach the lines the snapshot had yet (it is written just after
        # Redis, and the buffer rolled past them): the next line's time is not known, but
        # it is not before this one's. (With no line at all there is nothing to keep to.)
        bound = lines[-1]["ts"]
        evs = [e for e in evs if e["ts"] < bound]
    if last_event is not None:  # the lines after the page's last event wait for the next
        lines = [ln for ln in lines if ln["ts"] <= last_event]
    return evs, lines


def _entry_seq(entry_id: str) -> int:
    """The line number of a log stream id ``{seq}-0``."""
    return int(entry_id.split("-", 1)[0])


def _from_buffer(entries: list[Any], since: int) -> list[LogLine] | None:
    """The lines after ``since`` from a read of the live buffer, if the buffer still holds
    the next one (else None: it rolled past ``since``, or holds nothing new)."""
    if entries and int(entries[0][0].split("-", 1)[0]) == since + 1:
        return [decode_log(eid, f) for eid, f in entries]
    return None


# The cyclic collector's thresholds for a process that serves live streams: see
# :func:`collect_less_often`.
GC_THRESHOLDS = (10_000, 20, 100)


def collect_less_often() -> None:
    """Raise the cyclic collector's thresholds (never lowers them) for this process.

    Each live client keeps a few hundred objects (task, coroutines, queue, socket
    protocol), and every delivery makes short-lived ones. At Python's default (700, 10, 10)
    an API process with 1,000 clients at 10 events/s spent about a third of its CPU in
    the collector, with full collections of 50–250 ms every few seconds: every client
    waited for each one, and they made the streams' p99 (measured with gc.callbacks:
    2.4 s of collection in 7.5 s of CPU). With these, ~0.5 s and no full collection.
    """
    current = gc.get_threshold()
    gc.set_threshold(*(max(c, t) for c, t in zip(current, GC_THRESHOLDS, strict=True)))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# The heads of the messages orchestrator/events.py publishes (its one script call): an
# event's, then a log batch's wake-up. Anything else is decoded whole.
_EVENT_HEAD = re.compile(
    r'\{"job_id": "([0-9A-Za-z_.-]+)", "type": "([a-z_]+)", "ts": "([^"\\]+)", '
    r'"id": "([0-9]+-[0-9]+)", "gid": "([0-9]+-[0-9]+)", "data": '
)
_LOG_HEAD = re.compile(
    r'\{"id": null, "job_id": "([0-9A-Za-z_.-]+)", "type": "log", "ts": "([^"\\]+)", "data": '
)


def _head_of(data: str) -> dict[str, Any] | None:
    """A message's head without decoding the rest (None: not one of ours; decode it)."""
    m = _EVENT_HEAD.match(data)
    if m is not None:
        job_id, type_, ts, eid, gid = m.groups()
        return {"job_id": job_id, "type": type_, "ts": ts, "id": eid, "gid": gid}
    m = _LOG_HEAD.match(data)
    if m is not None:
        return {"id": None, "job_id": m[1], "type": EventType.log.value, "ts": m[2]}
    return None


def _line_time(ts: str) -> datetime:
    return as_utc(datetime.fromisoformat(ts))


def _seq_at_in_file(path: Path, when: datetime) -> int | None:
    """:meth:`Hub.seq_at` over the whole-log file; ``None`` when there is no file."""
    last = 0
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return None
    with f:
        for raw in f:
            if not raw.strip():
                continue
            rec = json.loads(raw)
            if _line_time(rec["ts"]) > when:
                return last
            last = rec["seq"]
    return last


def _read_log_file(path: Path, since: int, limit: int) -> list[LogLine]:
    out: list[LogLine] = []
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return out
    with f:
        for n, raw in enumerate(f, start=1):
            # Lines are written in sequence order, one per line: skip without parsing.
            if n <= since or not raw.strip():
                continue
            rec = json.loads(raw)
            if rec["seq"] > since:
                out.append(rec)
                if len(out) >= limit:
                    break
    return out
