"""The streams bench's clients: the raw pub/sub subscriber and the SSE client, both written
the same way (an ``asyncio.Protocol`` that parses the bytes it is given), so the baseline
and Launchbay pay the same, small, client cost per event.

Why not redis-py and httpx: one bench process runs every client. redis-py's pub/sub reader
cost ~43 µs per message there and httpx + httpx-sse ~220 µs per event, so 1,000 SSE clients
at 10 events/s needed 2.2 s of client CPU per second: the clients fell further behind with
every event and the bench measured its own backlog (seconds), not the API. Here both cost
a few µs per message.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

SSE_HEADERS = "Accept: text/event-stream\r\n"


def stuck_socket(url: str, path: str, headers: str = SSE_HEADERS) -> socket.socket:
    """A client that never reads: ``path``'s request (an SSE one unless ``headers`` say
    otherwise) sent from a socket with a tiny receive buffer, which is then left alone
    (the bench's stuck clients, and tests/api/test_stuck_clients.py's)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    if not (host and port):
        raise ValueError(f"no host and port in {url!r}")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    return sock


class RawSubscriber(asyncio.Protocol):
    """``SUBSCRIBE channel`` on its own connection; ``on_message(payload)`` per message."""

    def __init__(self, channel: str, on_message: Callable[[bytes], None]) -> None:
        self.channel = channel.encode()
        self.on_message = on_message
        self.buf = b""
        self.subscribed = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        c = self.channel
        self.transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(c), c))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        pos = 0
        while True:
            item, end = _resp_array(buf, pos)
            if item is None:
                break
            pos = end
            if item[0] == b"message":
                self.on_message(item[2])
            elif item[0] == b"subscribe" and not self.subscribed.done():
                self.subscribed.set_result(None)
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _resp_array(buf: bytes, pos: int) -> tuple[list[bytes] | None, int]:
    """One RESP array of bulk strings or integers at ``pos`` (None: not all here yet)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None, pos
    if buf[pos : pos + 1] not in (b"*", b">"):
        raise ValueError(f"unexpected RESP reply {buf[pos : pos + 40]!r}")
    n = int(buf[pos + 1 : end])
    out: list[bytes] = []
    at = end + 2
    for _ in range(n):
        end = buf.find(b"\r\n", at)
        if end < 0:
            return None, pos
        if buf[at : at + 1] == b":":
            out.append(buf[at + 1 : end])
            at = end + 2
            continue
        size = int(buf[at + 1 : end])
        if len(buf) < end + 2 + size + 2:
            return None, pos
        out.append(buf[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    return out, at


class SSEClient(asyncio.Protocol):
    """``GET path`` (HTTP/1.1, chunked), then ``on_event(event, data)`` per SSE event.

    ``status`` resolves with the response's status code once its headers are in; ``closed``
    when the connection ends (the server ends a finished stream with its last chunk).
    """

    def __init__(self, path: str, on_event: Callable[[str, str], None]) -> None:
        self.path = path
        self.on_event = on_event
        loop = asyncio.get_running_loop()
        self.status: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.head = b""
        self.raw = b""  # chunked body bytes not yet decoded
        self.text = ""  # SSE text not yet a whole event
        self.in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data, self.in_body = self.head[end + 4 :], True
            code = int(self.head.split(b" ", 2)[1])
            self.status.set_result(code)
            if code != 200:
                self.transport.close()
                return
        raw = self.raw + data
        pos, parts = 0, []
        while True:  # chunked transfer coding: "{size:x}\r\n{data}\r\n", size 0 ends it
            end = raw.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(raw[pos:end], 16)
            if size == 0:
                self.transport.close()
                break
            if len(raw) < end + 2 + size + 2:
                break
            parts.append(raw[end + 2 : end + 2 + size])
            pos = end + 2 + size + 2
        self.raw = raw[pos:]
        if not parts:
            return
        text = self.text + b"".join(parts).decode()
        events = text.split("\r\n\r\n")
        self.text = events.pop()
        for block in events:
            name, data_ = "message", ""
            for line in block.split("\r\n"):
                if line.startswith("data: "):
                    data_ = line[6:]
                elif line.startswith("event: "):
                    name = line[7:]
            if data_ or name != "message":
                self.on_event(name, data_)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectionError("closed before the response's headers"))
        if not self.closed.done():
            self.closed.set_result(None)


def field_of(data: str, key: str) -> str:
    """``data``'s JSON field ``key`` (the stamp every bench line or event carries)."""
    return str(json.loads(data)[key])
