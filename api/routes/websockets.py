"""WebSocket routes: one job's live log, and the queue feed with its commands.

* ``/jobs/{id}/logs/stream``  each message one JSON log line (as the SSE stream's data);
  ``?since=`` a line number or an ISO time, as on the HTTP routes; closed with 1000 once
  the job ended and all was sent.
* ``/ws/queue``               ``queue_state`` on connect, then job_* and ``stats_update``
  messages for every job; commands create_job, cancel_job, clear_completed, get_state, ping.
  A refused spec answers ``error`` with the ``fields`` problems a POST /jobs 422 lists.

Mounted at /api/v1 without the HTTP bearer dependency: the token is checked here
(``Authorization`` header or ``?token=``). Close codes: 1008 wrong token or bad parameter,
1013 too slow (the hub dropped us; a socket that took no data for the hub's send timeout
is reset instead), 4404 unknown job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from api.auth import websocket_principal
from api.bodies import strict_loads
from api.errors import invalid
from api.fanout import RESYNC, Dropped, Hub, Subscriber
from api.follower import Cursor, JobFollower, resolve_log_since
from api.routes.meta import stats_of
from api.routes.streams import hub_of, open_job
from api.sse import DROP_GRACE_S
from api.state import AppState
from api.wire import reset, server_transport
from orchestrator.credentials import Scope
from orchestrator.errors import JobNotFound, LaunchbayError, ParamError
from orchestrator.events import parse_log_since
from orchestrator.job import TERMINAL_STATUSES, BuiltinSpec, EventType, JobSpec

router = APIRouter(tags=["websockets"])

CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
CLOSE_NOT_FOUND = 4404
QUEUE_STATE_JOBS = 100
_CLOSE_WAIT_S = 5.0
_SPEC = TypeAdapter(JobSpec)
# Events that change a job without starting or ending it: the feed sends the whole job.
_UPDATES = frozenset({EventType.requeued, EventType.claimed, EventType.cancel_requested})
_COMMANDS = ("create_job", "cancel_job", "clear_completed", "get_state", "ping")
_ACTS = frozenset({"create_job", "cancel_job"})  # need the submit scope; the rest read
_GONE = (WebSocketDisconnect, OSError, RuntimeError)  # the peer left or the socket closed


async def _admit(websocket: WebSocket) -> bool:
    await websocket.accept()
    who, why = websocket_principal(websocket)
    if who is not None:
        websocket.state.principal = who
        return True
    await _close(websocket, CLOSE_POLICY, why)
    return False


async def _close(websocket: WebSocket, code: int, reason: str, wait: float = _CLOSE_WAIT_S) -> None:
    # A close reason is at most 123 bytes on the wire.
    reason = reason.encode()[:120].decode(errors="ignore")
    with contextlib.suppress(*_GONE), anyio.move_on_after(wait):
        await websocket.close(code=code, reason=reason)


async def _serve(sub: Subscriber, *tasks: Callable[[], Awaitable[None]]) -> None:
    """Run the socket's tasks until the first one returns or the hub drops ``sub``."""
    async with anyio.create_task_group() as tg:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            with contextlib.suppress(Dropped, *_GONE):
                await fn()
            tg.cancel_scope.cancel()

        async def dropped() -> None:
            await sub.dropped.wait()
            tg.cancel_scope.cancel()

        for fn in (*tasks, dropped):
            tg.start_soon(run, fn)


async def _send(websocket: WebSocket, hub: Hub, sub: Subscriber, text: str) -> None:
    """Send ``text``; a socket that takes no data for the hub's ``send_timeout_s`` gets
    its subscriber dropped (and :class:`Dropped` raised): it holds nothing after that."""
    with anyio.move_on_after(hub.send_timeout_s) as scope:
        await websocket.send_text(text)
    if scope.cancelled_caught:
        hub.drop(sub, hub.stuck_reason(), stuck=True)
        raise Dropped(sub.reason or "too slow")


async def _farewell(websocket: WebSocket, sub: Subscriber) -> None:
    """Close a socket the hub dropped: 1013 with the reason, or, where its connection took
    no data for ``send_timeout_s``, a reset that drops what the server's and the kernel's
    buffers hold for it (a close frame would only wait behind them, and they would stay
    until the client read them, which it never does)."""
    transport = server_transport(websocket.scope) if sub.stuck else None
    if transport is None:
        wait = 1.0 if sub.stuck else DROP_GRACE_S  # (a stuck one takes nothing more)
        await _close(websocket, CLOSE_TRY_LATER, sub.reason or "", wait)
        return
    reset(transport)
    await anyio.sleep(0)  # (the server sees the connection lost before the app returns)


async def _until_disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


# ---------------------------------------------------------------------- one job's log


