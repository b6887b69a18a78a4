"""``GET /events``: every job's events as one SSE stream (the firehose).

The truth is the firehose stream ``lb:firehose`` (every job event but log lines, in
publish order; see :mod:`orchestrator.events`). As with the per-job streams, the hub's one
subscription only wakes a client, which then reads the stream from its own cursor: nothing
is lost or repeated, and ``Last-Event-ID`` (the event's id in the firehose) resumes
exactly. A client whose queue of wake-ups overflows is dropped by the same rule as every
other live client (``LAUNCHBAY_STREAM_QUEUE_SIZE``), with an ``error`` event saying why.

Filters (``label=k=v``, ``executor``, ``status``; each repeatable, all must hold) apply to
the job the event is about: its labels and executor, and its status after the event.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.bodies import StrictJSONRoute
from api.deps import LabelFilter, label_filter
from api.fanout import Hub, Subscriber
from api.routes.streams import hub_of
from api.sse import HubEventSource, LiveLane
from api.state import AppState
from orchestrator.errors import ParamError
from orchestrator.events import FIREHOSE_STREAM
from orchestrator.job import EventType, JobStatus

router = APIRouter(tags=["streams"], route_class=StrictJSONRoute)

_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_PAGE = 500
_KNOWN_JOBS = 10000
Executor = Literal["builtin", "process", "docker", "kubernetes"]


def _parse_id(text: str, field: str) -> str:
    text = text.strip()
    if not _ID.fullmatch(text) or any(int(p) >= 2**64 for p in text.split("-")):
        raise ParamError(
            field, f"{field} must be an event id from this stream (like '1712345678901-0')"
        )
    return text


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


class _Filter:
    """Which events a client wants; remembers each job's labels and executor from the
    events that carry the job, so progress events (which do not) are filtered too."""

    def __init__(
        self,
        state: AppState,
        labels: dict[str, str],
        executors: set[str],
        statuses: set[str],
    ) -> None:
        self.state = state
        self.labels, self.executors, self.statuses = labels, executors, statuses
        self._jobs: OrderedDict[str, tuple[dict[str, str], str]] = OrderedDict()

    @property
    def everything(self) -> bool:
        return not (self.labels or self.executors or self.statuses)

    async def wants(self, job_id: str, type_: str, data: dict[str, Any]) -> bool:
        if self.everything:
            return True
        spec = data.get("spec")
        if isinstance(spec, dict):
            known = (dict(spec.get("labels") or {}), str(data.get("executor") or spec["executor"]))
            self._jobs[job_id] = known
            if len(self._jobs) > _KNOWN_JOBS:
                self._jobs.popitem(last=False)
            status = str(data.get("status"))
        else:
            cached = self._jobs.get(job_id)
            if cached is None:
                job = await run_in_threadpool(self.state.store.find, job_id)
                if job is None:
                    return False
                cached = (dict(job.spec.labels), job.executor)
                self._jobs[job_id] = cached
            known = cached
            status = JobStatus.running.value if type_ == EventType.progress else ""
        labels, executor = known
        if self.executors and executor not in self.executors:
            return False
        if self.statuses and status not in self.statuses:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


class _Frames:
    """Each firehose event's SSE frame, encoded once per process for all its clients
    (keyed by its firehose id; the most recent few thousand kept)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._frames: OrderedDict[str, bytes] = OrderedDict()

    def get(self, gid: str, event: dict[str, Any]) -> bytes:
        frame = self._frames.get(gid)
        if frame is None:
            body = json.dumps({k: event.get(k) for k in ("id", "job_id", "type", "ts", "data")})
            frame = self._frames[gid] = (
                f"id: {gid}\r\nevent: {event['type']}\r\ndata: {body}\r\n\r\n".encode()
            )
            if len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame


_FRAMES = _Frames()


class _Tail:
    """A firehose client's place in the stream (``cursor``, the last entry sent) and its
    live lane (api/wire.py): while it is parked, an event that is the entry right after
    the cursor (the hub's ``gprev``) is written by the hub's task, if the client takes
    every event (a filter may need the store: those wake as usual)."""

    def __init__(self, cursor: str, keep: _Filter) -> None:
        self.cursor = cursor
        self.keep = keep
        self.writer: LiveLane | None = None

    def take(self, msg: dict[str, Any]) -> bool:
        writer = self.writer
        if writer is None or not self.keep.everything or not writer.ready():
            return False
        gid = msg.get("gid")
        if msg.get("gprev") != self.cursor or not isinstance(gid, str) or not _ID.fullmatch(gid):
            return False
        self.cursor = gid
        writer.write(_FRAMES.get(gid, msg))
        return True


