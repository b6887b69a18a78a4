"""Jobs through the whole path against their baselines, measured in the same run:

* ``throughput``: trivial built-in jobs over HTTP vs a raw Celery no-op (SQLite and
  PostgreSQL), CPU per job by process, and one job at a time (p50 submit → observed end);
* ``process``: submit → running for ``true`` vs spawning it with ``Popen``;
* ``docker``: submit → container running vs a bare ``docker run`` of the same local image;
* ``logs``: a process job printing N lines until all are readable vs ``seq`` alone;
* ``rss``: idle memory per process vs bare Celery and a minimal FastAPI app.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from bench.common import (
    ROOT,
    RawWorkers,
    Row,
    Stack,
    cpu_s,
    pct,
    postgres,
    pss_mb,
    rss_mb,
    self_cpu_s,
    tree,
)
from orchestrator.services import free_port, wait_http

TRIVIAL = {"executor": "builtin", "type": "fibonacci", "params": {"count": 1}}
WAIT_S = 30
ENDED = ("succeeded", "failed", "cancelled", "timed_out")


def _finish(h: httpx.Client, jid: str) -> dict[str, Any]:
    """The job once ended: one long-poll (``?wait=``), repeated if the wait ran out."""
    while True:
        job = h.get(f"/api/v1/jobs/{jid}", params={"wait": WAIT_S}).json()
        if job["status"] in ENDED:
            return job


def _until_ended(h: httpx.Client, n: int, before: dict[str, Any]) -> None:
    """Until ``n`` more jobs than in ``before`` (a ``/stats`` answer) have ended: one cheap
    count a tick, as a dashboard would, not one request per job. Raises if any failed."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        stats = h.get("/api/v1/stats").json()
        ended = sum(stats[s] - before[s] for s in ENDED)
        if ended >= n:
            if stats["succeeded"] - before["succeeded"] < n:
                raise RuntimeError(f"not all jobs succeeded: {stats}")
            return
        time.sleep(0.05)  # (a bench's observation tick, not a synchronisation)
    raise TimeoutError(f"{n} jobs did not end")


def _submit_all(h: httpx.Client, spec: dict[str, Any], n: int, threads: int = 8) -> list[str]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _i: h.post("/api/v1/jobs", json=spec).json()["id"], range(n)))


def _raw(url: str, n: int, slots: int, valkey_pid: int | None) -> dict[str, Any]:
    with RawWorkers(url, 1, slots) as raw:
        from bench.raw_app import noop

        noop.delay().get(timeout=60)
        rtts = []
        for _ in range(min(100, n)):
            t0 = time.perf_counter()
            noop.delay().get(timeout=30)
            rtts.append(time.perf_counter() - t0)
        parent = raw.procs[0].pid
        kids = [p for p in tree(parent) if p != parent]
        before = [
            cpu_s([parent]),
            cpu_s(kids),
            cpu_s([valkey_pid] if valkey_pid else []),
            self_cpu_s(),
        ]
        t0 = time.perf_counter()
        results = [noop.delay() for _ in range(n)]
        for r in results:
            r.get(timeout=120)
        elapsed = time.perf_counter() - t0
        after = [
            cpu_s([parent]),
            cpu_s(kids),
            cpu_s([valkey_pid] if valkey_pid else []),
            self_cpu_s(),
        ]
        cpu = {
            k: (a - b) * 1000 / n
            for k, a, b in zip(("parent", "pool", "valkey", "client"), after, before, strict=True)
        }
        return {"rate": n / elapsed, "p50": pct(rtts, 0.5), "cpu": cpu}