@router.websocket("/jobs/{job_id}/logs/stream")
async def job_log_socket(websocket: WebSocket, job_id: str) -> None:
    if not await _admit(websocket):
        return
    state: AppState = websocket.app.state.lb
    try:
        after = parse_log_since(websocket.query_params.get("since") or "0")
        since = await resolve_log_since(hub_of(state), job_id, after)
        hub, sub, last, job = await open_job(state, job_id, _label(websocket, "ws logs"))
    except ParamError as exc:
        await _close(websocket, CLOSE_POLICY, f"{exc.field}: {exc}")
        return
    except JobNotFound as exc:
        await _close(websocket, CLOSE_NOT_FOUND, str(exc))
        return
    follower = JobFollower(
        hub, sub, job_id, Cursor(last, since), emit_events=False, ended=job if job.ended else None
    )
    done = False

    async def send_lines() -> None:
        nonlocal done
        async for batch in follower.batches():
            for n, (_, line, _) in enumerate(batch, start=1):
                await _send(websocket, hub, sub, json.dumps(line))
                if n % 256 == 0:
                    await anyio.sleep(0)  # (a burst must not hold the event loop)
        done = True

    try:
        await _serve(sub, send_lines, lambda: _until_disconnect(websocket))
    finally:
        hub.unsubscribe(sub)
    if sub.reason is not None:
        await _farewell(websocket, sub)
    elif done:
        status = follower.final["type"] if follower.final else "ended"
        await _close(websocket, 1000, f"job {status}")


def _label(websocket: WebSocket, kind: str) -> str:
    client = websocket.client
    return f"{kind} from {client.host}:{client.port}" if client else kind


# ---------------------------------------------------------------------- the queue feed


def queue_message(event: dict[str, Any]) -> dict[str, Any] | None:
    """The feed message for one hub event (None: not for the queue feed)."""
    type_, data, job_id = event.get("type"), event.get("data") or {}, event.get("job_id")
    if type_ == EventType.created:
        return {"type": "job_created", "job": data}
    if type_ == EventType.started:
        return {
            "type": "job_started",
            "job_id": job_id,
            "started_at": data.get("started_at"),
            "job": data,
        }
    if type_ == EventType.progress:
        return {
            "type": "job_progress",
            "job_id": job_id,
            "percent": data.get("percent"),
            "message": data.get("message", ""),
        }
    if type_ == EventType.succeeded:
        return {
            "type": "job_completed",
            "job_id": job_id,
            "result": data.get("result"),
            "job": data,
        }
    if type_ in (EventType.failed, EventType.timed_out):
        return {
            "type": "job_failed",
            "job_id": job_id,
            "error": data.get("error"),
            "status": type_,
            "job": data,
        }
    if type_ == EventType.cancelled:
        return {"type": "job_cancelled", "job_id": job_id, "job": data}
    if type_ in _UPDATES:
        return {"type": "job_updated", "job_id": job_id, "event": type_, "job": data}
    return None


class _StatsCache:
    """Stats shared by every feed of the process, recomputed only when something changed.

    ``need`` is the hub's message count when the caller learnt of a change; a value computed
    from a read that started at or after it already reflects that change.
    """

    def __init__(self) -> None:
        self.value: dict[str, Any] | None = None
        self.generation = -1
        self.lock = asyncio.Lock()

    async def get(self, state: AppState, hub: Hub, need: int) -> dict[str, Any]:
        async with self.lock:
            if self.value is None or self.generation < need:
                generation = hub.received
                self.value = await run_in_threadpool(stats_of, state)
                self.generation = generation
            return self.value


def _stats_cache(state: AppState) -> _StatsCache:
    cache = state.extras.get("ws_stats")
    if cache is None:
        cache = state.extras["ws_stats"] = _StatsCache()
    return cache  # type: ignore[no-any-return]