async def _follow(hub: Hub, sub: Subscriber, tail: _Tail, poll_s: float) -> AsyncIterator[bytes]:
    keep = tail.keep
    first = await hub.redis.xrange(FIREHOSE_STREAM, count=1)
    if first and tail.cursor != "0-0" and _id_key(first[0][0]) > _id_key(tail.cursor):
        # The stream was trimmed past the client's cursor: say so, then go on.
        gap = json.dumps({"after": tail.cursor, "oldest": first[0][0]})
        yield f"event: gap\r\ndata: {gap}\r\n\r\n".encode()
    read, full, everything = True, False, keep.everything
    msgs: list[dict[str, Any] | None] = []
    while True:
        out: list[bytes] = []
        if not read:
            # The messages, while each is the firehose entry right after the cursor (the
            # hub's ``gprev``): then no client needs to read the stream.
            for msg in msgs:
                gid = msg.get("gid") if msg is not None else None
                if msg is None or not isinstance(gid, str) or not _ID.fullmatch(gid):
                    read = True  # a quiet poll or a resync: read from the cursor
                    break
                if msg.get("gprev") == tail.cursor:
                    tail.cursor = gid
                    if everything or await keep.wants(msg["job_id"], msg["type"], msg["data"]):
                        out.append(_FRAMES.get(gid, msg))
                elif _id_key(gid) > _id_key(tail.cursor):
                    read = True  # a gap, or a predecessor the hub does not know
                    break
                # (else it was read before its message came: sent already)
        if read:
            entries = await hub.redis.xrange(
                FIREHOSE_STREAM, min=f"({tail.cursor}", max="+", count=_PAGE
            )
            for gid, fields in entries:
                tail.cursor = gid
                event = {**fields, "data": json.loads(fields["data"])}
                if await keep.wants(fields["job_id"], fields["type"], event["data"]):
                    out.append(_FRAMES.get(gid, event))
            full = len(entries) >= _PAGE
        if out:
            yield b"".join(out)
        if read and full:
            continue  # more are waiting: no need to wait for a wake-up
        read = False
        # Parked: everything so far was sent; the live lane may write meanwhile.
        live = tail.take if tail.writer is not None else None
        msgs = [await sub.next(poll_s, live=live), *sub.pending()]  # Dropped when too slow


@router.get(
    "/events",
    operation_id="streams-firehose",
    summary="Every job's events (SSE), filtered by label, executor and status",
    response_class=EventSourceResponse,
)
async def firehose(
    request: Request,
    label: LabelFilter = None,
    executor: Annotated[list[Executor] | None, Query(description="Any of these.")] = None,
    status: Annotated[
        list[JobStatus] | None, Query(description="The job's status after the event.")
    ] = None,
    since: Annotated[str | None, Query(description="Resume after this event id.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    state: AppState = request.app.state.lb
    keep = _Filter(
        state,
        label_filter(label),
        set(executor or []),
        {s.value for s in status or []},
    )
    resume = (
        _parse_id(last_event_id, "Last-Event-ID")
        if last_event_id
        else _parse_id(since, "since")
        if since
        else None
    )
    hub = hub_of(state)
    client = request.client
    where = f" from {client.host}:{client.port}" if client else ""
    # Subscribe before reading the stream's end, so nothing published in between is missed.
    sub = hub.subscribe(None, logs=False, label=f"sse firehose{where}")
    epoch = hub.epoch
    try:
        last = await hub.redis.xrevrange(FIREHOSE_STREAM, count=1)
        hub.seed(epoch, None, last[0][0] if last else None)  # (no read for the next event)
        if resume is None:
            resume = last[0][0] if last else "0-0"
    except BaseException:
        hub.unsubscribe(sub)
        raise
    tail = _Tail(resume, keep)
    body = _follow(hub, sub, tail, poll_s=state.settings.sse_ping_s)
    source = HubEventSource(body, hub=hub, sub=sub, ping=state.settings.sse_ping_s)
    tail.writer = LiveLane(source, bytes)
    return source
