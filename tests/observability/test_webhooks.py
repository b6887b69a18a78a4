"""Webhooks on the real stack: signed deliveries to a receiver on loopback, retried."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from orchestrator.events import Events
from orchestrator.job import utcnow
from orchestrator.retention import cleanup_older_than
from orchestrator.schema import webhook_deliveries
from orchestrator.store import JobStore
from orchestrator.testing import MemoryEvents
from orchestrator.webhooks import WebhookSpec, WebhookStore, sign, verify
from tests.support import Stack, wait_until


class Receiver:
    """A loopback HTTP server that records every POST; answers ``codes`` in turn, then 200."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.got: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    code = owner.codes.pop(0) if owner.codes else 200
                    owner.got.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"try later")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _register(stack: Stack, url: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    r = stack.http.post(
        "/api/v1/webhooks", json={"url": url, "labels": labels, "events": ["succeeded"], **extra}
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_ten_signed_deliveries_that_verify(obs_stack: Stack, receiver: Receiver) -> None:
    labels = {"hook-run": uuid.uuid4().hex}
    hook = _register(obs_stack, receiver.url, labels)
    secret = hook["secret"]
    assert secret and len(secret) >= 16
    # The secret is shown once: never in a later answer.
    assert obs_stack.http.get(f"/api/v1/webhooks/{hook['id']}").json()["secret"] is None
    ids = {
        obs_stack.submit({"executor": "process", "command": ["true"], "labels": labels})["id"]
        for _ in range(10)
    }
    # A job without the label is not delivered.
    other = obs_stack.submit({"executor": "process", "command": ["true"]})
    obs_stack.wait_status(other["id"])
    wait_until(lambda: len(receiver.got) >= 10, timeout=60, what="10 deliveries")
    for j in ids:
        assert obs_stack.wait_status(j)["status"] == "succeeded"
    got = list(receiver.got)
    assert len(got) == 10
    seen = set()
    for headers, body, _code in got:
        assert headers["x-launchbay-event"] == "succeeded"
        ts, sig = headers["x-launchbay-timestamp"], headers["x-launchbay-signature"]
        assert verify(secret, ts, body, sig)
        assert not verify("another-secret-entirely", ts, body, sig)
        assert not verify(secret, ts, body + b" ", sig)
        import json

        payload = json.loads(body)
        assert payload["event"] == "succeeded" and payload["data"]["status"] == "succeeded"
        seen.add(payload["job_id"])
    assert seen == ids
    log = obs_stack.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json()
    assert len(log) == 10
    assert {d["status"] for d in log} == {"delivered"} and {d["tries"] for d in log} == {1}
    assert {d["response_status"] for d in log} == {200}


def test_a_receiver_failing_twice_gets_it_on_the_third_try(obs_stack: Stack) -> None:
    flaky = Receiver([500, 500])
    try:
        labels = {"hook-run": uuid.uuid4().hex}
        hook = _register(obs_stack, flaky.url, labels)
        job = obs_stack.submit({"executor": "process", "command": ["true"], "labels": labels})
        wait_until(lambda: any(code == 200 for _, _, code in flaky.got), timeout=60, what="a 200")
        assert [code for _, _, code in flaky.got] == [500, 500, 200]
        # The same delivery, tried three times, each signed afresh.
        assert len({h["x-launchbay-delivery"] for h, _, _ in flaky.got}) == 1
        for h, body, _ in flaky.got:
            assert h["x-launchbay-signature"] == sign(
                hook["secret"], h["x-launchbay-timestamp"], body
            )

        def logged() -> dict[str, Any] | None:
            log = obs_stack.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json()
            return log[0] if log and log[0]["status"] == "delivered" else None

        d = wait_until(logged, timeout=10, what="the delivery log to say delivered")
        assert d["tries"] == 3 and d["response_status"] == 200 and d["job_id"] == job["id"]
        assert d["response_body"] == "ok"
    finally:
        flaky.close()


def test_bad_webhooks_are_refused_naming_the_field(obs_stack: Stack) -> None:
    for body, field in [
        ({"url": "ftp://example.org/x"}, "url"),
        ({"url": "http://127.0.0.1/x", "events": ["exploded"]}, "events"),
        ({"url": "http://127.0.0.1/x", "secret": "short"}, "secret"),
        ({"url": "http://127.0.0.1/x", "colour": "red"}, "colour"),
    ]:
        r = obs_stack.http.post("/api/v1/webhooks", json=body)
        assert r.status_code == 422, r.text
        assert field in r.text
    assert obs_stack.http.get("/api/v1/webhooks/nope").status_code == 404
    hook = _register(obs_stack, "http://127.0.0.1:9/x", {"gone": "soon"})
    assert obs_stack.http.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert obs_stack.http.get(f"/api/v1/webhooks/{hook['id']}").status_code == 404


def test_retention_prunes_old_deliveries(store: JobStore) -> None:
    hooks = WebhookStore(store.engine)
    hook = hooks.create(WebhookSpec(url="http://127.0.0.1:9/x"))
    old = hooks.add_delivery(hook.id, "1-0", "succeeded", "j1")
    assert old is not None
    assert hooks.add_delivery(hook.id, "1-0", "succeeded", "j1") is None  # one per event
    with store.engine.begin() as c:
        c.execute(
            webhook_deliveries.update()
            .where(webhook_deliveries.c.id == old)
            .values(created_at=utcnow() - timedelta(days=40))
        )
    new = hooks.add_delivery(hook.id, "2-0", "succeeded", "j2")
    out = cleanup_older_than(
        store,
        cast(Events, MemoryEvents(logs_dir=Path("/nonexistent"))),
        None,  # type: ignore[arg-type]  # (no job here is old enough to reach the artifacts)
        30 * 86400,
    )
    assert out["errors"] == 0
    assert [d.id for d in hooks.deliveries(hook.id)] == [new]
