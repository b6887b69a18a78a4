"""Nobody controls Launchbay or its host without the token (issue 12), on real processes:
scoped tokens, agents' own keys, the Origin of browsers' requests and WebSockets, CORS,
write-only secrets, and what a process job on a real worker can read."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from orchestrator.services import free_port
from tests.support import Stack, private_api, wait_until

ADMIN = "admin-" + uuid.uuid4().hex
READ = "read-" + uuid.uuid4().hex
SUBMIT = "submit-" + uuid.uuid4().hex
ENROLL = "agent-" + uuid.uuid4().hex
SCRAPE = "metrics-" + uuid.uuid4().hex
FRONT_END = "https://ops.example.com"
L = "/api/v1/launcher"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def guarded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API of the session stack's Redis and store with an admin token, scoped tokens
    and an allowed browser origin."""
    settings = stack.settings.model_copy(update={"api_port": free_port(), "token": ADMIN})
    env = {
        "LAUNCHBAY_TOKENS": f"read={READ},submit={SUBMIT},agent={ENROLL},metrics={SCRAPE}",
        "LAUNCHBAY_ALLOWED_ORIGINS": FRONT_END,
    }
    with private_api(settings, tmp_path_factory.mktemp("guarded-api"), env) as url:
        yield url


@pytest.fixture
def g(guarded: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded, timeout=30) as c:
        yield c


def echo_job(tag: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"executor": "builtin", "type": "primes", "params": {}}
    if tag:
        spec = {"executor": "process", "command": ["true"], "demands": {"tags": [tag]}}
    return {**spec, **extra}


# ---------------------------------------------------------------- tokens and scopes


def test_every_route_that_acts_needs_a_token_with_its_scope(g: httpx.Client) -> None:
    assert g.get("/api/v1/jobs").status_code == 401
    assert g.get("/api/v1/jobs", headers=bearer("wrong")).status_code == 401
    assert g.get("/api/v1/healthz").status_code == 200  # liveness stays public

    assert g.get("/api/v1/jobs", headers=bearer(READ)).status_code == 200
    refused = g.post("/api/v1/jobs", json=echo_job(), headers=bearer(READ))
    assert refused.status_code == 403 and "'submit' scope" in refused.json()["error"]
    made = g.post("/api/v1/jobs", json=echo_job(), headers=bearer(SUBMIT))
    assert made.status_code == 201, made.text
    assert g.post("/api/v1/jobs", json=echo_job(), headers=bearer(ADMIN)).status_code == 201

    # Deleting history is the admin's.
    r = g.post("/api/v1/runs/cleanup", json={}, headers=bearer(SUBMIT))
    assert r.status_code == 403 and "'admin' scope" in r.json()["error"]
    assert g.delete("/api/v1/runs/nope", headers=bearer(SUBMIT)).status_code == 403
    # The enrollment and scrape tokens read nothing else.
    for token in (ENROLL, SCRAPE):
        assert g.get("/api/v1/jobs", headers=bearer(token)).status_code == 403
    # SSE streams take the token as a query parameter too (EventSource sends no header).
    job_id = made.json()["id"]
    assert g.get(f"/api/v1/jobs/{job_id}/events").status_code == 401
    with g.stream("GET", f"/api/v1/jobs/{job_id}/events", params={"token": READ}) as r:
        assert r.status_code == 200