class QueueFeed:
    """One /ws/queue connection: the feed out, the commands in, one send at a time."""

    def __init__(self, websocket: WebSocket, state: AppState) -> None:
        self.ws = websocket
        self.state = state
        self.hub = hub_of(state)
        self.stats = _stats_cache(state)
        self.hidden: set[str] = set()
        self.lock = asyncio.Lock()
        self.sub: Subscriber | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        text = json.dumps(msg, default=str)
        async with self.lock:
            if self.sub is None:
                await self.ws.send_text(text)
            else:
                await _send(self.ws, self.hub, self.sub, text)

    async def queue_state(self) -> dict[str, Any]:
        jobs, _ = await run_in_threadpool(self.state.store.list, limit=QUEUE_STATE_JOBS)
        stats = await self.stats.get(self.state, self.hub, self.hub.received)
        return {
            "type": "queue_state",
            "jobs": [j.public() for j in jobs if j.id not in self.hidden],
            "stats": stats,
        }

    async def feed(self, sub: Subscriber) -> None:
        while True:
            msgs = [await sub.next(), *sub.pending()]
            changed = False
            for event in msgs:
                if event is None:
                    continue
                if event is RESYNC:
                    await self.send(await self.queue_state())
                    continue
                out = queue_message(event)
                if out is None:
                    continue
                await self.send(out)
                changed = changed or event.get("type") != EventType.progress
            if changed:
                # One stats_update per burst of transitions, not one per event.
                stats = await self.stats.get(self.state, self.hub, self.hub.received)
                await self.send({"type": "stats_update", "stats": stats})

    async def commands(self) -> None:
        while True:
            raw = await self.ws.receive()
            if raw["type"] == "websocket.disconnect":
                return
            text = raw.get("text")
            if text is None:
                await self.send({"type": "error", "error": "send JSON text messages"})
                continue
            limit = self.state.settings.max_body_bytes
            if len(text) > limit:  # (characters; at least as many bytes)
                await self.send(
                    {"type": "error", "error": f"a message has at most {limit} bytes", "code": 413}
                )
                continue
            await self.send(await self.answer(text))

    async def answer(self, text: str) -> dict[str, Any]:
        """The reply to one client message; bad input is an error reply, never a close."""
        try:
            msg = strict_loads(text)
        except ValueError as exc:
            return {"type": "error", "error": f"message is not JSON: {exc}"}
        if not isinstance(msg, dict):
            return {"type": "error", "error": "a message is a JSON object with a 'type'"}
        kind = msg.get("type")
        extra = {"request_id": msg["request_id"]} if "request_id" in msg else {}
        if kind not in _COMMANDS:
            return {
                "type": "error",
                "error": f"unknown message type {kind!r}; one of {list(_COMMANDS)}",
                "field": "type",
                **extra,
            }
        if kind in _ACTS and not self.ws.state.principal.may(Scope.submit):
            return {
                "type": "error",
                "error": f"{kind} needs a token with the 'submit' scope",
                "code": 403,
                **extra,
            }
        try:
            reply = await getattr(self, f"_{kind}")(msg)
        except ParamError as exc:
            return {"type": "error", "error": str(exc), "field": exc.field, **extra}
        except LaunchbayError as exc:
            return {"type": "error", "error": str(exc), "code": exc.status_code, **extra}
        return {**reply, **extra}

    async def _ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    async def _get_state(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self.queue_state()

    async def _create_job(self, msg: dict[str, Any]) -> dict[str, Any]:
        # Bad input gets the problems a POST /jobs answers, named as this message has them.
        if isinstance(msg.get("spec"), dict):
            try:
                spec = _SPEC.validate_python(msg["spec"])
            except ValidationError as exc:
                return _refused(invalid(exc.errors(), under="spec", whole="spec"))
        elif isinstance(msg.get("job_type"), str):
            raw = {"type": msg["job_type"], "params": msg.get("params") or {}}
            if msg.get("name"):
                raw["name"] = msg["name"]
            try:
                spec = BuiltinSpec.model_validate(raw)
            except ValidationError as exc:
                return _refused(invalid(exc.errors(), whole="params", aliases={"type": "job_type"}))
        else:
            raise ParamError("job_type", "create_job needs job_type (+ params) or spec")
        job = await run_in_threadpool(self.state.dispatcher.submit, spec)
        return {"type": "ack", "action": "create_job", "job_id": job.id, "job": job.public()}

    async def _cancel_job(self, msg: dict[str, Any]) -> dict[str, Any]:
        job_id = msg.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ParamError("job_id", "cancel_job needs job_id")
        job = await run_in_threadpool(self.state.dispatcher.cancel, job_id)
        return {"type": "ack", "action": "cancel_job", "job_id": job.id, "job": job.public()}

    async def _clear_completed(self, msg: dict[str, Any]) -> dict[str, Any]:
        # Ended jobs are run history (kept, with logs and artifacts, until retention):
        # clearing hides them from THIS connection's queue only.
        ended = [s.value for s in TERMINAL_STATUSES]
        jobs, _ = await run_in_threadpool(
            self.state.store.list, statuses=ended, limit=QUEUE_STATE_JOBS * 10
        )
        cleared = [j.id for j in jobs if j.id not in self.hidden]
        self.hidden.update(cleared)
        return {"type": "cleared", "job_ids": cleared}


def _refused(body: dict[str, Any]) -> dict[str, Any]:
    """The error reply for refused input; ``field`` names the first problem."""
    return {"type": "error", **body, "field": body["fields"][0]["field"]}


@router.websocket("/ws/queue")
async def queue_socket(websocket: WebSocket) -> None:
    if not await _admit(websocket):
        return
    state: AppState = websocket.app.state.lb
    feed = QueueFeed(websocket, state)
    sub = feed.sub = feed.hub.subscribe(None, logs=False, label=_label(websocket, "ws queue"))
    try:
        with contextlib.suppress(Dropped, *_GONE):
            await feed.send(await feed.queue_state())  # after subscribing: nothing falls between
            await _serve(sub, lambda: feed.feed(sub), feed.commands)
    finally:
        feed.hub.unsubscribe(sub)
    if sub.reason is not None:
        await _farewell(websocket, sub)
