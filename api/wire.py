"""Writing a live stream's next chunk straight to the client's connection.

A live client's usual path for each message is a queue put, a wake-up of its task, its
follower's loop, its response's generator, and an ASGI ``send`` through every middleware
into uvicorn, which frames the chunk and writes it to the socket: about 28 µs of the API's
CPU per client per message, so with 1,000 clients the last got a message ~30 ms after the
first (issue 13). Of that, the socket write itself is about 11 µs.

The live lane (:class:`Wire`) skips the rest when it can: a client whose follower is
parked at the live edge (everything so far sent, its queue empty, no write in progress,
its socket taking data) gets the message's frame written by the hub, in the hub's task,
framed exactly as uvicorn frames a chunk, and its cursor moved on. Anything else (a gap,
a resync, the job's end, a socket that is behind, a write in progress) goes the usual way,
in order. Only where the server is uvicorn's httptools protocol writing a chunked answer
(what ``launchbay up`` runs); elsewhere (h11, in-process test transports) every message
takes the usual path.

The app (``api.app.LaunchbayAPI``) keeps the server's own ``send`` in the scope under
:data:`SERVER_SEND`; the bytes written here are added to the access log's count
(:data:`DIRECT_BYTES` in the scope's state). The chunks written here pass no middleware:
none of the app's changes a body (one that did, compression say, would have to turn the
lane off for the answers it changes).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from starlette.types import Scope, Send

SERVER_SEND = "launchbay.server_send"  # scope key: the server's send, before any middleware
DIRECT_BYTES = "direct_bytes"  # scope["state"] key: body bytes written by the live lane
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() discards the send queue, resets


def reset(transport: Any) -> None:
    """Drop an asyncio transport's connection at once, with what its buffers hold, the
    kernel's too (a reset: a client that takes no data would otherwise keep the server's
    buffer until it read it, which it never does, and the kernel's until its probes gave
    up)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


def server_transport(scope: Scope) -> Any | None:
    """The connection's asyncio transport under ``scope``'s server ``send`` (uvicorn's
    HTTP and WebSocket protocols keep it as ``transport``), or None where there is none."""
    transport = getattr(getattr(scope.get(SERVER_SEND), "__self__", None), "transport", None)
    return transport if hasattr(transport, "abort") else None


class Wire:
    """One chunked HTTP answer's connection, written to directly (see the module)."""

    __slots__ = ("_cycle", "_transport", "_state")

    def __init__(self, cycle: Any, state: dict[str, Any]) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._state = state

    @classmethod
    def of(cls, scope: Scope) -> Wire | None:
        """The wire of ``scope``'s answer, once its headers went out; None where the server
        is not one this knows how to write for (then nothing changes)."""
        send: Send | None = scope.get(SERVER_SEND)
        cycle = getattr(send, "__self__", None)
        if cycle is None or type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
            return None
        try:
            if not (cycle.response_started and cycle.chunked_encoding is True):
                return None
            cycle.transport.get_write_buffer_size  # noqa: B018  (the attributes it uses)
            cycle.flow.write_paused  # noqa: B018
        except AttributeError:  # (another uvicorn than the one this was written for)
            return None
        return cls(cycle, scope.setdefault("state", {}))

    def ready(self) -> bool:
        """Whether a chunk written now goes out at once: the answer is open, the client
        connected, and nothing waits in the connection's buffer (a client that is behind
        takes the usual path, with its back-pressure and its slow-client rules)."""
        cycle = self._cycle
        return not (
            cycle.disconnected
            or cycle.response_complete
            or cycle.flow.write_paused
            or self._transport.get_write_buffer_size()
            or self._transport.is_closing()
        )

    def write(self, body: bytes) -> None:
        """One chunk of the answer, framed as uvicorn frames it (``ready()`` first)."""
        self._transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        self._state[DIRECT_BYTES] = self._state.get(DIRECT_BYTES, 0) + len(body)
