"""The launcher (agent) API over a real uvicorn, Celery worker, beat and Valkey.

Every job here demands a tag unique to its test, so the stack's Celery worker (no tags)
never consumes it and only the launchers registered by the test can claim it.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from orchestrator.events import Events, runner_key
from orchestrator.job import BuiltinSpec, Demands, utcnow
from orchestrator.schema import jobs
from orchestrator.store import JobStore
from tests.support import AgentKeyring, Stack, wait_until

L = "/api/v1/launcher"


@pytest.fixture
def tag() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def register(
    api: httpx.Client, tags: list[str], executors: list[str] | None = None, capacity: int = 1
) -> str:
    r = api.post(
        f"{L}/register",
        json={
            "executors": executors or ["builtin"],
            "tags": tags,
            "capacity": capacity,
            "hostname": "test-host",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["poll_timeout_s"] == 30
    assert 0 < body["heartbeat_interval_s"] <= body["lease_s"] / 3
    return body["launcher_id"]  # type: ignore[no-any-return]


def spec(tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "executor": "builtin",
        "type": "countdown",
        "params": {"seconds": 1},
        "demands": {"tags": [tag]},
        **extra,
    }


def poll(api: httpx.Client, launcher_id: str, wait: float = 5) -> httpx.Response:
    return api.get(
        f"{L}/jobs", params={"launcher_id": launcher_id, "wait": wait}, timeout=wait + 15
    )


def claim(api: httpx.Client, launcher_id: str) -> dict[str, Any]:
    r = poll(api, launcher_id)
    assert r.status_code == 200, r.text
    return r.json()["job"]  # type: ignore[no-any-return]


def post(
    api: httpx.Client, job_id: str, what: str, launcher_id: str, attempt: int = 1, **body: Any
) -> httpx.Response:
    return api.post(
        f"{L}/jobs/{job_id}/{what}", json={"launcher_id": launcher_id, "attempt": attempt, **body}
    )


def event_types(events: Events, job_id: str) -> list[str]:
    return [e["type"] for e in events.read_events(job_id)]


# ------------------------------------------------------------------ registration


def test_register_shows_agent_in_workers_and_stats(api: httpx.Client, tag: str) -> None:
    lid = register(api, [tag, "gpu"], ["builtin", "process"], capacity=3)
    assert lid.startswith("runner-") and len(lid) == len("runner-") + 12
    workers = {w["id"]: w for w in api.get("/api/v1/workers").json()}
    assert workers[lid]["kind"] == "agent"
    assert workers[lid]["tags"] == sorted([tag, "gpu"])
    assert workers[lid]["executors"] == ["builtin", "process"]
    assert workers[lid]["capacity"] == 3
    stats = api.get("/api/v1/stats").json()["workers"]
    assert stats["count"] >= 2  # the stack's Celery worker and this agent
    assert stats["capacity"] >= 3
    r = api.post(f"{L}/unregister", json={"launcher_id": lid})
    assert r.status_code == 204
    assert lid not in {w["id"] for w in api.get("/api/v1/workers").json()}


def test_reregistering_keeps_the_id(api: httpx.Client, tag: str) -> None:
    lid = register(api, [tag])
    r = api.post(
        f"{L}/register", json={"executors": ["builtin"], "tags": [tag, "more"], "launcher_id": lid}
    )
    assert r.status_code == 200 and r.json()["launcher_id"] == lid
    workers = {w["id"]: w for w in api.get("/api/v1/workers").json()}
    assert workers[lid]["tags"] == sorted([tag, "more"])
    celery = next(w["id"] for w in api.get("/api/v1/workers").json() if w["kind"] == "celery")
    r = api.post(f"{L}/register", json={"executors": ["builtin"], "launcher_id": celery})
    assert r.status_code == 409 and "celery" in r.json()["error"]


# ------------------------------------------------------------------ the happy path


def test_claim_start_progress_logs_complete(
    api: httpx.Client, stack: Stack, tag: str, stack_events: Events
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, name="agent-path"))
    got = claim(api, lid)
    assert got["id"] == job["id"]
    assert got["status"] == "claimed" and got["runner_id"] == lid and got["attempt"] == 1
    assert got["spec"]["type"] == "countdown"  # the agent gets the whole spec

    r = post(api, job["id"], "started", lid)
    assert r.status_code == 200 and r.json()["status"] == "running"
    r = post(api, job["id"], "progress", lid, percent=40, message="almost half")
    assert r.status_code == 200 and r.json() == {"cancel": False, "seq": None}
    r = post(
        api,
        job["id"],
        "logs",
        lid,
        lines=[
            {"stream": "stdout", "line": "hello from the agent"},
            {"stream": "stderr", "step": "build", "line": "a warning"},
        ],
    )
    assert r.status_code == 200 and r.json()["seq"] == 2
    now = stack.job(job["id"])
    assert now["progress"] == {"percent": 40, "message": "almost half"}

    steps = [{"name": "build", "exit_code": 0}]
    r = post(api, job["id"], "completed", lid, exit_code=0, result={"answer": 42}, steps=steps)
    assert r.status_code == 200, r.text
    done = stack.job(job["id"])
    assert done["status"] == "succeeded"
    assert done["runner_id"] == lid and done["exit_code"] == 0
    assert done["result"] == {"answer": 42}
    assert [s["name"] for s in done["steps"]] == ["build"]

    logs = api.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"]
    assert [(ln["seq"], ln["stream"], ln["step"], ln["line"]) for ln in logs] == [
        (1, "stdout", None, "hello from the agent"),
        (2, "stderr", "build", "a warning"),
    ]
    types = event_types(stack_events, job["id"])
    assert types[0] == "created"
    assert types[1:] == ["claimed", "started", "progress", "succeeded"]


def test_nonzero_exit_in_completed_fails_the_job(api: httpx.Client, stack: Stack, tag: str) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag))
    claim(api, lid)
    assert post(api, job["id"], "started", lid).status_code == 200
    r = post(api, job["id"], "completed", lid, exit_code=3)
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and r.json()["exit_code"] == 3
    assert "code 3" in r.json()["error"]


def test_failed_with_attempts_left_is_requeued_then_reclaimed(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, max_attempts=2, retry_backoff_s=0))
    claim(api, lid)
    r = post(api, job["id"], "failed", lid, error="disk full", exit_code=1)
    assert r.status_code == 200
    assert r.json()["status"] == "queued" and r.json()["attempt"] == 2
    again = claim(api, lid)
    assert again["id"] == job["id"] and again["attempt"] == 2
    # The old attempt's reports are refused now.
    assert post(api, job["id"], "started", lid, attempt=1).status_code == 409
    r = post(api, job["id"], "failed", lid, attempt=2, error="disk still full", exit_code=1)
    assert r.json()["status"] == "failed" and r.json()["error"] == "disk still full"


def test_a_retry_waits_out_its_backoff_before_an_agent_takes_it(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, max_attempts=2, retry_backoff_s=600))
    claim(api, lid)
    r = post(api, job["id"], "failed", lid, error="flaky", exit_code=1)
    again = r.json()
    assert again["status"] == "queued" and again["attempt"] == 2
    wait_s = (datetime.fromisoformat(again["not_before"]) - datetime.now(UTC)).total_seconds()
    assert 590 < wait_s <= 600
    assert poll(api, lid, wait=0).status_code == 204  # still backing off
    assert stack.job(job["id"])["status"] == "queued"

    # The backoff is over (moved into the past rather than waited for).
    store = JobStore(stack.settings.effective_database_url)
    try:
        with store.engine.begin() as c:
            c.execute(
                jobs.update()
                .where(jobs.c.id == job["id"])
                .values(not_before=utcnow() - timedelta(seconds=1))
            )
    finally:
        store.dispose()
    taken = claim(api, lid)
    assert taken["id"] == job["id"] and taken["attempt"] == 2


def test_timed_out_report(api: httpx.Client, stack: Stack, tag: str) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, timeout_s=2, max_attempts=3))
    claim(api, lid)
    post(api, job["id"], "started", lid)
    r = post(api, job["id"], "failed", lid, error="too slow", timed_out=True)
    assert r.json()["status"] == "timed_out"  # never retried, like the Celery path
    assert r.json()["error"] == "timed out after 2 s"


# ------------------------------------------------------------------ matching and waiting


def test_poll_answers_204_when_nothing_matches(api: httpx.Client, stack: Stack, tag: str) -> None:
    lid = register(api, [tag])
    needs_more = stack.submit(spec(tag) | {"demands": {"tags": [tag, "gpu"]}})
    other_executor = stack.submit(
        {"executor": "process", "command": ["true"], "demands": {"tags": [tag]}}
    )
    r = poll(api, lid, wait=0.5)
    assert r.status_code == 204
    assert stack.job(needs_more["id"])["status"] == "queued"
    assert stack.job(other_executor["id"])["status"] == "queued"
    for j in (needs_more, other_executor):
        api.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_long_poll_hands_over_a_job_submitted_while_waiting(stack: Stack, tag: str) -> None:
    with httpx.Client(base_url=stack.url, timeout=40, auth=stack.keyring) as c:
        lid = register(c, [tag])
    sent = threading.Event()
    answer: list[httpx.Response] = []

    def park() -> None:
        hooks = {"request": [lambda _req: sent.set()]}
        with httpx.Client(
            base_url=stack.url, timeout=40, event_hooks=hooks, auth=stack.keyring
        ) as c:
            answer.append(poll(c, lid, wait=25))

    t = threading.Thread(target=park)
    t.start()
    assert sent.wait(10)
    job = stack.submit(spec(tag))
    t.join(timeout=40)
    assert answer and answer[0].status_code == 200
    assert answer[0].json()["job"]["id"] == job["id"]


def test_parked_poll_of_an_unregistered_launcher_claims_nothing(stack: Stack, tag: str) -> None:
    with httpx.Client(base_url=stack.url, timeout=40, auth=stack.keyring) as c:
        lid = register(c, [tag])
    sent = threading.Event()
    answer: list[httpx.Response] = []

    def park() -> None:
        hooks = {"request": [lambda _req: sent.set()]}
        with httpx.Client(
            base_url=stack.url, timeout=40, event_hooks=hooks, auth=stack.keyring
        ) as c:
            answer.append(poll(c, lid, wait=25))

    t = threading.Thread(target=park)
    t.start()
    assert sent.wait(10)
    # The poll was accepted while registered; a draining agent unregisters, then work comes.
    assert stack.http.post(f"{L}/unregister", json={"launcher_id": lid}).status_code == 204
    job = stack.submit(spec(tag))
    t.join(timeout=40)
    # (401: the unregister, which voids its key, came before the poll was read)
    assert answer and answer[0].status_code in (204, 401, 404)
    assert stack.job(job["id"])["status"] == "queued"
    stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_capacity_limits_claims(api: httpx.Client, stack: Stack, tag: str) -> None:
    lid = register(api, [tag], capacity=1)
    first = stack.submit(spec(tag))
    second = stack.submit(spec(tag))
    assert claim(api, lid)["id"] == first["id"]  # oldest first
    assert poll(api, lid, wait=0.5).status_code == 204  # full
    post(api, first["id"], "completed", lid)
    assert claim(api, lid)["id"] == second["id"]


def test_two_launchers_racing_for_one_job(
    api: httpx.Client, stack: Stack, tag: str, stack_events: Events
) -> None:
    ids = [register(api, [tag]) for _ in range(2)]
    answers: dict[str, httpx.Response] = {}

    def go(lid: str) -> None:
        with httpx.Client(base_url=stack.url, timeout=40, auth=stack.keyring) as c:
            # Half the stack's lease (6 s): the winner never renews its claim, so a loser
            # still parked when that lease runs out would be handed the job's next attempt
            # (seen twice in CI as 200 for both, once with this job in both answers).
            answers[lid] = poll(c, lid, wait=3)

    threads = [threading.Thread(target=go, args=(lid,)) for lid in ids]
    for t in threads:
        t.start()
    job = stack.submit(spec(tag))
    for t in threads:
        t.join(timeout=40)
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [200, 204]
    winner = next(lid for lid, a in answers.items() if a.status_code == 200)
    assert answers[winner].json()["job"]["attempt"] == 1
    assert stack.job(job["id"])["runner_id"] == winner
    assert event_types(stack_events, job["id"]).count("claimed") == 1


def test_claim_next_is_a_compare_and_set(store: JobStore) -> None:
    """Seam test on the store: many threads racing for one queued job, one wins."""
    job = store.create(
        BuiltinSpec(type="countdown", params={"seconds": 1}, demands=Demands(tags=["x"]))
    )
    won: list[str] = []
    barrier = threading.Barrier(8)

    def race(n: int) -> None:
        barrier.wait()
        got = store.claim_next(f"runner-{n:012x}", ["builtin"], ["x", "y"], 30)
        if got is not None:
            won.append(got.runner_id or "")

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 1
    assert store.get(job.id).runner_id == won[0]
    assert store.claim_next("runner-000000000099", ["builtin"], ["x"], 30) is None


def test_claim_next_skips_what_it_cannot_take(store: JobStore) -> None:
    gpu = store.create(
        BuiltinSpec(type="countdown", params={"seconds": 1}, demands=Demands(tags=["gpu"]))
    )
    plain = store.create(BuiltinSpec(type="countdown", params={"seconds": 1}))
    got = store.claim_next("runner-0000000000aa", ["builtin"], ["cpu"], 30, page=1)
    assert got is not None and got.id == plain.id  # found on the second page
    assert store.get(gpu.id).status == "queued"
    assert store.claim_next("runner-0000000000aa", ["process"], ["gpu"], 30) is None


# ------------------------------------------------------------------ heartbeat, cancel, lease


def test_heartbeat_renews_leases_and_carries_cancel(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    other = register(api, [tag + "-other"])
    job = stack.submit(spec(tag))
    claim(api, lid)
    post(api, job["id"], "started", lid)
    before = datetime.fromisoformat(stack.job(job["id"])["lease_expires_at"])

    def renewed() -> bool:
        r = api.post(f"{L}/heartbeat", json={"launcher_id": lid, "jobs": [job["id"]]})
        assert r.json() == {"cancel": [], "lost": []}
        return datetime.fromisoformat(stack.job(job["id"])["lease_expires_at"]) > before

    wait_until(renewed, timeout=10, interval=0.2, what="the lease to move forward")
    # Another launcher cannot keep this job alive.
    r = api.post(f"{L}/heartbeat", json={"launcher_id": other, "jobs": [job["id"], "nope"]})
    assert r.json() == {"cancel": [], "lost": [job["id"], "nope"]}

    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    r = api.post(f"{L}/heartbeat", json={"launcher_id": lid, "jobs": [job["id"]]})
    assert r.json() == {"cancel": [job["id"]], "lost": []}
    r = post(api, job["id"], "logs", lid, lines=[{"line": "stopping"}])
    assert r.json()["cancel"] is True
    r = post(api, job["id"], "failed", lid, error="terminated", exit_code=-15)
    assert r.json()["status"] == "cancelled"


def test_success_never_wins_over_an_accepted_cancel(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, max_attempts=3))
    claim(api, lid)
    post(api, job["id"], "started", lid)
    api.post(f"/api/v1/jobs/{job['id']}/cancel")
    r = post(api, job["id"], "completed", lid, exit_code=0, result={"late": True})
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert stack.job(job["id"])["status"] == "cancelled"


def test_unrenewed_lease_is_requeued_by_the_reconciler(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag, max_attempts=2))
    claim(api, lid)
    post(api, job["id"], "started", lid)
    # No heartbeat: the lease (6 s in the test stack) runs out and beat re-queues it.
    back = stack.wait_status(job["id"], "queued", timeout=40)
    assert back["attempt"] == 2 and "lease expired" in back["error"]
    r = post(api, job["id"], "completed", lid, attempt=1)
    assert r.status_code == 409
    r = api.post(f"{L}/heartbeat", json={"launcher_id": lid, "jobs": [job["id"]]})
    assert r.json()["lost"] == [job["id"]]
    api.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_release_gives_a_claimed_or_running_job_back(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag))
    claim(api, lid)
    r = post(api, job["id"], "release", lid)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert r.json()["attempt"] == 2 and r.json()["runner_id"] is None
    assert post(api, job["id"], "started", lid).status_code == 409
    got = claim(api, lid)
    assert got["id"] == job["id"] and got["attempt"] == 2
    post(api, job["id"], "started", lid, attempt=2)
    # A draining agent hands back a running job too: queued again, nothing spent.
    back = post(api, job["id"], "release", lid, attempt=2)
    assert back.status_code == 200, back.text
    assert (back.json()["status"], back.json()["attempt"], back.json()["handbacks"]) == (
        "queued",
        3,
        2,
    )
    assert back.json()["losses"] == 0
    assert post(api, job["id"], "completed", lid, attempt=2).status_code == 409


# ------------------------------------------------------------------ artifacts


def test_artifact_upload(api: httpx.Client, stack: Stack, tag: str) -> None:
    lid = register(api, [tag])
    job = stack.submit(spec(tag))
    claim(api, lid)
    params: dict[str, str | int] = {"launcher_id": lid, "attempt": 1, "name": "out/report.txt"}
    r = api.post(f"{L}/jobs/{job['id']}/artifacts", params=params, content=b"all good\n")
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 9 and len(r.json()["sha256"]) == 64
    bad = {**params, "name": "../escape.txt"}
    assert api.post(f"{L}/jobs/{job['id']}/artifacts", params=bad, content=b"x").status_code == 400
    post(api, job["id"], "completed", lid)
    done = stack.job(job["id"])
    assert [a["name"] for a in done["artifacts"]] == ["out/report.txt"]
    got = api.get(f"/api/v1/jobs/{job['id']}/artifacts/out/report.txt")
    assert got.status_code == 200 and got.content == b"all good\n"


# ------------------------------------------------------------------ refusals


def test_reports_from_the_wrong_launcher_or_attempt_conflict(
    api: httpx.Client, stack: Stack, tag: str
) -> None:
    lid = register(api, [tag])
    intruder = register(api, [tag])
    job = stack.submit(spec(tag))
    claim(api, lid)
    reports: list[tuple[str, dict[str, Any]]] = [
        ("started", {}),
        ("progress", {"percent": 1}),
        ("logs", {"lines": [{"line": "x"}]}),
        ("completed", {}),
        ("failed", {"error": "x"}),
    ]
    for what, body in reports:
        r = post(api, job["id"], what, intruder, **body)
        assert r.status_code == 409, (what, r.text)
        assert intruder in r.json()["error"]
        r = post(api, job["id"], what, lid, attempt=2, **body)
        assert r.status_code == 409, (what, r.text)
    assert post(api, job["id"], "started", lid).status_code == 200
    assert post(api, job["id"], "started", lid).status_code == 409  # already running
    assert post(api, job["id"], "completed", lid).status_code == 200
    r = post(api, job["id"], "progress", lid, percent=100)
    assert r.status_code == 409 and "succeeded" in r.json()["error"]


def test_unknown_job_or_launcher_is_404(api: httpx.Client, tag: str, stack_events: Events) -> None:
    lid = register(api, [tag])
    r = post(api, "no-such-job", "started", lid)
    assert r.status_code == 404 and "no-such-job" in r.json()["error"]
    # An agent with no key is nobody (401); one whose registration expired is told so.
    ghost = "runner-000000000000"
    assert poll(api, ghost, wait=0).status_code == 401
    stack_events.r.delete(runner_key(lid))
    r = poll(api, lid, wait=0)
    assert r.status_code == 404 and "register again" in r.json()["error"]
    r = api.post(f"{L}/heartbeat", json={"launcher_id": lid, "jobs": []})
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("register", {"executors": ["fortran"]}, "executors.0"),
        ("register", {"executors": []}, "executors"),
        ("register", {"executors": ["builtin"], "capacity": 0}, "capacity"),
        ("register", {"executors": ["builtin"], "tags": ["has space"]}, "tags.0"),
        ("register", {"executors": ["builtin"], "launcher_id": "me"}, "launcher_id"),
        ("register", {"executors": ["builtin"], "colour": "red"}, "colour"),
        ("heartbeat", {"launcher_id": "runner-000000000000", "jobs": "abc"}, "jobs"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(
    api: httpx.Client, path: str, body: dict[str, Any], field: str, tag: str
) -> None:
    if path != "register":  # reports come from a registered agent, with its key
        body = {**body, "launcher_id": register(api, [tag])}
    r = api.post(f"{L}/{path}", json=body)
    assert r.status_code == 422, r.text
    assert field in [f["field"] for f in r.json()["fields"]], r.json()


def _key_of(api: httpx.Client, lid: str) -> dict[str, str]:
    keyring = api.auth
    assert isinstance(keyring, AgentKeyring)
    return {"Authorization": f"Bearer {keyring.keys[lid]}"}


def test_bad_poll_and_report_values_are_422(api: httpx.Client, tag: str) -> None:
    lid = register(api, [tag])
    r = api.get(f"{L}/jobs", params={"launcher_id": lid, "wait": 31})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "wait"
    r = api.get(f"{L}/jobs", params={"launcher_id": "bogus"}, headers=_key_of(api, lid))
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "launcher_id"
    r = post(api, "any", "progress", lid, percent=150)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "percent"
    r = post(api, "any", "logs", lid, lines=[])
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "lines"
    r = post(api, "any", "failed", lid)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "error"
    r = post(api, "any", "logs", lid, lines=[{"stream": "tty", "line": "x"}])
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "lines.0.stream"
