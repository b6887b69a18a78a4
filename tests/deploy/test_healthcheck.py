"""deploy/healthcheck.py, the image's HEALTHCHECK, against a real Valkey and real HTTP."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
import redis

from orchestrator.events import runner_key
from orchestrator.services import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


@pytest.fixture(scope="module")
def hc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("launchbay_healthcheck", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def redis_env(valkey_url: str, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    monkeypatch.setenv("LAUNCHBAY_REDIS_URL", valkey_url)
    return redis.Redis.from_url(valkey_url)


def test_runner_key_matches_the_registry(hc: ModuleType) -> None:
    assert hc.RUNNER_KEY.format("runner-x") == runner_key("runner-x")


def test_worker_is_healthy_only_while_its_heartbeat_key_lives(
    hc: ModuleType, redis_env: redis.Redis
) -> None:
    argv = [
        "/opt/launchbay/bin/python",
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        "-Q",
        "lb.builtin",
        "-n",
        "runner-hc1@abc123",
        "-E",
    ]
    with pytest.raises(RuntimeError, match="runner-hc1"):
        hc.check(argv)
    redis_env.set(runner_key("runner-hc1"), "{}", ex=30)
    try:
        assert hc.check(argv) == "worker runner-hc1 ok"
    finally:
        redis_env.delete(runner_key("runner-hc1"))


def test_beat_checks_redis(
    hc: ModuleType, redis_env: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["python", "-m", "celery", "-A", "tasks.app", "beat", "-s", "/x"]
    assert hc.check(argv) == "beat ok"
    monkeypatch.setenv("LAUNCHBAY_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(OSError):
        hc.check(argv)


def test_redis_query_selects_the_database(hc: ModuleType, valkey_url: str) -> None:
    base = valkey_url.rsplit("/", 1)[0]
    client = redis.Redis.from_url(f"{base}/3")
    client.set("lb:hc:probe", "1", ex=30)
    assert hc.redis_query(f"{base}/3", "EXISTS", "lb:hc:probe") == b":1"
    assert hc.redis_query(f"{base}/0", "EXISTS", "lb:hc:probe") == b":0"
    with pytest.raises(RuntimeError, match="redis"):
        hc.redis_query(f"{base}/3", "NOSUCHCOMMAND")


class _Handler(BaseHTTPRequestHandler):
    body = b'{"status": "ok", "redis": true, "database": true}'

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        payload = self.body if self.path in ("/api/v1/healthz", "/healthcheck") else b"{}"
        self.send_response(200 if payload != b"{}" else 404)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_api_and_flower_are_checked_over_http(hc: ModuleType, http_port: int) -> None:
    api = [
        "/opt/launchbay/bin/python",
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        "0.0.0.0",
        "--port",
        str(http_port),
    ]
    assert hc.check(api) == "api ok"
    flower = ["python", "-m", "celery", "-A", "tasks.app", "flower", f"--port={http_port}"]
    assert hc.check(flower) == "flower ok"
    _Handler.body = b'{"status": "degraded", "redis": false, "database": true}'
    try:
        with pytest.raises(RuntimeError, match="degraded"):
            hc.check(api)
    finally:
        _Handler.body = b'{"status": "ok", "redis": true, "database": true}'


def test_unknown_service_is_unhealthy(hc: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="unknown service"):
        hc.check(["sleep", "100"])
