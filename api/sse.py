"""The SSE answer of every live stream (per-job events and logs, the firehose).

:class:`HubEventSource` writes a stream's chunks as they come, with SSE's headers and
keep-alive comments, tied to a hub subscriber: a client the hub drops gets a last
``error`` event saying why; a client whose socket takes no data is dropped by the hub's
watchdog (see :class:`api.fanout.Hub`). While its follower is parked at the live edge,
the next chunks may be written by the hub's task instead (:class:`LiveLane`, api/wire.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
from fastapi import Response
from sse_starlette.sse import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from api.fanout import Dropped, Hub, Subscriber
from api.wire import Wire, reset, server_transport

DROP_GRACE_S = 30.0  # how long a dropped client gets to take its final "error" event


class HubEventSource(Response):
    """An SSE response tied to a hub subscriber: ``content``'s chunks, one write each.

    Each client costs a queue put (the hub's) and, per wake-up, one write of everything
    its follower had pending. (``EventSourceResponse`` put a cancel scope, a task hop and
    about 25 µs of CPU around every chunk: with 1,000 clients that, not the sockets, was
    the API's limit.) Like it, the answer has the SSE headers, a keep-alive comment every
    ``ping`` seconds, ends when the client leaves and when the server shuts down.

    When the hub drops the subscriber (too slow) the stream stops at once — even while it is
    blocked writing to a client that does not read — and the client gets a last ``error``
    event with the reason, if it takes it within ``DROP_GRACE_S``. A client whose socket
    takes no data for the hub's ``send_timeout_s`` (LAUNCHBAY_STREAM_SEND_TIMEOUT_S) is
    dropped then, with nothing more sent, and its connection aborted: it holds no task,
    queue, Redis read or buffered data after that (where the server is uvicorn's httptools
    protocol, api/wire.py; elsewhere the server closes it as it does).
    (The hub's one watchdog notices, from ``Subscriber.sending_since``: a timer per write
    per client cost more than the write.)
    """

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[bytes], *, hub: Hub, sub: Subscriber, ping: float
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body_iterator = content
        self.init_headers(
            {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )
        self.ping_s = ping
        self.hub, self.sub = hub, sub
        self.wire: Wire | None = None  # once the headers went out, where the server allows

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = finished = False
        sub, now = self.sub, asyncio.get_running_loop().time
        how: str | None = None  # what ended the answer first, if not its end or a drop

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            sub.sending_since = now()
            try:
                await send(message)
            finally:
                sub.sending_since = None
            started = True
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True

        try:
            if scope.get("method") == "HEAD":  # (headers only: the stream would never end)
                await tracking_send(self._start())
                await tracking_send({"type": "http.response.body", "body": b""})
                return
            try:
                async with anyio.create_task_group() as tg:

                    async def until(wait: Callable[[], Awaitable[object]], ended: str) -> None:
                        await wait()
                        nonlocal how
                        how = how or ended
                        tg.cancel_scope.cancel()

                    tg.start_soon(until, sub.dropped.wait, "dropped")
                    tg.start_soon(until, partial(_until_disconnect, receive), "left")
                    if _EXIT is not None:  # (sse-starlette's one watcher of uvicorn's exit)
                        tg.start_soon(until, _EXIT, "shutdown")
                    tg.start_soon(until, partial(self._ping, tracking_send), "error")
                    await self._stream(scope, tracking_send)
                    tg.cancel_scope.cancel()
            except* Dropped:
                pass  # the generator saw the drop first; the farewell below says why
            finally:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                        await aclose()
            if sub.reason is not None and started and not finished and not sub.stuck:
                farewell = _frame_plain("error", json.dumps({"error": sub.reason}))
                with anyio.move_on_after(DROP_GRACE_S):
                    await send({"type": "http.response.body", "body": farewell, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif sub.stuck and not finished:
                # Its socket took nothing for send_timeout_s: drop the connection with what
                # its buffers hold (up to a chunk and the kernel's send buffer, ~4 MB here),
                # or they would stay until the client read them, which it never does.
                transport = server_transport(scope)
                if transport is not None:
                    reset(transport)
                    await anyio.sleep(0)  # (the server sees the connection lost: no error)
            elif started and not finished and sub.reason is None:
                # (the server is shutting down: end the answer cleanly, if it goes at once)
                with anyio.move_on_after(1), contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.hub.unsubscribe(sub)
            ended = "complete" if finished else (how or "error")
            self.hub.count_end("dropped" if sub.reason is not None else ended)

    def _start(self) -> Message:
        return {"type": "http.response.start", "status": 200, "headers": self.raw_headers}

    async def _stream(self, scope: Scope, send: Send) -> None:
        await send(self._start())
        self.wire = Wire.of(scope)
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self.wire = None  # (nothing is written past the answer's end)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _ping(self, send: Send) -> None:
        while True:
            await anyio.sleep(self.ping_s)
            if self.sub.sending_since is not None:
                continue  # a write is under way (or stuck: the watchdog's to judge, not ours)
            ping = f": ping - {datetime.now(UTC)}\r\n\r\n".encode()
            await send({"type": "http.response.body", "body": ping, "more_body": True})


class LiveLane:
    """A follower's live lane (:class:`api.follower.LiveWriter`) on ``source``'s wire:
    what it is given, encoded by ``encode``, written straight to the client (api/wire.py)
    while nothing is being written the usual way."""

    __slots__ = ("source", "encode")

    def __init__(self, source: HubEventSource, encode: Callable[[Any], bytes]) -> None:
        self.source, self.encode = source, encode

    def ready(self) -> bool:
        wire = self.source.wire
        return wire is not None and self.source.sub.sending_since is None and wire.ready()

    def write(self, items: Any) -> None:
        wire = self.source.wire
        assert wire is not None  # (ready() said so, in this same step of the loop)
        wire.write(self.encode(items))


# Returns once uvicorn is shutting down; one watcher task per process, whatever the number
# of streams (sse-starlette patches uvicorn's exit handler for it). Private there: without
# it, streams end when uvicorn's graceful shutdown cancels them.
_EXIT: Callable[[], Awaitable[None]] | None = getattr(
    EventSourceResponse, "_listen_for_exit_signal", None
)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _frame_plain(event: str, data: str) -> bytes:
    return f"event: {event}\r\ndata: {data}\r\n\r\n".encode()
