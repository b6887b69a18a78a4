#!/opt/launchbay/bin/python
"""Container healthcheck for whichever Launchbay service is PID 1 (api, worker, beat, flower).

``launchbay api|worker|beat|flower`` exec the service, so PID 1's argv says which it is:
- api (uvicorn): GET /api/v1/healthz answers "ok" (Redis and the database reachable);
- worker (celery worker -n RUNNER@host): its runner key is live in Redis (heartbeat);
- beat (celery beat): Redis answers;
- flower (celery flower): GET /healthcheck answers.
Exit 0 when healthy, 1 with one line on stderr otherwise.

Standard library only, and no Launchbay import: the check runs every few seconds on
loaded machines, where importing the stack costs seconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from urllib.parse import unquote, urlsplit

# Same key as orchestrator.events.runner_key (tests/deploy/test_healthcheck.py checks).
RUNNER_KEY = "lb:runners:{}"


def _argv_of_pid1() -> list[str]:
    with open("/proc/1/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - loopback only
        return resp.read()


def _command(sock: socket.socket, *args: str) -> bytes:
    """Send one Redis command (RESP) and return its one-line reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    sock.sendall(b"".join(parts))
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(512)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        reply += chunk
    if reply.startswith(b"-"):
        raise RuntimeError(f"redis: {reply[1:].strip().decode()}")
    return reply.strip()


def redis_query(url: str, *args: str) -> bytes:
    """Run one command against the Redis at ``url`` (redis://[:password@]host:port/db)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=4) as s:
        if u.password:
            user = [unquote(u.username)] if u.username else []
            _command(s, "AUTH", *user, unquote(u.password))
        db = (u.path or "/0").strip("/") or "0"
        if db != "0":
            _command(s, "SELECT", db)
        return _command(s, *args)


def _redis_url() -> str:
    return os.environ.get("LAUNCHBAY_REDIS_URL", "redis://127.0.0.1:6379/0")


def check(argv: list[str]) -> str:
    """What is healthy, or raise with why not."""
    if any(a.endswith("uvicorn") or a == "uvicorn" for a in argv):
        port = _option(argv, "--port") or os.environ.get("LAUNCHBAY_API_PORT", "8000")
        body = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/healthz"))
        if body.get("status") != "ok":
            raise RuntimeError(f"api degraded: {body}")
        return "api ok"
    if "worker" in argv:
        name = _option(argv, "-n") or ""
        runner_id = name.split("@", 1)[0]
        if redis_query(_redis_url(), "EXISTS", RUNNER_KEY.format(runner_id)) != b":1":
            raise RuntimeError(f"runner {runner_id} has no live heartbeat in Redis")
        return f"worker {runner_id} ok"
    if "flower" in argv:
        port = _option(argv, "--port") or os.environ.get("LAUNCHBAY_FLOWER_PORT", "5555")
        _get(f"http://127.0.0.1:{port}/healthcheck")
        return "flower ok"
    if "beat" in argv:
        if redis_query(_redis_url(), "PING") != b"+PONG":
            raise RuntimeError("redis did not answer PING")
        return "beat ok"
    raise RuntimeError(f"unknown service: {' '.join(argv[:6])}")


def main() -> int:
    try:
        print(check(_argv_of_pid1()))
        return 0
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