def test_a_browsers_cross_site_request_is_refused_and_an_allowed_front_end_is_served(
    g: httpx.Client, api: httpx.Client
) -> None:
    # The open session stack (no token) too: a web page cannot make it run anything.
    r = api.post("/api/v1/jobs", json=echo_job(), headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    same = api.post(
        "/api/v1/jobs", json=echo_job(), headers={"Origin": str(api.base_url).rstrip("/")}
    )
    assert same.status_code == 201, same.text

    pre = {"Origin": FRONT_END, "Access-Control-Request-Method": "POST"}
    ok = g.options("/api/v1/jobs", headers=pre)
    assert ok.headers.get("access-control-allow-origin") == FRONT_END
    evil = g.options("/api/v1/jobs", headers={**pre, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    allowed = g.post(
        "/api/v1/jobs", json=echo_job(), headers={**bearer(SUBMIT), "Origin": FRONT_END}
    )
    assert allowed.status_code == 201
    assert allowed.headers["access-control-allow-origin"] == FRONT_END


def ws(url: str, path: str, **headers: str) -> Any:
    return connect(
        url.replace("http://", "ws://") + "/api/v1" + path,
        open_timeout=10,
        additional_headers=headers,
    )


def test_a_cross_site_websocket_cannot_create_a_job(stack: Stack) -> None:
    with (
        ws(stack.url, "/ws/queue", Origin="http://evil.example") as sock,
        pytest.raises(ConnectionClosed) as closed,
    ):
        sock.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "cross-site" in closed.value.rcvd.reason
    with ws(stack.url, "/ws/queue", Origin=stack.url) as sock:  # its own origin: served
        assert json.loads(sock.recv(timeout=10))["type"] == "queue_state"


def test_a_read_token_may_watch_the_queue_socket_but_not_submit(guarded: str) -> None:
    with ws(guarded, f"/ws/queue?token={READ}") as sock:
        assert json.loads(sock.recv(timeout=10))["type"] == "queue_state"
        sock.send(json.dumps({"type": "create_job", "spec": echo_job(), "request_id": "r1"}))
        reply = wait_until(
            lambda: next(
                (m for m in [json.loads(sock.recv(timeout=10))] if m.get("request_id") == "r1"),
                None,
            ),
            timeout=20,
        )
    assert reply["type"] == "error" and reply["code"] == 403


# ---------------------------------------------------------------- agents


def register(g: httpx.Client, tag: str, token: str = ENROLL, **body: Any) -> httpx.Response:
    return g.post(
        f"{L}/register",
        json={"executors": ["process"], "tags": [tag], **body},
        headers=bearer(token),
    )


def test_agents_act_only_as_themselves_on_jobs_they_hold(g: httpx.Client, stack: Stack) -> None:
    tag = f"t-{uuid.uuid4().hex[:10]}"
    assert register(g, tag, READ).status_code == 403  # enrolling needs the agent scope
    a, b = register(g, tag).json(), register(g, tag).json()
    key_a, key_b = a["agent_key"], b["agent_key"]
    assert key_a and key_b and key_a != key_b
    job = g.post("/api/v1/jobs", json=echo_job(tag), headers=bearer(SUBMIT)).json()
    got = g.get(
        f"{L}/jobs", params={"launcher_id": a["launcher_id"], "wait": 10}, headers=bearer(key_a)
    )
    assert got.status_code == 200 and got.json()["job"]["id"] == job["id"], got.text

    claim_a = {"launcher_id": a["launcher_id"], "attempt": 1}
    # B, naming A: refused; B as itself: it does not hold the job.
    forged = g.post(f"{L}/jobs/{job['id']}/completed", json=claim_a, headers=bearer(key_b))
    assert forged.status_code == 403 and a["launcher_id"] in forged.json()["error"]
    own = {"launcher_id": b["launcher_id"], "attempt": 1}
    assert (
        g.post(f"{L}/jobs/{job['id']}/completed", json=own, headers=bearer(key_b)).status_code
        == 409
    )
    # The API's tokens are not agents' keys; no key at all is nobody.
    for token in (SUBMIT, ENROLL):
        r = g.post(f"{L}/jobs/{job['id']}/started", json=claim_a, headers=bearer(token))
        assert r.status_code in (401, 403)
    # Ids cannot be taken over, nor agents unregistered by another.
    again = register(g, tag, launcher_id=a["launcher_id"])
    assert again.status_code == 409 and "another agent" in again.json()["error"]
    gone = g.post(f"{L}/unregister", json={"launcher_id": a["launcher_id"]}, headers=bearer(key_b))
    assert gone.status_code == 403
    assert g.post(f"{L}/jobs/{job['id']}/started", json=claim_a, headers=bearer(key_a)).is_success
    done = g.post(
        f"{L}/jobs/{job['id']}/completed", json={**claim_a, "exit_code": 0}, headers=bearer(key_a)
    )
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    for who, key in ((a, key_a), (b, key_b)):
        r = g.post(f"{L}/unregister", json={"launcher_id": who["launcher_id"]}, headers=bearer(key))
        assert r.status_code == 204
    # An unregistered agent's key is void.
    r = g.post(
        f"{L}/heartbeat", json={"launcher_id": a["launcher_id"], "jobs": []}, headers=bearer(key_a)
    )
    assert r.status_code == 401


def test_an_agent_cannot_end_a_celery_workers_running_job(g: httpx.Client, stack: Stack) -> None:
    job = g.post(
        "/api/v1/jobs",
        json={"executor": "process", "command": ["sh", "-c", "sleep 2; exit 3"]},
        headers=bearer(SUBMIT),
    ).json()
    running = stack.wait_status(job["id"], "running", timeout=60)
    agent = register(g, f"t-{uuid.uuid4().hex[:10]}").json()
    forged = g.post(
        f"{L}/jobs/{job['id']}/completed",
        json={"launcher_id": running["runner_id"], "attempt": 1, "exit_code": 0},
        headers=bearer(agent["agent_key"]),
    )
    assert forged.status_code == 403
    ended = stack.wait_status(job["id"], timeout=60)
    assert ended["status"] == "failed" and ended["exit_code"] == 3


# ---------------------------------------------------------------- what a job can read


SECRET = "hunter2-" + uuid.uuid4().hex


def test_secrets_reach_the_job_and_nothing_else(api: httpx.Client, stack: Stack) -> None:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    r = api.post(
        "/api/v1/jobs",
        json={
            "executor": "process",
            "command": ["sh", "-c", 'echo "key=$API_KEY"; printf %s "$API_KEY" | sha256sum'],
            "secrets": {"API_KEY": SECRET},
        },
    )
    assert r.status_code == 201 and SECRET not in r.text
    assert r.json()["spec"]["secrets"] == {"API_KEY": "***"}  # the name, never the value
    job = stack.wait_status(r.json()["id"], timeout=60)
    assert job["status"] == "succeeded", job
    lines = [ln["line"] for ln in api.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"]]
    assert lines[0] == "key=***" and lines[1].split()[0] == digest  # it had the value
    # Not in the job, its run record, its events, the listings.
    for path in (
        f"/api/v1/jobs/{job['id']}",
        f"/api/v1/runs/{job['id']}",
        f"/api/v1/jobs/{job['id']}/events",
        "/api/v1/jobs?limit=50",
        "/api/v1/runs?limit=50",
    ):
        with api.stream("GET", path, timeout=10) as got:
            body = got.read()
        assert got.status_code == 200 and SECRET.encode() not in body, path


def test_a_process_job_cannot_read_the_workers_secrets(api: httpx.Client, stack: Stack) -> None:
    db = stack.settings.effective_database_url.split("///", 1)[-1]
    r = api.post(
        "/api/v1/jobs",
        json={
            "executor": "process",
            "command": [
                "sh",
                "-c",
                # its parent's environment, every process's, the database file
                f"cat /proc/$PPID/environ; cat /proc/[0-9]*/environ; head -c 16 {db}; true",
            ],
        },
    )
    job = stack.wait_status(r.json()["id"], timeout=60)
    text = "\n".join(ln["line"] for ln in api.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"])
    assert "LAUNCHBAY_DATABASE_URL" not in text and "LAUNCHBAY_REDIS_URL" not in text
    assert "Permission denied" in text
    if os.geteuid() == 0:  # root's jobs run as another user: the store is out of reach
        assert "SQLite format" not in text
