"""The built-in job types. Each takes its checked params and a context; returns a result.

They live on the worker side (not in ``tasks/``) so the remote HTTP agent can run them too.
Schemas are in ``orchestrator/jobtypes.py``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

from orchestrator.job import utcnow
from orchestrator.jobtypes import URL_FETCH_MAX_BYTES


class JobCancelled(Exception):
    """Raised inside a built-in job when its cancel event is set."""


@dataclass
class BuiltinContext:
    cancel: threading.Event
    progress: Callable[[float, str], None]
    log: Callable[[str], None]

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake and raise at once when cancelled."""
        if self.cancel.wait(seconds):
            raise JobCancelled()

    def check(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled()


def countdown(params: dict[str, Any], ctx: BuiltinContext) -> dict[str, Any]:
    total = int(params["seconds"])
    for left in range(total, 0, -1):
        ctx.progress(100 * (total - left) / total, f"{left} seconds remaining...")
        ctx.log(f"{left}...")
        ctx.sleep(1)
    ctx.progress(100, "Countdown complete!")
    return {"message": "Countdown complete!", "seconds": total}


def primes(params: dict[str, Any], ctx: BuiltinContext) -> dict[str, Any]:
    limit = int(params["limit"])
    started = time.perf_counter()
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    root = math.isqrt(limit)
    next_report = 10
    for i in range(2, root + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
        pct = 100 * i // max(root, 1)
        if pct >= next_report:
            ctx.check()
            ctx.progress(pct, f"sieved up to {i}")
            next_report = (pct // 10 + 1) * 10
    found = [i for i, is_p in enumerate(sieve) if is_p]
    ctx.progress(100, f"found {len(found)} primes up to {limit}")
    return {
        "count": len(found),
        "primes": found,
        "duration": round(time.perf_counter() - started, 6),
    }


def fibonacci(params: dict[str, Any], ctx: BuiltinContext) -> dict[str, Any]:
    count = int(params["count"])
    started = time.perf_counter()
    numbers: list[int] = []
    a, b = 1, 1
    for n in range(1, count + 1):
        numbers.append(a)
        a, b = b, a + b
        if n % 10 == 0 or n == count:
            ctx.check()
            ctx.progress(100 * n / count, f"generated {n}/{count}")
    # JSON consumers (browsers) lose precision past 2**53: send big ones as strings.
    out = [x if x < 2**53 else str(x) for x in numbers]
    return {"numbers": out, "count": count, "duration": round(time.perf_counter() - started, 6)}


class BodyTooLarge(Exception):
    """A fetched body went past the job's ``max_bytes``; ``read`` bytes were read."""

    def __init__(self, message: str, read: int) -> None:
        super().__init__(message)
        self.read = read


async def _read_at_most(resp: httpx.Response, limit: int) -> int:
    """Read ``resp``'s body (decoded), keeping none of it; BodyTooLarge past ``limit``
    bytes, on the declared length first, then on what arrives (a server may not say)."""
    declared = resp.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes is larger than max_bytes ({limit})", 0)
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(
                f"body larger than max_bytes ({limit}); stopped reading at {size} bytes", size
            )
    return size


def url_fetch(params: dict[str, Any], ctx: BuiltinContext) -> dict[str, Any]:
    import httpx  # here, not at the top: only this job type needs it (worker memory)

    urls: list[str] = params["urls"]
    timeout = float(params.get("timeout") or 10)
    limit = int(params.get("max_bytes") or URL_FETCH_MAX_BYTES)
    done = 0
    lock = threading.Lock()

    async def one(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        nonlocal done
        t0 = time.perf_counter()
        try:
            async with client.stream("GET", url) as resp:
                rec: dict[str, Any] = {
                    "url": url,
                    "status": resp.status_code,
                    "size": 0,
                    "ok": resp.is_success,
                }
                try:
                    rec["size"] = await _read_at_most(resp, limit)
                except BodyTooLarge as exc:
                    rec.update(size=exc.read, ok=False, error=str(exc))
        except httpx.HTTPError as exc:
            rec = {
                "url": url,
                "status": None,
                "size": 0,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
            }
        rec["duration"] = round(time.perf_counter() - t0, 4)
        with lock:
            done += 1
            ctx.progress(100 * done / len(urls), f"Fetched {done}/{len(urls)} URLs")
        ctx.log(f"{rec['status']} {url} {rec['size']}B {rec['duration']}s")
        return rec

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            tasks = [asyncio.create_task(one(client, u)) for u in urls]
            pending = set(tasks)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=0.1)
                if ctx.cancel.is_set():
                    for t in pending:
                        t.cancel()
                    raise JobCancelled()
            return [t.result() for t in tasks]

    results = asyncio.run(main())
    return {
        "results": results,
        "ok": sum(1 for r in results if r["ok"]),
        "failed": sum(1 for r in results if not r["ok"]),
    }


def echo_delay(params: dict[str, Any], ctx: BuiltinContext) -> dict[str, Any]:
    delay = int(params["delay"])
    for waited in range(delay):
        ctx.progress(100 * waited / delay, f"{delay - waited} seconds until echo")
        ctx.sleep(1)
    ctx.progress(100, "echoed")
    ctx.log(params["message"])
    return {"message": params["message"], "echoed_at": utcnow().isoformat()}


JOB_FUNCTIONS: dict[str, Callable[[dict[str, Any], BuiltinContext], Any]] = {
    "countdown": countdown,
    "primes": primes,
    "fibonacci": fibonacci,
    "url_fetch": url_fetch,
    "echo_delay": echo_delay,
}
