"""Flow control on the real stack: Celery workers on a real Valkey, a real agent, the API
over real sockets. Priorities on one busy slot, a keyed limit across three workers and an
agent, idempotent submits, and a dependency chain."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.schema import attempts, jobs
from orchestrator.store import JobStore
from tests.support import TERMINAL, Stack, TaggedWorker, wait_until
from tests.workers.test_agent import start_agent  # noqa: F401  (the agent fixture)


@pytest.fixture
def store(stack: Stack) -> Iterator[JobStore]:
    st = JobStore(stack.settings.effective_database_url, create=False)
    yield st
    st.dispose()


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value)


def primes(tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "executor": "builtin",
        "type": "primes",
        "params": {"limit": 100},
        "demands": {"tags": [tag]},
        **extra,
    }


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return {"executor": "process", "command": ["sh", "-c", script], **extra}


# ---------------------------------------------------------------- priorities


@pytest.mark.slow
def test_priority_9_jobs_start_before_priority_0_on_one_busy_slot(stack: Stack) -> None:
    tag = f"prio-{uuid.uuid4().hex[:8]}"
    worker = TaggedWorker(stack, tag, concurrency=1)
    worker.start()
    try:
        blocker = stack.submit(
            {
                "executor": "builtin",
                "type": "countdown",
                "params": {"seconds": 3},
                "demands": {"tags": [tag]},
            }
        )
        stack.wait_status(blocker["id"], "running", timeout=60)
        submitted = [stack.submit(primes(tag, priority=9 if i % 2 else 0)) for i in range(20)]
        assert stack.job(blocker["id"])["status"] == "running"  # all 20 sent to a busy slot
        done = [stack.wait_status(j["id"], "succeeded", timeout=120) for j in submitted]
        by_start = sorted(done, key=lambda j: _t(j["started_at"]))
        order = [j["spec"]["priority"] for j in by_start]
        assert order == [9] * 10 + [0] * 10, order
    finally:
        worker.stop()


# ---------------------------------------------------------------- keyed limits


@pytest.mark.slow
def test_a_key_limited_to_2_never_runs_more_than_2_across_3_workers_and_an_agent(
    stack: Stack,
    store: JobStore,
    start_agent: Any,  # noqa: F811
) -> None:
    tag = f"lim-{uuid.uuid4().hex[:8]}"
    key = f"team-{uuid.uuid4().hex[:8]}"
    workers = [TaggedWorker(stack, tag, concurrency=2) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        agent = start_agent([tag], capacity=2)
        r = stack.http.put(f"/api/v1/limits/{key}", json={"max_running": 2})
        assert r.status_code == 200 and r.json()["max_running"] == 2, r.text

        peak, samples = 0, 0
        stop = threading.Event()

        def running_now() -> int:
            with store.engine.connect() as c:
                return int(
                    c.execute(
                        sa.select(sa.func.count()).where(
                            jobs.c.concurrency_key == key,
                            jobs.c.status.in_(["claimed", "running"]),
                        )
                    ).scalar_one()
                )

        def sample() -> None:
            nonlocal peak, samples
            while not stop.is_set():
                peak = max(peak, running_now())
                samples += 1
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        spec = {
            "executor": "builtin",
            "type": "echo_delay",
            "params": {"message": "hi", "delay": 1},
            "demands": {"tags": [tag]},
            "concurrency_key": key,
        }
        ids = [stack.submit(spec)["id"] for _ in range(30)]
        waiting = stack.job(ids[-1])
        if waiting["status"] == "queued":
            assert waiting["waiting"]["reason"] == "concurrency_limit"
            assert waiting["waiting"]["message"].startswith(f"waiting: {key} ")
        ended = [stack.wait_status(i, TERMINAL, timeout=240) for i in ids]
        stop.set()
        sampler.join(5)
        assert [j["status"] for j in ended] == ["succeeded"] * 30
        assert samples > 50 and peak == 2, (samples, peak)
        with store.engine.connect() as c:
            spans = c.execute(
                sa.select(attempts.c.runner_id).where(attempts.c.job_id.in_(ids))
            ).all()
        runners = {s.runner_id for s in spans}
        assert len(runners) >= 3, runners  # spread over several workers (and the agent)
        assert agent.id in runners, (agent.id, runners)
    finally:
        for w in workers:
            w.stop()
        stack.http.delete(f"/api/v1/limits/{key}")


# ---------------------------------------------------------------- idempotency


def test_the_same_idempotency_key_twice_gives_one_job(stack: Stack) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    label = {"idem": key[:40]}
    body = {"executor": "builtin", "type": "primes", "params": {"limit": 100}, "labels": label}
    first = stack.http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    again = stack.http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    other = stack.http.post(
        "/api/v1/jobs", json={**body, "priority": 5}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409 and "different body" in other.json()["error"]
    stack.wait_status(first.json()["id"], "succeeded")
    from orchestrator.store import JobStore as _Store

    st = _Store(stack.settings.effective_database_url, create=False)
    try:
        assert st.list(labels=label)[1] == 1
    finally:
        st.dispose()


# ---------------------------------------------------------------- dependencies


def test_a_chain_runs_in_order(stack: Stack) -> None:
    a = stack.submit(sh("sleep 0.5"))
    b = stack.submit(sh("sleep 0.2", depends_on=[a["id"]]))
    c = stack.submit(sh("true", depends_on=[b["id"]]))
    early = stack.job(c["id"])
    assert early["status"] == "queued" and early["waiting"]["reason"] == "dependency"
    assert early["waiting"]["waiting_on"] == [b["id"]]
    c_ = stack.wait_status(c["id"], TERMINAL, timeout=60)
    a_, b_ = stack.job(a["id"]), stack.job(b["id"])
    assert [x["status"] for x in (a_, b_, c_)] == ["succeeded"] * 3
    assert _t(b_["started_at"]) >= _t(a_["finished_at"])
    assert _t(c_["started_at"]) >= _t(b_["finished_at"])


def test_a_failed_head_ends_the_chain_with_the_reason(stack: Stack) -> None:
    a = stack.submit(sh("sleep 0.3; exit 3"))
    b = stack.submit(sh("true", depends_on=[a["id"]]))
    c = stack.submit(sh("true", depends_on=[b["id"]]))
    c_ = stack.wait_status(c["id"], TERMINAL, timeout=60)
    a_, b_ = stack.job(a["id"]), stack.job(b["id"])
    assert (a_["status"], b_["status"], c_["status"]) == ("failed", "cancelled", "cancelled")
    assert b_["error"] == f"not run: dependency {a['id']} ended failed"
    assert c_["error"] == f"not run: dependency {b['id']} ended cancelled"
    assert b_["started_at"] is None and c_["started_at"] is None


def test_an_unknown_dependency_is_a_422_naming_the_field(stack: Stack) -> None:
    r = stack.http.post("/api/v1/jobs", json=sh("true", depends_on=["nope"]))
    assert r.status_code == 422, r.text
    assert "depends_on" in r.text


# ---------------------------------------------------------------- re-runs over HTTP


def test_rerun_one_and_rerun_failed_by_filter(stack: Stack) -> None:
    label = {"rerun": uuid.uuid4().hex[:12]}
    bad = stack.submit(sh("exit 4", labels=label))
    stack.wait_status(bad["id"], "failed")
    r = stack.http.post(f"/api/v1/jobs/{bad['id']}/rerun")
    assert r.status_code == 201 and r.json()["rerun_of"] == bad["id"], r.text
    stack.wait_status(r.json()["id"], "failed")
    bulk = stack.http.post("/api/v1/jobs/rerun", json={"labels": label})
    assert bulk.status_code == 201, bulk.text
    assert sorted(j["rerun_of"] for j in bulk.json()["items"]) == sorted(
        [bad["id"], r.json()["id"]]
    )
    queued = stack.submit(sh("sleep 5", labels=label))
    refused = stack.http.post(f"/api/v1/jobs/{queued['id']}/rerun")
    assert refused.status_code == 409
    stack.http.post(f"/api/v1/jobs/{queued['id']}/cancel")


def test_run_at_and_limits_over_http(stack: Stack) -> None:
    later = time.time() + 3600
    when = datetime.fromtimestamp(later).astimezone().isoformat()
    job = stack.submit(sh("true", run_at=when))
    assert job["waiting"]["reason"] == "run_at"
    stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")
    bad = stack.http.put("/api/v1/limits/k", json={"max_running": -1})
    assert bad.status_code == 422 and "max_running" in bad.text
    got = wait_until(lambda: stack.http.get("/api/v1/limits").status_code == 200)
    assert got


# ---------------------------------------------------------------- schedules over HTTP


def test_schedule_crud_and_refusals(stack: Stack) -> None:
    spec = {"executor": "builtin", "type": "primes", "params": {"limit": 100}}
    bad_cron = stack.http.post(
        "/api/v1/schedules", json={"name": "x", "cron": "61 * * * *", "spec": spec}
    )
    assert bad_cron.status_code == 422 and "cron" in bad_cron.text
    bad_zone = stack.http.post(
        "/api/v1/schedules",
        json={"name": "x", "cron": "0 * * * *", "timezone": "Nowhere/Atlantis", "spec": spec},
    )
    assert bad_zone.status_code == 422 and "timezone" in bad_zone.text
    made = stack.http.post(
        "/api/v1/schedules",
        json={"name": "hourly", "cron": "0 * * * *", "spec": spec, "overlap": "queue"},
    )
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert len(made.json()["next_fire_times"]) == 5
    limits = {x["key"]: x for x in stack.http.get("/api/v1/limits").json()}
    assert limits[f"schedule:{sid}"]["max_running"] == 1  # overlap "queue": one at a time
    patched = stack.http.patch(f"/api/v1/schedules/{sid}", json={"cron": "30 * * * *"})
    assert patched.status_code == 200 and patched.json()["next_fire_at"].endswith(":30:00Z")
    paused = stack.http.post(f"/api/v1/schedules/{sid}/pause").json()
    assert paused["paused"] is True and paused["next_fire_times"] == []
    assert stack.http.post(f"/api/v1/schedules/{sid}/resume").json()["paused"] is False
    assert stack.http.get("/api/v1/schedules").status_code == 200
    assert stack.http.delete(f"/api/v1/schedules/{sid}").status_code == 200
    assert stack.http.get(f"/api/v1/schedules/{sid}").status_code == 404
    assert f"schedule:{sid}" not in {x["key"] for x in stack.http.get("/api/v1/limits").json()}
    assert stack.http.post("/api/v1/jobs/no-such-job/rerun").status_code == 404
