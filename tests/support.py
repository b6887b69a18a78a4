"""Helpers for tests: bounded waits and a handle on a running stack."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
import redis
import sqlalchemy as sa

from orchestrator.events import Events, connect
from orchestrator.runners import new_runner_id
from orchestrator.services import Supervisor, api_argv, wait_http, worker_argv
from orchestrator.settings import Settings

T = TypeVar("T")

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def wait_until(
    fn: Callable[[], T | Literal[False] | None],
    timeout: float = 30,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def run_probe(code: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter at the repository's root (with ``args``); the
    JSON object it printed last. Fails the test with its stderr if it failed."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@functools.cache
def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class AgentKeyring(httpx.Auth):
    """Lets a test's client speak for the agents it registered: it keeps the key each
    registration returns and presents it on every ``/launcher`` call naming that agent (in
    the query or the JSON body). A call naming an agent it has no key for goes with the
    client's own token (or none): the API refuses it, as it should."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.keys: dict[str, str] = {}

    def _named(self, request: httpx.Request) -> str | None:
        lid = request.url.params.get("launcher_id")
        if lid is None and request.headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError, AttributeError):
                lid = json.loads(request.content or b"{}").get("launcher_id")
        return lid if isinstance(lid, str) else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            key = (
                self.keys.get(self._named(request) or "")
                if "/launcher/" in request.url.path
                else None
            )
            if key or self.token:
                request.headers["Authorization"] = f"Bearer {key or self.token}"
        response = yield request
        if request.url.path.endswith("/launcher/register") and response.status_code == 200:
            response.read()
            body = response.json()
            if body.get("agent_key"):
                self.keys[body["launcher_id"]] = body["agent_key"]