def _launchbay(
    url: str, n: int, slots: int, valkey_pid: int | None, db: str | None
) -> dict[str, Any]:
    with (
        Stack(url, slots=slots, database_url=db) as st,
        httpx.Client(base_url=st.base, timeout=60) as h,
    ):
        _finish(h, h.post("/api/v1/jobs", json=TRIVIAL).json()["id"])
        rtts, one_request = [], []
        segments: dict[str, list[float]] = {k: [] for k in _SEGMENTS}
        for _ in range(min(100, n)):  # (the two ways, taking turns)
            t0 = time.perf_counter()
            _finish(h, h.post("/api/v1/jobs", json=TRIVIAL).json()["id"])
            rtts.append(time.perf_counter() - t0)
            t0, wall0 = time.perf_counter(), time.time()
            job = h.post("/api/v1/jobs", json=TRIVIAL, params={"wait": WAIT_S}).json()
            if job["status"] in ENDED:
                for k, v in _segments_of(job, wall0, time.time()).items():
                    segments[k].append(v)
            else:
                _finish(h, job["id"])
            one_request.append(time.perf_counter() - t0)
        api, parent = st.pid("api"), st.pid("worker0")
        kids = [p for p in tree(parent) if p != parent]
        groups = {
            "api": [api],
            "parent": [parent],
            "pool": kids,
            "valkey": [valkey_pid] if valkey_pid else [],
        }
        before = {k: cpu_s(v) for k, v in groups.items()} | {"client": self_cpu_s()}
        stats = h.get("/api/v1/stats").json()
        t0 = time.perf_counter()
        _submit_all(h, TRIVIAL, n)
        _until_ended(h, n, stats)
        elapsed = time.perf_counter() - t0
        after = {k: cpu_s(v) for k, v in groups.items()} | {"client": self_cpu_s()}
        cpu = {k: (after[k] - before[k]) * 1000 / n for k in before}
        # The same jobs in one POST /jobs/batch (what a client with many jobs at hand
        # does; raw Celery's delay() in a loop is client-side batching too).
        stats = h.get("/api/v1/stats").json()
        t0 = time.perf_counter()
        made = h.post("/api/v1/jobs/batch", json={"jobs": [TRIVIAL] * n})
        made.raise_for_status()
        _until_ended(h, n, stats)
        batch_rate = n / (time.perf_counter() - t0)
        return {
            "rate": n / elapsed,
            "batch_rate": batch_rate,
            "p50": pct(rtts, 0.5),
            "p50_one_request": pct(one_request, 0.5),
            "segments": {k: pct(v, 0.5) for k, v in segments.items()},
            "cpu": cpu,
        }


# Where one job's round trip (POST ?wait=) goes, from the job's own time stamps (the store's
# clock is this machine's): the request until the API stamps the job created (HTTP, validation,
# the thread hop); created until a runner's claim stamps it (the insert's commit, the Redis
# call, Celery's worker parent, the pool child, the claim); claimed until its end is stamped
# (the claim's commit, the attempt, the built-in's run); the end until the client has the
# answer (the end's commit, its event, the API's answer, the client's read).
_SEGMENTS = ("request → created", "→ claimed", "→ ended", "→ client has it")


def _segments_of(job: dict[str, Any], sent: float, answered: float) -> dict[str, float]:
    created, claimed, ended = (
        datetime.fromisoformat(job[k]).timestamp()
        for k in ("created_at", "claimed_at", "finished_at")
    )
    return dict(
        zip(
            _SEGMENTS,
            (created - sent, claimed - created, ended - claimed, answered - ended),
            strict=True,
        )
    )


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of several runs' results (``cpu`` by process too): its median."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        if isinstance(first, dict):
            out[key] = _median_of([r[key] for r in runs])
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def _rounds(raws: list[dict[str, Any]], lbs: list[dict[str, Any]], key: str) -> str:
    """Each round's ratio of Launchbay's ``key`` to raw Celery's jobs/s, for a note."""
    if len(raws) < 2:
        return ""
    ratios = ", ".join(f"{b[key] / a['rate']:.2f}" for a, b in zip(raws, lbs, strict=True))
    return f"; median of {len(raws)} rounds ({ratios})"


