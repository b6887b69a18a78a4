"""Live progress and logs over SSE, and the stored log over plain HTTP.

* ``GET /jobs/{id}/events``      SSE: ``status`` first, then ``progress`` and ``log``, then one
  of ``complete``/``failed``/``cancelled``/``timed_out`` and the stream closes. Event ids are
  cursors over both of the job's streams; ``Last-Event-ID`` or ``?since=`` resume exactly.
* ``GET /jobs/{id}/logs``        a page of log lines (JSON, or ``?format=text``).
* ``GET /jobs/{id}/logs/stream`` SSE of log lines (id = line number) until the job ended.
* ``GET /streams``               the fan-out hub's counters (subscribers, drops and why, how
                                   SSE answers ended).

Where a first connection starts: ``/events`` sends the job as it is now, then the log lines
still in the live buffer (a late joiner gets the recent tail, not a million old lines), then
what happens next. ``/logs`` and ``/logs/stream`` start at line 1 unless ``since`` says
otherwise (older lines come from the whole-log file once the buffer rolled over).

The hub (``api.fanout.Hub``) is started and stopped here, by ``setup(app)``'s hooks.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.bodies import StrictJSONRoute
from api.fanout import Hub, Subscriber, collect_less_often
from api.follower import TERMINAL_EVENTS, Cursor, Item, JobFollower, parse_seq, resolve_log_since
from api.sse import HubEventSource, LiveLane
from api.state import AppState
from orchestrator.events import parse_log_since
from orchestrator.job import EventType, Job

router = APIRouter(tags=["streams"], route_class=StrictJSONRoute)

_SINCE_DOC = (
    "Lines after this: a line number, or an ISO 8601 time (lines written after it; "
    "UTC unless a zone is given)."
)

# Event type -> SSE event name; every other event is a ``status`` event. The names that end
# a stream are served by GET /meta (``stream_end_events``).
SSE_NAMES: dict[str, str] = {
    EventType.progress: "progress",
    EventType.log: "log",
    EventType.succeeded: "complete",
    EventType.failed: "failed",
    EventType.cancelled: "cancelled",
    EventType.timed_out: "timed_out",
}
_LOG_PAGE_MAX = 10000


def setup(app: FastAPI) -> None:
    """Start the process's one fan-out hub with the app; stop it on shutdown."""

    async def start_hub(app: FastAPI) -> None:
        state: AppState = app.state.lb
        hub = Hub(
            state.settings.effective_redis_url,
            logs_dir=state.settings.logs_dir,
            queue_size=state.settings.stream_queue_size,
            max_connections=state.settings.stream_redis_connections,
            send_timeout_s=state.settings.stream_send_timeout_s,
        )
        state.extras["hub"] = hub
        await hub.start()
        collect_less_often()

    async def stop_hub(app: FastAPI) -> None:
        hub = app.state.lb.extras.pop("hub", None)
        if hub is not None:
            await hub.stop()

    app.state.startup_hooks.append(start_hub)
    app.state.shutdown_hooks.append(stop_hub)


def hub_of(state: AppState) -> Hub:
    return state.extras["hub"]  # type: ignore[no-any-return]


def _state(request: Request) -> AppState:
    return request.app.state.lb  # type: ignore[no-any-return]


def _label(request: Request, kind: str) -> str:
    client = request.client
    return f"{kind} from {client.host}:{client.port}" if client else kind


# ---------------------------------------------------------------------- SSE plumbing


def _frame(event: str, data: str, event_id: str) -> str:
    """One SSE event. ``data`` is JSON, which holds no line break (``json.dumps`` escapes
    them), so it is one ``data:`` line; ids are cursors or numbers, without line breaks."""
    return f"id: {event_id}\r\nevent: {event}\r\ndata: {data}\r\n\r\n"