class Stack:
    """A running API + worker + beat; ``url`` is the API's base URL."""

    def __init__(self, settings: Settings, supervisor: Supervisor) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.url = f"http://127.0.0.1:{settings.api_port}"
        self.keyring = AgentKeyring(settings.token)
        self.http = httpx.Client(base_url=self.url, timeout=30, auth=self.keyring)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/api/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_status(
        self, job_id: str, statuses: Iterable[str] | str = TERMINAL, timeout: float = 30
    ) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)

        seen: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            seen.update(self.job(job_id))
            return seen if seen["status"] in wanted else None

        try:
            return wait_until(check, timeout, what=f"job {job_id} to reach {sorted(wanted)}")
        except AssertionError as exc:  # say where the job was instead
            raise AssertionError(f"{exc}; the job: {seen}") from None

    def wait_for_workers(self, n: int, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            stats = self.http.get("/api/v1/stats").json()
            return stats if stats["workers"]["count"] >= n else None

        return wait_until(check, timeout, interval=0.2, what=f"{n} live worker(s)")


def start_stack(settings: Settings, **parts: bool) -> Stack:
    """A stack of a test's own (``parts``: which of api, worker, beat to leave out);
    returns once the API answers."""
    sup = Supervisor(settings, log_dir=settings.home / "service-logs", say=lambda _l: None)
    sup.add_stack(flower=False, **parts)
    sup.start()
    try:
        wait_http(
            f"http://127.0.0.1:{settings.api_port}/api/v1/healthz",
            timeout=60,
            alive=lambda: sup.poll_dead() is None,
        )
    except BaseException:
        sup.stop()
        raise
    return Stack(settings, sup)


def stop_stack(stack: Stack) -> None:
    stack.http.close()
    stack.supervisor.stop()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows "(command)"


class RedisCommands:
    """Counts the commands ``client`` sends from now on, by name (a pipeline's would not
    pass here)."""

    def __init__(self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = client.execute_command

        def counted(*args: Any, **options: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return real(*args, **options)

        monkeypatch.setattr(client, "execute_command", counted)


def events_of(stack: Stack) -> Events:
    """A Redis events handle on ``stack``'s database (close its ``.r`` when done)."""
    return Events(connect(stack.settings.effective_redis_url), logs_dir=stack.settings.logs_dir)


class TaggedWorker:
    """A Celery worker of a test's own on ``stack``'s Redis and store, offering ``tag``, so
    only the jobs that demand the tag reach it (the stack's own worker has no tags)."""

    def __init__(self, stack: Stack, tag: str, concurrency: int = 6, **settings: Any) -> None:
        self.stack, self.tag, self.concurrency = stack, tag, concurrency
        self.overrides = settings
        self.sup: Supervisor | None = None
        self.runner_id = ""

    def start(self) -> str:
        """Start it (again); its runner id once it is listed as live."""
        s = self.stack.settings.model_copy(
            update={
                "worker_tags": [self.tag],
                "worker_executors": ["builtin", "process"],
                "worker_concurrency": self.concurrency,
                **self.overrides,
            }
        )
        self.runner_id = new_runner_id()
        log_dir = s.home / "service-logs" / f"worker-{self.tag}"
        self.sup = Supervisor(s, log_dir=log_dir, say=lambda _l: None)
        self.sup.add(
            "worker", worker_argv(s, self.runner_id), env={"LAUNCHBAY_RUNNER_ID": self.runner_id}
        )
        self.sup.start()
        rid = self.runner_id
        wait_until(
            lambda: any(w["id"] == rid for w in self.stack.http.get("/api/v1/workers").json()),
            timeout=60,
            interval=0.2,
            what=f"worker {rid} to register",
        )
        return rid

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the worker and its pool, at once)."""
        import os
        import signal

        assert self.sup is not None
        for svc in self.sup.services:
            if svc.proc is not None and svc.proc.poll() is None:
                os.killpg(svc.proc.pid, signal.SIGKILL)
                svc.proc.wait(10)

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()


@contextlib.contextmanager
def network_lock(basetemp: Path, *, exclusive: bool) -> Iterator[None]:
    """Chromium aborts its requests with ERR_NETWORK_CHANGED whenever a network interface
    comes or goes, and Docker adds one per container (compose a bridge per project). Under
    xdist the browser tests hold this lock exclusively and the tests that start containers
    hold it shared, so the two never overlap. One per session (the workers' temp folders
    share a parent); a session in one process runs its tests in turn and needs no lock."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    with open(basetemp.parent / "network.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def private_api(
    settings: Settings, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """An API process of a test's own (its settings and extra environment), on the given
    settings' Redis and store; yields its base URL once it answers."""
    sup = Supervisor(settings, log_dir=log_dir, say=lambda _: None)
    sup.add("api", api_argv(settings), env=env or {})
    sup.start()
    try:
        url = f"http://127.0.0.1:{settings.api_port}"
        wait_http(f"{url}/api/v1/healthz", timeout=60, alive=lambda: sup.poll_dead() is None)
        yield url
    finally:
        sup.stop()


class SqlSent:
    """Every statement an engine's connections send to the database, BEGIN and COMMIT
    included, as its first two words (``sent``), seen where the driver sends it: SQLite's
    trace callback; on PostgreSQL, libpq's protocol trace (each ``Query`` or ``Parse``
    message). PRAGMAs (SQLite's write lock sets its wait) are left out."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.sent: list[str] = []
        self._traces: list[Any] = []

    def __enter__(self) -> SqlSent:
        sa.event.listen(self.engine.pool, "checkout", self._watch)
        sa.event.listen(self.engine.pool, "checkin", self._unwatch)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine.pool, "checkout", self._watch)
        sa.event.remove(self.engine.pool, "checkin", self._unwatch)

    def _watch(self, dbapi_conn: Any, *_rest: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.set_trace_callback(self._sql)
        else:
            trace = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed at checkin)
            self._traces.append(trace)
            dbapi_conn.pgconn.trace(trace.fileno())

    def _unwatch(self, dbapi_conn: Any, *_rest: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.set_trace_callback(None)
            return
        dbapi_conn.pgconn.untrace()
        trace = self._traces.pop()
        trace.seek(0)
        for line in trace:  # <ts> F <len> Parse  "" "SELECT …   (F: from the client)
            fields = line.rstrip("\n").split("\t")
            if len(fields) > 4 and fields[1] == "F" and fields[3] in ("Query", "Parse"):
                message = fields[4].strip()
                self._sql(message.split('"" "', 1)[-1].strip('"'))
        trace.close()

    def _sql(self, statement: str) -> None:
        if not statement.upper().startswith("PRAGMA"):  # (the write lock's wait settings)
            self.sent.append(" ".join(statement.split()[:2]).upper())
