"""Flow control rules on the in-package fakes (fast tier): keyed limits, priorities,
dependencies, idempotent submits, re-runs, run_at and why a job waits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import JobNotEnded, ParamError
from orchestrator.idempotency import IdempotencyConflict
from orchestrator.job import JobStatus
from orchestrator.protocol import Verdict
from orchestrator.runners import RunnerInfo
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    c = memory_core(Settings(home=tmp_path / "home"))
    yield c
    c.close()


def spec(**extra: Any) -> dict[str, Any]:
    return {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}, **extra}


def run_to_end(
    core: MemoryCore, job_id: str, status: JobStatus = JobStatus.succeeded, runner: str = "r1"
) -> Any:
    job = core.lifecycle.claim(job_id, runner)
    assert job is not None, f"{job_id} could not be claimed: {core.store.get(job_id)}"
    core.lifecycle.start(job_id, runner, job.attempt)
    return core.lifecycle.end(
        job_id, runner, job.attempt, Verdict(status=status, error=None, may_retry=False)
    )


def register_runner(core: MemoryCore, **info: Any) -> None:
    core.runners.heartbeat(
        RunnerInfo(**{"executors": ["builtin", "process"], "capacity": 4, **info})
    )


# ---------------------------------------------------------------- keyed limits


def test_a_full_key_refuses_the_claim_and_holds_the_job_until_a_slot_frees(
    core: MemoryCore,
) -> None:
    core.dispatcher.flow.set_limit("team-a", 1)
    a = core.dispatcher.submit(spec(concurrency_key="team-a"))
    b = core.dispatcher.submit(spec(concurrency_key="team-a"))
    assert core.lifecycle.claim(a.id, "r1") is not None
    assert core.lifecycle.claim(b.id, "r2") is None  # no slot: the worker holds nothing
    held = core.store.get(b.id)
    assert held.status == JobStatus.queued and held.hold == "limit"
    why = core.dispatcher.flow.waiting(held)
    assert why is not None
    assert why["reason"] == "concurrency_limit" and why["message"] == "waiting: team-a 1/1"
    sent_before = len(core.celery.sent_for(b.id))
    core.lifecycle.start(a.id, "r1", 1)
    core.lifecycle.end(a.id, "r1", 1, Verdict(status=JobStatus.succeeded))
    assert core.store.get(b.id).hold is None
    assert len(core.celery.sent_for(b.id)) == sent_before + 1  # re-sent when the slot freed
    assert core.lifecycle.claim(b.id, "r2") is not None


def test_a_lost_runner_frees_its_slot_through_its_lease(core: MemoryCore) -> None:
    core.dispatcher.flow.set_limit("k", 1)
    a = core.dispatcher.submit(spec(concurrency_key="k"))
    b = core.dispatcher.submit(spec(concurrency_key="k"))
    assert core.lifecycle.claim(a.id, "gone") is not None
    assert core.lifecycle.claim(b.id, "r2") is None
    core.clock.advance(core.settings.lease_s + 1)
    core.dispatcher.reconcile()
    assert core.store.get(a.id).status == JobStatus.queued  # re-queued on its loss budget
    assert core.lifecycle.claim(b.id, "r2") is not None


def test_a_key_can_come_from_a_label(core: MemoryCore) -> None:
    job = core.dispatcher.submit(spec(labels={"team": "blue"}, concurrency_key="label:team"))
    assert job.spec.concurrency_key == "blue"
    with pytest.raises(ParamError) as err:
        core.dispatcher.submit(spec(concurrency_key="label:team"))
    assert err.value.field == "concurrency_key"


def test_a_raised_limit_sends_held_jobs_at_once(core: MemoryCore) -> None:
    core.dispatcher.flow.set_limit("k", 1)
    a = core.dispatcher.submit(spec(concurrency_key="k"))
    b = core.dispatcher.submit(spec(concurrency_key="k"))
    core.lifecycle.claim(a.id, "r1")
    assert core.lifecycle.claim(b.id, "r2") is None
    limit = core.dispatcher.flow.set_limit("k", 2)
    assert (limit.max_running, limit.running, limit.held) == (2, 1, 0)
    assert core.lifecycle.claim(b.id, "r2") is not None


# (racing claims on SQLite and PostgreSQL: tests/orchestrator/test_flow_store.py)


# ---------------------------------------------------------------- priorities


def test_priority_orders_the_pull_path_and_the_broker_message(core: MemoryCore) -> None:
    low = [core.dispatcher.submit(spec(priority=0)).id for _ in range(3)]
    high = [core.dispatcher.submit(spec(priority=9)).id for _ in range(3)]
    assert core.celery.sent_for(high[0])[0].options["priority"] == 0  # Redis: 0 first
    assert core.celery.sent_for(low[0])[0].options["priority"] == 9
    agent = RunnerInfo(id="agent-1", kind="agent", executors=["builtin"], capacity=10)
    order = [core.lifecycle.claim_next(agent) for _ in range(6)]
    ids = [j.id for j in order if j]
    assert set(ids[:3]) == set(high) and set(ids[3:]) == set(low)  # (one clock tick: ties)


def test_priority_is_bounded(core: MemoryCore) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        core.dispatcher.submit(spec(priority=10))


# ---------------------------------------------------------------- dependencies


def test_a_chain_runs_in_order(core: MemoryCore) -> None:
    a = core.dispatcher.submit(spec())
    b = core.dispatcher.submit(spec(depends_on=[a.id]))
    c = core.dispatcher.submit(spec(depends_on=[b.id]))
    assert core.celery.sent_for(b.id) == [] and core.celery.sent_for(c.id) == []
    assert core.lifecycle.claim(b.id, "r1") is None  # held: not claimable
    why = core.dispatcher.flow.waiting(core.store.get(c.id))
    assert why is not None and why["reason"] == "dependency"
    run_to_end(core, a.id)
    assert len(core.celery.sent_for(b.id)) == 1 and core.celery.sent_for(c.id) == []
    run_to_end(core, b.id)
    assert len(core.celery.sent_for(c.id)) == 1
    assert run_to_end(core, c.id).status == JobStatus.succeeded


def test_a_failed_dependency_ends_the_chain_with_the_reason(core: MemoryCore) -> None:
    a = core.dispatcher.submit(spec())
    b = core.dispatcher.submit(spec(depends_on=[a.id]))
    c = core.dispatcher.submit(spec(depends_on=[b.id]))
    run_to_end(core, a.id, JobStatus.failed)
    b_, c_ = core.store.get(b.id), core.store.get(c.id)
    assert b_.status == c_.status == JobStatus.cancelled
    assert b_.error == f"not run: dependency {a.id} ended failed"
    assert c_.error == f"not run: dependency {b.id} ended cancelled"
    assert core.store.attempts(b.id) == []  # never ran


def test_a_dependency_that_ended_already_decides_at_submit(core: MemoryCore) -> None:
    ok = core.dispatcher.submit(spec())
    run_to_end(core, ok.id)
    bad = core.dispatcher.submit(spec())
    core.dispatcher.cancel(bad.id)
    ready = core.dispatcher.submit(spec(depends_on=[ok.id]))
    assert ready.hold is None and len(core.celery.sent_for(ready.id)) == 1
    doomed = core.dispatcher.submit(spec(depends_on=[ok.id, bad.id]))
    assert doomed.status == JobStatus.cancelled and bad.id in (doomed.error or "")


def test_an_unknown_dependency_is_refused_naming_the_field(core: MemoryCore) -> None:
    with pytest.raises(ParamError) as err:
        core.dispatcher.submit(spec(depends_on=["no-such-job"]))
    assert err.value.field == "depends_on"
    assert core.store.list()[1] == 0  # nothing was stored


# ---------------------------------------------------------------- idempotency


def test_the_same_key_gives_one_job_and_another_body_conflicts(core: MemoryCore) -> None:
    flow = core.dispatcher.flow
    first, created = flow.submit_idempotent("k-1", spec(), spec())
    again, created_again = flow.submit_idempotent("k-1", spec(), spec())
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        flow.submit_idempotent("k-1", spec(priority=3), spec(priority=3))
    assert core.store.list()[1] == 1


def test_a_key_is_forgotten_after_its_time(core: MemoryCore) -> None:
    flow = core.dispatcher.flow
    first, _ = flow.submit_idempotent("k-2", spec(), spec())
    core.clock.advance(core.settings.idempotency_ttl_s + 1)
    later, created = flow.submit_idempotent("k-2", spec(), spec())
    assert created and later.id != first.id


# ---------------------------------------------------------------- re-runs


def test_rerun_makes_a_new_job_from_the_spec(core: MemoryCore) -> None:
    a = core.dispatcher.submit(spec(name="nightly", labels={"team": "x"}))
    with pytest.raises(JobNotEnded):
        core.dispatcher.flow.rerun(a.id)
    run_to_end(core, a.id, JobStatus.failed)
    again = core.dispatcher.flow.rerun(a.id)
    assert again.id != a.id and again.rerun_of == a.id
    assert again.spec == a.spec and again.status == JobStatus.queued


def test_bulk_rerun_takes_the_failed_jobs_a_filter_matches(core: MemoryCore) -> None:
    failed = [core.dispatcher.submit(spec(labels={"team": "x"})) for _ in range(2)]
    other = core.dispatcher.submit(spec(labels={"team": "y"}))
    ok = core.dispatcher.submit(spec(labels={"team": "x"}))
    for j in (*failed, other):
        run_to_end(core, j.id, JobStatus.failed)
    run_to_end(core, ok.id)
    again = core.dispatcher.flow.rerun_many(labels={"team": "x"})
    assert sorted(j.rerun_of or "" for j in again) == sorted(j.id for j in failed)


# ---------------------------------------------------------------- run_at and why it waits


def test_run_at_waits_in_the_store_and_says_so(core: MemoryCore) -> None:
    register_runner(core)
    when = core.clock() + timedelta(minutes=5)
    job = core.dispatcher.submit(spec(run_at=when.isoformat()))
    assert job.not_before == when and core.celery.sent_for(job.id) == []
    why = core.dispatcher.flow.waiting(job)
    assert why is not None and why["reason"] == "run_at"
    core.clock.advance(301)
    assert core.dispatcher.send_due() == 1
    assert len(core.celery.sent_for(job.id)) == 1


def test_a_retry_waits_out_its_backoff_and_says_so(core: MemoryCore) -> None:
    register_runner(core)
    job = core.dispatcher.submit(spec(max_attempts=2, retry_backoff_s=30))
    core.lifecycle.claim(job.id, "r1")
    core.lifecycle.start(job.id, "r1", 1)
    again = core.lifecycle.end(job.id, "r1", 1, Verdict(status=JobStatus.failed, error="x"))
    why = core.dispatcher.flow.waiting(again)
    assert why is not None and why["reason"] == "backoff" and why["until"]


def test_no_live_runner_is_a_reason_too(core: MemoryCore) -> None:
    job = core.dispatcher.submit(spec(demands={"tags": ["gpu"]}))
    why = core.dispatcher.flow.waiting(job, runners=[])
    assert why is not None and why["reason"] == "no_runner"
    register_runner(core, tags=["gpu"])
    why = core.dispatcher.flow.waiting(job, runners=core.runners.live())
    assert why is not None and why["reason"] == "slot"
    assert core.dispatcher.flow.waiting(run_to_end(core, job.id)) is None


def test_a_held_job_waits_for_no_runner_until_its_hold_ends(core: MemoryCore) -> None:
    """Held jobs are not "unmatched": the match timeout starts when the hold ends, and the
    lost-message sweep does not re-send them meanwhile."""
    core.dispatcher.flow.set_limit("k", 1)
    head = core.dispatcher.submit(spec(match_timeout_s=3600))
    dep = core.dispatcher.submit(spec(depends_on=[head.id], match_timeout_s=10))
    a = core.dispatcher.submit(spec(concurrency_key="k"))
    b = core.dispatcher.submit(spec(concurrency_key="k", match_timeout_s=10))
    core.lifecycle.claim(a.id, "r1")
    assert core.lifecycle.claim(b.id, "r2") is None
    sent = {j: len(core.celery.sent_for(j)) for j in (dep.id, b.id)}
    core.clock.advance(600)
    core.lifecycle.renew(a.id, "r1", 1)  # a still runs
    core.dispatcher.reconcile()
    core.dispatcher.resend_lost(older_than_s=0)  # (head's message is re-sent: not held)
    assert {j: len(core.celery.sent_for(j)) for j in (dep.id, b.id)} == sent
    assert core.store.get(dep.id).status == core.store.get(b.id).status == JobStatus.queued
    run_to_end(core, head.id)
    core.lifecycle.start(a.id, "r1", 1)
    core.lifecycle.end(a.id, "r1", 1, Verdict(status=JobStatus.succeeded))
    for job_id in (dep.id, b.id):
        released = core.store.get(job_id)
        assert released.hold is None
        assert released.match_deadline == core.clock() + timedelta(seconds=10)
    core.dispatcher.reconcile()
    assert core.lifecycle.claim(dep.id, "r3") is not None
    assert core.lifecycle.claim(b.id, "r3") is not None