class _LineCache:
    """Log lines and events as JSON, shared by every client of the process that follows the
    job: a line or event is encoded once, not once per client (60 clients of one busy job
    would otherwise spend the API's CPU encoding the same text). Bounded by bytes, least
    recent out."""

    def __init__(self, budget: int = 16 << 20) -> None:
        self.budget, self.size = budget, 0
        self._lines: OrderedDict[tuple[str, int | str], str] = OrderedDict()
        self._frames: OrderedDict[tuple[str, ...] | tuple[str, int], bytes] = OrderedDict()

    def json(self, job_id: str, line: dict[str, Any]) -> str:
        return self._get((job_id, line["seq"]), line)

    def log_frame(self, job_id: str, line: dict[str, Any]) -> bytes:
        """A line's whole /logs/stream event (the same bytes for every client)."""
        key = (job_id, line["seq"])
        frame = self._frames.get(key)
        if frame is None:
            frame = self._keep(key, _frame("log", self.json(job_id, line), str(line["seq"])))
        return frame

    def item_frame(self, job_id: str, kind: str, payload: dict[str, Any], cursor: Cursor) -> bytes:
        """An item's whole /events event. Its id is the client's cursor, the same for every
        client that keeps up: made once for them all."""
        at = cursor.encode()
        # (The type too: an ended job's stream without its outcome gets one made up, with
        # the last event's id.)
        key = (job_id, kind, payload.get("type", ""), at)
        frame = self._frames.get(key)
        if frame is None:
            if kind == "log":
                text = _frame("log", self.json(job_id, payload), at)
            else:
                name = SSE_NAMES.get(payload["type"], "status")
                text = _frame(name, self.event_json(job_id, payload), at)
            frame = self._keep(key, text)
        return frame

    def _keep(self, key: tuple[str, ...] | tuple[str, int], text: str) -> bytes:
        frame = self._frames[key] = text.encode()
        while len(self._frames) > _FRAMES_KEPT:
            self._frames.popitem(last=False)
        return frame

    def event_json(self, job_id: str, event: dict[str, Any]) -> str:
        """An event's data, encoded once per process too (keyed by its stream id)."""
        eid = event.get("id")
        if not isinstance(eid, str):
            return json.dumps(event["data"], default=str)
        return self._get((job_id, f"{eid} {event['type']}"), event["data"])  # (see item_frame)

    def _get(self, key: tuple[str, int | str], value: Any) -> str:
        text = self._lines.get(key)
        if text is None:
            text = self._lines[key] = json.dumps(value, default=str)
            self.size += len(text)
            while self.size > self.budget and self._lines:
                self.size -= len(self._lines.popitem(last=False)[1])
        return text


_FRAMES_KEPT = 4096
_LINES = _LineCache()
# One write (one chunk) holds at most this many items, and about this much log text: what
# a client whose socket stalls can have waiting in the server beyond the transport's
# high-water mark, until it is dropped (256 lines of up to 64 KB each were 16 MB a client).
_SLICE = 256
_SLICE_CHARS = 256 << 10


async def _slices(batch: list[Item]) -> AsyncIterator[list[Item]]:
    """``batch`` in slices, letting the event loop run between them: a burst of thousands
    of lines for many clients must not hold the loop while other requests wait (a write
    that does not block yields nothing by itself)."""
    start = 0
    while start < len(batch):
        if start:
            await anyio.sleep(0)
        end, chars = start, 0
        while end < len(batch) and end - start < _SLICE and chars < _SLICE_CHARS:
            kind, payload, _ = batch[end]
            if kind == "log":
                chars += len(payload["line"])
            end += 1
        yield batch[start:end]
        start = end


def _sliced(batch: list[Item]) -> AsyncIterator[list[Item]] | None:
    """None when ``batch`` is one slice: the common case, without a generator per batch."""
    if len(batch) == 1 or (
        len(batch) <= _SLICE
        and sum(len(p["line"]) for kind, p, _ in batch if kind == "log") < _SLICE_CHARS
    ):
        return None
    return _slices(batch)


def _encode(job_id: str, items: list[Item]) -> bytes:
    """One chunk for a batch of items: fewer, larger writes when lines come fast."""
    frame = _LINES.item_frame
    return b"".join([frame(job_id, kind, payload, cursor) for kind, payload, cursor in items])


def _encode_lines(job_id: str, items: list[Item]) -> bytes:
    """/logs/stream's chunk: the frame of each line (id: its number) is the same for every
    client, so it is made once per process and shared."""
    return b"".join([_LINES.log_frame(job_id, payload) for _, payload, _ in items])


async def open_job(state: AppState, job_id: str, label: str) -> tuple[Hub, Subscriber, str, Job]:
    """Subscribe, then note the stream position, then read the job — in that order, so an
    event that lands in between is seen (maybe twice as state), never missed."""
    hub = hub_of(state)
    sub = hub.subscribe(job_id, label=label)
    epoch = hub.epoch
    try:
        last_id = await hub.last_event_id(job_id)
        hub.seed(epoch, job_id, last_id)  # (the job's next event then needs no read)
        last = last_id or "0-0"
        job = await run_in_threadpool(state.store.get, job_id)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    return hub, sub, last, job


# ---------------------------------------------------------------------- routes