def throughput(
    url: str, valkey_pid: int | None, *, jobs: int = 400, slots: int = 2, rounds: int = 5
) -> list[Row]:
    """SQLite and PostgreSQL, each against raw Celery measured just before it, ``rounds``
    times taking turns: each figure is the median of its rounds, and the jobs/s rows name
    every round's ratio. (One round's ratio moves by ±10 % on a quiet hour of this
    machine, and from 0.23 to 0.67 on a loud one, its hypervisor taking CPU time from
    it for seconds at a time: five rounds, not three, keep one such stretch out of the
    median.)"""
    rows: list[Row] = []
    with postgres() as pg:
        for label, db in (("SQLite", None), ("PostgreSQL", pg)):
            if label == "PostgreSQL" and db is None:
                rows.append(
                    Row(
                        "throughput",
                        "jobs/s, PostgreSQL",
                        1,
                        float("nan"),
                        "jobs/s",
                        note="no PostgreSQL server here",
                    )
                )
                continue
            raws, lbs = [], []
            for _ in range(rounds):  # (each round on an empty store: a new file, a new database)
                raws.append(_raw(url, jobs, slots, valkey_pid))
                store = db.url_for(db.create_database()) if db else None
                lbs.append(_launchbay(url, jobs, slots, valkey_pid, store))
            raw, lb = _median_of(raws), _median_of(lbs)

            note = f"{jobs} trivial jobs, {slots} worker processes{_rounds(raws, lbs, 'rate')}"
            rows.append(
                Row("throughput", f"jobs/s, {label}", raw["rate"], lb["rate"], "jobs/s", note=note)
            )
            rows.append(
                Row(
                    "throughput",
                    f"jobs/s, {label}, one batch POST",
                    raw["rate"],
                    lb["batch_rate"],
                    "jobs/s",
                    note=f"the {jobs} jobs in one POST /jobs/batch (raw: delay() in a loop)"
                    + _rounds(raws, lbs, "batch_rate"),
                )
            )
            for figure, key, how in (
                ("", "p50", "submit → observed end (Launchbay: POST, then GET ?wait=)"),
                (
                    ", one request",
                    "p50_one_request",
                    "submit and wait in one request: POST ?wait= (raw: delay().get()); p50 by "
                    "segment (job time stamps): "
                    + ", ".join(f"{k} {v * 1000:.2f}" for k, v in lb["segments"].items())
                    + " ms",
                ),
            ):
                rows.append(
                    Row(
                        "throughput",
                        f"one at a time p50{figure}, {label}",
                        raw["p50"] * 1000,
                        lb[key] * 1000,
                        "ms",
                        higher=False,
                        note=how,
                    )
                )
            rc, lc = raw["cpu"], lb["cpu"]
            rows.append(
                Row(
                    "throughput",
                    f"CPU per job, all processes, {label}",
                    sum(rc.values()),
                    sum(lc.values()),
                    "ms",
                    higher=False,
                    note="LB "
                    + ", ".join(f"{k} {v:.2f}" for k, v in lc.items())
                    + "; raw "
                    + ", ".join(f"{k} {v:.2f}" for k, v in rc.items()),
                )
            )
    return rows


def _spawn_ms(argv: list[str], n: int = 20) -> tuple[float, float]:
    """p50 of Popen returning, and of Popen + wait."""
    spawn, total = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.Popen(argv)
        spawn.append(time.perf_counter() - t0)
        p.wait()
        total.append(time.perf_counter() - t0)
    return pct(spawn, 0.5) * 1000, pct(total, 0.5) * 1000


def _started_ms(h: httpx.Client, spec: dict[str, Any]) -> tuple[float, float]:
    """Submit → started (the store's started_at against the client's clock, same host), and
    submit → the client sees the end."""
    t_wall, t0 = time.time(), time.perf_counter()
    job = _finish(h, h.post("/api/v1/jobs", json=spec).json()["id"])
    seen = time.perf_counter() - t0
    started = datetime.fromisoformat(job["started_at"]).timestamp()
    return (started - t_wall) * 1000, seen * 1000


def process(url: str, _valkey_pid: int | None, *, n: int = 20) -> list[Row]:
    spawn, total = _spawn_ms(["true"], n)
    spec = {"executor": "process", "command": ["true"]}
    with (
        Stack(url, slots=2, executors=("process",)) as st,
        httpx.Client(base_url=st.base, timeout=60) as h,
    ):
        _started_ms(h, spec)
        runs = [_started_ms(h, spec) for _ in range(n)]
    return [
        Row(
            "process",
            "submit → running, p50",
            spawn,
            pct([r[0] for r in runs], 0.5),
            "ms",
            higher=False,
            note="baseline: Popen(['true']) returns",
        ),
        Row(
            "process",
            "submit → client sees success, p50",
            total,
            pct([r[1] for r in runs], 0.5),
            "ms",
            higher=False,
            note="baseline: Popen + wait",
        ),
    ]


DOCKER_IMAGE = os.environ.get("LAUNCHBAY_BENCH_IMAGE", "launchbay-base:bookworm")


