"""Slow clients, keep-alives, tokens and the one-subscription-per-process rule.

A second API process (real uvicorn) joins the session's stack — same home, Valkey and
database, so the stack's worker runs its jobs — with a tiny per-client queue, a short SSE
keep-alive interval and a bearer token.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import redis
from httpx_sse import aconnect_sse, connect_sse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from orchestrator.services import Supervisor, api_argv, free_port, wait_http
from tests.support import Stack, private_api, wait_until

API = "/api/v1"
TOKEN = "s3cret-stream-token"
QUEUE = 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class TightApi:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=30), headers=AUTH)

    def hub(self) -> dict[str, Any]:
        return self.http.get(f"{API}/streams").json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tight(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TightApi]:
    settings = stack.settings.model_copy(update={"api_port": free_port(), "token": TOKEN})
    sup = Supervisor(settings, log_dir=tmp_path_factory.mktemp("tight-api"), say=lambda _: None)
    sup.add(
        "api",
        api_argv(settings),
        env={"LAUNCHBAY_STREAM_QUEUE_SIZE": str(QUEUE), "LAUNCHBAY_SSE_PING_S": "0.3"},
    )
    sup.start()
    try:
        url = f"http://127.0.0.1:{settings.api_port}"
        wait_http(f"{url}{API}/healthz", timeout=60, alive=lambda: sup.poll_dead() is None)
        api = TightApi(url)
        yield api
        api.http.close()
    finally:
        sup.stop()


def gated(go: Path, body: str) -> dict[str, Any]:
    """A process job that waits for ``go`` to exist before running ``body`` (python)."""
    script = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\n" + body
    )
    return {"executor": "process", "command": ["python3", "-c", script, str(go)]}


def test_a_slow_client_is_dropped_with_a_reason_and_does_not_delay_a_fast_one(
    stack: Stack, tight: TightApi, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    # ~5 MB at once (more than the kernel buffers a client that never reads: ~3 MB here),
    # then a line every 60 ms: each its own live message, far more than QUEUE of them.
    burst, trickle = 5000, 120
    n = burst + trickle
    job = stack.submit(
        gated(
            go,
            (
                f"for i in range(1, {burst} + 1):\n"
                "    print(f'{i:06d} ' + 'x' * 1000)\n"
                "sys.stdout.flush()\n"
                f"for i in range({burst} + 1, {n} + 1):\n"
                "    print(f'{i:06d} tail', flush=True); time.sleep(0.06)\n"
            ),
        )
    )
    path = f"{API}/jobs/{job['id']}/logs/stream"
    before = tight.hub()["dropped"]

    # The slow client asks for the stream and never reads: its socket fills up.
    host, port = urlsplit(tight.url).hostname, urlsplit(tight.url).port
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, port))
    slow.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    wait_until(lambda: tight.hub()["subscribers"] >= 1, 20, what="the slow client to subscribe")

    fast_lines: list[str] = []
    fast_error: list[BaseException] = []

    def fast() -> None:
        try:
            with connect_sse(tight.http, "GET", path) as es:
                for ev in es.iter_sse():
                    if ev.event == "message" and not ev.data:
                        continue  # httpx_sse turns a keep-alive comment into an empty event
                    fast_lines.append(json.loads(ev.data)["line"])
        except BaseException as exc:
            fast_error.append(exc)

    t = threading.Thread(target=fast)
    t.start()
    wait_until(lambda: tight.hub()["subscribers"] >= 2, 20, what="the fast client to subscribe")
    go.touch()
    t.join(120)
    assert not t.is_alive() and not fast_error, fast_error
    # The fast client got every line, in order, and the stream closed at the end.
    assert len(fast_lines) == n
    assert fast_lines[0].startswith("000001 ") and fast_lines[-1].startswith(f"{n:06d} ")
    assert [int(x[:6]) for x in fast_lines] == list(range(1, n + 1))

    hub = wait_until(
        lambda: (h := tight.hub())["dropped"] > before and h,
        30,
        what="the hub to drop the slow client",
    )
    drop = hub["recent_drops"][-1]
    assert drop["job_id"] == job["id"] and "too slow" in drop["reason"]
    assert drop["client"].startswith("sse logs from 127.0.0.1:")

    # When it finally reads, the slow client finds the reason at the end of its stream.
    slow.settimeout(30)
    data = b""
    while b"event: error" not in data or not data.endswith(b"0\r\n\r\n"):
        got = slow.recv(1 << 20)
        if not got:
            break
        data += got
    slow.close()
    tail = data[data.rindex(b"event: error") :].decode(errors="replace")
    assert "too slow" in tail and f"more than {QUEUE} messages" in tail
    assert data.count(b"event: log") < n  # it was cut off, not served to the end


def test_sse_sends_keep_alive_comments_between_events(stack: Stack, tight: TightApi) -> None:
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 2}})
    comments = 0
    events: list[str] = []
    with tight.http.stream("GET", f"{API}/jobs/{job['id']}/events") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(":"):
                comments += 1
            elif line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    assert events[0] == "status" and events[-1] == "complete"
    assert comments >= 1  # 2 s of countdown, pings every 0.3 s


def test_streams_need_the_token_when_one_is_set(stack: Stack, tight: TightApi) -> None:
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 3}})
    r = httpx.get(f"{tight.url}{API}/jobs/{job['id']}/events", timeout=10)
    assert r.status_code == 401
    r = httpx.get(f"{tight.url}{API}/jobs/{job['id']}/logs", timeout=10)
    assert r.status_code == 401
    ws_base = tight.url.replace("http://", "ws://") + API
    for path in ("/ws/queue", f"/jobs/{job['id']}/logs/stream", "/ws/queue?token=wrong"):
        with (
            connect(ws_base + path, open_timeout=10) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, path
    with connect(f"{ws_base}/ws/queue?token={TOKEN}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "queue_state"
    with connect(f"{ws_base}/ws/queue", additional_headers=AUTH, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "queue_state"


def test_each_api_process_holds_one_subscription_whatever_its_clients(
    stack: Stack, tight: TightApi, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(stack.settings.effective_redis_url, decode_responses=True)
    go = tmp_path / "go"
    job = stack.submit(gated(go, "print('done')\n"))
    ws_base = tight.url.replace("http://", "ws://") + API
    base = r.pubsub_numsub("lb:events")[0][1]
    assert base >= 2  # at least the stack's API and this one
    sockets = [connect(f"{ws_base}/ws/queue?token={TOKEN}", open_timeout=10) for _ in range(4)]
    streams = [tight.http.stream("GET", f"{API}/jobs/{job['id']}/events") for _ in range(4)]
    try:
        for s in streams:
            assert s.__enter__().status_code == 200
        wait_until(lambda: tight.hub()["subscribers"] >= 8, 20, what="8 subscribers")
        # Eight more clients, not one more subscription: they share their process's.
        assert r.pubsub_numsub("lb:events") == [("lb:events", base)]
    finally:
        go.touch()
        for s in streams:
            s.__exit__(None, None, None)
        for ws in sockets:
            ws.close()
        r.close()


def raw_ws(host: str, port: int, path: str) -> socket.socket:
    """A WebSocket handshake by hand on a socket with a tiny receive buffer; then silence."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def read_frames(sock: socket.socket, timeout: float) -> tuple[int, tuple[int, str]]:
    """Read server frames until the close frame: (text frames seen, (code, reason))."""
    sock.settimeout(timeout)
    buf = b""

    def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            got = sock.recv(1 << 20)
            if not got:
                raise EOFError(f"socket closed with {len(buf)} bytes pending")
            buf += got
        out, buf = buf[:n], buf[n:]
        return out

    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += need(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    texts = 0
    while True:
        b0, b1 = need(2)
        size = b1 & 0x7F
        if size == 126:
            size = struct.unpack("!H", need(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", need(8))[0]
        payload = need(size)
        opcode = b0 & 0x0F
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if size >= 2 else 1005
            return texts, (code, payload[2:].decode())
        texts += opcode == 0x1


def test_a_slow_websocket_client_is_closed_with_1013_and_the_reason(
    stack: Stack, tight: TightApi, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    burst, trickle = 5000, 120
    job = stack.submit(
        gated(
            go,
            (
                f"for i in range(1, {burst} + 1):\n"
                "    print(f'{i:06d} ' + 'x' * 1000)\n"
                "sys.stdout.flush()\n"
                f"for i in range({burst} + 1, {burst + trickle} + 1):\n"
                "    print(f'{i:06d} tail', flush=True); time.sleep(0.06)\n"
            ),
        )
    )
    before = tight.hub()["dropped"]
    host, port = urlsplit(tight.url).hostname, urlsplit(tight.url).port
    assert host and port
    sock = raw_ws(host, port, f"{API}/jobs/{job['id']}/logs/stream?token={TOKEN}")
    try:
        wait_until(lambda: tight.hub()["subscribers"] >= 1, 20, what="the socket to subscribe")
        go.touch()
        hub = wait_until(
            lambda: (h := tight.hub())["dropped"] > before and h,
            60,
            what="the hub to drop the slow socket",
        )
        drop = hub["recent_drops"][-1]
        assert drop["job_id"] == job["id"] and drop["client"].startswith("ws logs from")
        texts, (code, reason) = read_frames(sock, 30)
        assert 0 < texts < burst + trickle  # cut off, not served to the end
        assert code == 1013 and "too slow" in reason
    finally:
        sock.close()


CROWD = 150  # SSE clients at once: more than a default Redis pool's 100 connections
CROWD_POOL = 4  # this API's stream-read connections: the clients must queue for them


@pytest.fixture(scope="module")
def crowded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API process with very few Redis connections for its stream reads."""
    settings = stack.settings.model_copy(update={"api_port": free_port(), "token": None})
    with private_api(
        settings,
        tmp_path_factory.mktemp("crowd-api"),
        {"LAUNCHBAY_STREAM_REDIS_CONNECTIONS": str(CROWD_POOL)},
    ) as url:
        yield url


def test_150_sse_clients_at_once_all_get_complete_streams(
    stack: Stack, crowded: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    lines, every = 60, 10
    job = stack.submit(
        gated(
            go,
            # (Paced, so most progress lines go out as events rather than coalesced.)
            f"for i in range(1, {lines} + 1):\n"
            "    print(f'n-{i}', flush=True)\n"
            f"    if i % {every} == 0:\n"
            "        print(f'::progress {i} at {i}', flush=True); time.sleep(0.1)\n",
        )
    )
    kinds = ["events", "logs/stream"]
    results: dict[int, list[tuple[str, Any]]] = {}
    failures: list[str] = []
    ready: list[int] = []  # clients whose response started: their start position is noted

    async def client(h: httpx.AsyncClient, n: int) -> None:
        got: list[tuple[str, Any]] = []
        try:
            path = f"{API}/jobs/{job['id']}/{kinds[n % 2]}"
            async with aconnect_sse(h, "GET", path) as es:
                if es.response.status_code != 200:
                    failures.append(f"client {n}: HTTP {es.response.status_code}")
                    return
                ready.append(n)
                async for ev in es.aiter_sse():
                    if ev.event not in ("message", "status"):  # (keep-alives, first state)
                        got.append((ev.event, json.loads(ev.data)))
            results[n] = got
        except Exception as exc:  # surfaced below, with the others
            failures.append(f"client {n}: {exc!r}")

    async def crowd() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(30, read=60)
        async with (
            httpx.AsyncClient(base_url=crowded, limits=limits, timeout=timeout) as h,
            anyio.create_task_group() as tg,
        ):
            for n in range(CROWD):
                tg.start_soon(client, h, n)

    # The clients run in their own thread and event loop; this thread watches the hub.
    runner = threading.Thread(target=anyio.run, args=(crowd,))
    runner.start()
    try:
        with httpx.Client(base_url=crowded, timeout=10) as c:
            wait_until(lambda: len(ready) >= CROWD or failures, 60, what=f"{CROWD} SSE clients")
            assert failures or c.get(f"{API}/streams").json()["subscribers"] >= CROWD
    finally:
        go.touch()
        runner.join(120)
    assert not runner.is_alive(), "the clients did not finish"
    assert not failures, failures[:5]
    assert len(results) == CROWD

    want_lines: list[str] = []
    for i in range(1, lines + 1):
        want_lines.append(f"n-{i}")
        if i % every == 0:
            want_lines.append(f"::progress {i} at {i}")
    for n, got in results.items():
        logs = [d["line"] for ev, d in got if ev == "log"]
        assert logs == want_lines, n
        if kinds[n % 2] == "logs/stream":
            assert [ev for ev, _ in got] == ["log"] * len(want_lines), n
            continue
        # The runner may coalesce a burst of progress lines; the last word always goes out.
        progress = [d["percent"] for ev, d in got if ev == "progress"]
        assert progress == sorted(set(progress)) and progress[-1] == float(lines), n
        assert set(progress) <= {float(i) for i in range(every, lines + 1, every)}, n
        assert got[-1][0] == "complete", n
        # Each progress event comes after the lines printed before it, not before.
        for k, (ev, d) in enumerate(got):
            if ev == "progress":
                before = {x["line"] for e, x in got[:k] if e == "log"}
                assert f"n-{int(d['percent'])}" in before, n
    first_events = next(got for n, got in results.items() if kinds[n % 2] == "events")
    for n, got in results.items():
        if kinds[n % 2] == "events":
            assert got == first_events, n