@router.get(
    "/jobs/{job_id}/events",
    operation_id="streams-job-events",
    summary="Live job events (SSE): status, progress, log, then the outcome",
    response_class=EventSourceResponse,
    responses={204: {"description": "Resumed after the job's last event: nothing left."}},
)
async def job_events(
    job_id: str,
    request: Request,
    since: Annotated[str | None, Query(description="Resume after this event id.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    state = _state(request)
    resume: Cursor | None = None
    if last_event_id:
        resume = Cursor.parse(last_event_id, "Last-Event-ID")
    elif since:
        resume = Cursor.parse(since, "since")
    hub, sub, last, job = await open_job(state, job_id, _label(request, "sse events"))
    try:
        if resume is not None:
            resume.check_within(last, "Last-Event-ID" if last_event_id else "since")
        if resume is None:
            first = await hub.first_buffered_seq(job_id)
            # A late joiner gets the live buffer's lines; /logs has the whole log.
            cursor = Cursor(last, max(0, first - 1) if first else 0)
            head = ServerSentEvent(
                json.dumps(job.public()), event="status", id=cursor.encode()
            ).encode()
        else:
            cursor, head = resume, b""
            if job.ended and not await _anything_after(hub, job_id, cursor):
                hub.unsubscribe(sub)
                return Response(status_code=204)  # tells EventSource to stop reconnecting
    except BaseException:
        hub.unsubscribe(sub)
        raise
    follower = JobFollower(hub, sub, job_id, cursor, ended=job if job.ended else None)

    async def body() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for batch in follower.batches():
            parts = _sliced(batch)
            if parts is None:
                yield _encode(job_id, batch)
                continue
            async for part in parts:
                yield _encode(job_id, part)

    source = HubEventSource(body(), hub=hub, sub=sub, ping=state.settings.sse_ping_s)
    follower.writer = LiveLane(source, partial(_encode, job_id))
    return source


async def _anything_after(hub: Hub, job_id: str, cursor: Cursor) -> bool:
    """Whether an ended job's stream has more for ``cursor``. The stream ends at the
    terminal event: an event published after it (a cancel asked while the job was
    ending) is never sent, so it does not count."""
    page = 50
    evs = await hub.read_events(job_id, cursor.event_id, count=page)
    if len(evs) == page or any(e["type"] in TERMINAL_EVENTS for e in evs):
        return True
    return bool(await hub.read_logs(job_id, cursor.log_seq, limit=1))


@router.get(
    "/jobs/{job_id}/logs",
    operation_id="streams-job-logs",
    summary="The job's log lines after `since` (JSON page, or the whole text)",
    responses={200: {"content": {"text/plain": {}}}},
)
async def job_logs(
    job_id: str,
    request: Request,
    since: Annotated[str, Query(description=_SINCE_DOC)] = "0",
    limit: Annotated[
        int | None,
        Query(ge=1, le=_LOG_PAGE_MAX, description="Lines per page (JSON: default 1000)."),
    ] = None,
    format: Annotated[Literal["json", "text"], Query()] = "json",
) -> Any:
    state = _state(request)
    hub = hub_of(state)
    after = parse_log_since(since)
    job = await run_in_threadpool(state.store.get, job_id)
    seq = await resolve_log_since(hub, job_id, after)
    if format == "text":
        return StreamingResponse(
            _text_lines(hub, job_id, seq, limit), media_type="text/plain; charset=utf-8"
        )
    items = await hub.read_logs(job_id, seq, limit or 1000)
    return {
        "items": items,
        "next_since": items[-1]["seq"] if items else seq,
        "job_status": job.status.value,
    }


async def _text_lines(hub: Hub, job_id: str, since: int, limit: int | None) -> AsyncIterator[str]:
    left = limit
    while left is None or left > 0:
        page = await hub.read_logs(job_id, since, min(left or 5000, 5000))
        if not page:
            return
        yield "".join(f"{ln['line']}\n" for ln in page)
        since = page[-1]["seq"]
        if left is not None:
            left -= len(page)


@router.get(
    "/jobs/{job_id}/logs/stream",
    operation_id="streams-job-log-stream",
    summary="Live log lines (SSE; data is one JSON line, id its number) until the job ends",
    response_class=EventSourceResponse,
    responses={204: {"description": "Resumed after the job's last line: nothing left."}},
)
async def job_log_stream(
    job_id: str,
    request: Request,
    since: Annotated[str | None, Query(description=_SINCE_DOC)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    state = _state(request)
    after = (
        parse_seq(last_event_id, "Last-Event-ID")
        if last_event_id
        else parse_log_since(since)
        if since
        else 0
    )
    hub, sub, last, job = await open_job(state, job_id, _label(request, "sse logs"))
    try:
        seq = await resolve_log_since(hub, job_id, after)
        if job.ended and not await hub.read_logs(job_id, seq, limit=1):
            hub.unsubscribe(sub)
            return Response(status_code=204)  # everything was sent: stop reconnecting
    except BaseException:
        hub.unsubscribe(sub)
        raise
    follower = JobFollower(
        hub, sub, job_id, Cursor(last, seq), emit_events=False, ended=job if job.ended else None
    )

    async def body() -> AsyncIterator[bytes]:
        async for batch in follower.batches():
            parts = _sliced(batch)
            if parts is None:
                yield _encode_lines(job_id, batch)
                continue
            async for part in parts:
                yield _encode_lines(job_id, part)

    source = HubEventSource(body(), hub=hub, sub=sub, ping=state.settings.sse_ping_s)
    follower.writer = LiveLane(source, partial(_encode_lines, job_id))
    return source


@router.get("/streams", operation_id="streams-hub", summary="This API process's fan-out hub")
async def hub_stats(request: Request) -> dict[str, Any]:
    return hub_of(_state(request)).stats()