def docker(url: str, _valkey_pid: int | None, *, n: int = 5) -> list[Row]:
    have = subprocess.run(
        ["docker", "image", "inspect", DOCKER_IMAGE], capture_output=True, check=False
    )
    if have.returncode != 0:
        return [
            Row(
                "docker",
                "submit → container running",
                1,
                float("nan"),
                "ms",
                higher=False,
                note=f"no local image {DOCKER_IMAGE} (deploy/ci-images.sh builds it)",
            )
        ]
    bare = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", DOCKER_IMAGE, "true"], check=True, capture_output=True
        )
        bare.append((time.perf_counter() - t0) * 1000)
    spec = {
        "executor": "docker",
        "image": DOCKER_IMAGE,
        "steps": [{"name": "run", "command": ["true"]}],
    }
    with (
        Stack(url, slots=2, executors=("docker",)) as st,
        httpx.Client(base_url=st.base, timeout=120) as h,
    ):
        runs = [_started_ms(h, spec) for _ in range(n)]
    return [
        Row(
            "docker",
            "submit → container running, p50",
            pct(bare, 0.5),
            pct([r[0] for r in runs], 0.5),
            "ms",
            higher=False,
            note="baseline: the whole `docker run --rm IMAGE true`",
        ),
        Row(
            "docker",
            "submit → client sees success, p50",
            pct(bare, 0.5),
            pct([r[1] for r in runs], 0.5),
            "ms",
            higher=False,
            note="same baseline",
        ),
    ]


def logs(url: str, _valkey_pid: int | None, *, lines: int = 200_000) -> list[Row]:
    t0 = time.perf_counter()
    subprocess.run(["seq", str(lines)], check=True, stdout=subprocess.DEVNULL)
    seq_rate = lines / (time.perf_counter() - t0)
    spec = {"executor": "process", "command": ["seq", str(lines)]}
    with (
        Stack(url, slots=1, executors=("process",)) as st,
        httpx.Client(base_url=st.base, timeout=120) as h,
    ):
        t0 = time.perf_counter()
        jid = h.post("/api/v1/jobs", json=spec).json()["id"]
        job = _finish(h, jid)
        last = h.get(f"/api/v1/jobs/{jid}/logs", params={"since": lines - 1}).json()["items"]
        elapsed = time.perf_counter() - t0  # the job ended and its last line is readable
        text = h.get(f"/api/v1/jobs/{jid}/logs", params={"format": "text"}).text.split()
        got = len(text) if text == [str(i) for i in range(1, lines + 1)] else -len(text)
    lost = (
        "none lost, in order"
        if got == lines and last and job["status"] == "succeeded"
        else f"{lines - abs(got)} LOST or out of order ({job['status']})"
    )
    return [
        Row(
            "logs",
            f"{lines:,} lines, submit → all readable",
            seq_rate,
            lines / elapsed,
            "lines/s",
            note=f"baseline: seq alone; {lost}",
        )
    ]


def _idle_rss(pids: list[int], settle_s: float = 2.0) -> float:
    time.sleep(settle_s)  # (a reading, not a synchronisation: let imports and pools settle)
    return rss_mb(pids)


def _worker_memory(pid: int) -> dict[str, float]:
    """An idle worker's RSS and PSS (MB): in all, its main process, one pool child (mean)."""
    time.sleep(2.0)  # (a reading, not a synchronisation: let imports and pools settle)
    pids = tree(pid)
    children = [p for p in pids if p != pid] or [pid]
    return {
        "rss": rss_mb(pids),
        "pss": pss_mb(pids),
        "parent_rss": rss_mb([pid]),
        "parent_pss": pss_mb([pid]),
        "child_rss": rss_mb(children) / len(children),
        "child_pss": pss_mb(children) / len(children),
    }


def rss(url: str, _valkey_pid: int | None, *, slots: int = 4) -> list[Row]:
    with RawWorkers(url, 1, slots) as raw:
        celery = _worker_memory(raw.procs[0].pid)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.min_app:app",
            "--port",
            str(port),
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        fastapi_mb = _idle_rss([app.pid])
    finally:
        app.terminate()
        app.wait(10)
    with Stack(url, slots=slots, executors=("builtin", "process")) as st:
        worker = _worker_memory(st.pid("worker0"))
        api_mb = rss_mb([st.pid("api")])

    def row(key: str, figure: str, note: str) -> Row:
        return Row("rss", figure, celery[key], worker[key], "MB", higher=False, note=note)

    return [
        row("rss", f"worker + {slots} children, idle", "baseline: bare Celery, same concurrency"),
        row("pss", f"worker + {slots} children, idle, PSS", "shared pages counted once"),
        row("parent_rss", "worker main process, idle", "what each child starts as a copy of"),
        row("parent_pss", "worker main process, idle, PSS", ""),
        row("child_rss", "one pool child, idle", f"mean of {slots}"),
        row("child_pss", "one pool child, idle, PSS", f"mean of {slots}"),
        Row(
            "rss",
            "API process, idle",
            fastapi_mb,
            api_mb,
            "MB",
            higher=False,
            note="baseline: minimal FastAPI app",
        ),
    ]
