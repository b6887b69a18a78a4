"""``/metrics``: exact job counters on the real stack (API, prefork worker, beat)."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.broker import queue_keys
from orchestrator.events import Events
from orchestrator.job import EventType, Job, JobStatus, utcnow
from orchestrator.metrics import (
    BUCKETS,
    MemorySink,
    MetricsRecorder,
    bucket_index,
    increments,
)
from orchestrator.metrics_scrape import ClusterCollector
from orchestrator.runners import RunnerInfo
from orchestrator.store import JobStore
from tests.support import Stack, wait_until


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = stack.http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def settled(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape once the stack is quiet: no job waiting or running (the stack is shared
    with the other observability tests, some of which leave jobs to end on their own),
    and every end the store holds counted (counters go out just after the end commits)."""

    def quiet() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        stats = stack.http.get("/api/v1/stats").json()
        now = scrape(stack)
        ended = sum(v for (name, _), v in now.items() if name == "launchbay_jobs_ended_total")
        in_store = sum(stats[s] for s in ("succeeded", "failed", "cancelled", "timed_out"))
        return now if stats["demand"] == 0 and ended == in_store else None

    return wait_until(quiet, timeout=60, what="no job in flight and every end counted")


def test_counters_move_by_exactly_the_ten_jobs(obs_stack: Stack) -> None:
    before = settled(obs_stack)
    tag = {"metrics-run": uuid.uuid4().hex}
    ok = [
        obs_stack.submit({"executor": "process", "command": ["true"], "labels": tag})
        for _ in range(5)
    ]
    bad = [
        obs_stack.submit({"executor": "process", "command": ["false"], "labels": tag})
        for _ in range(3)
    ]
    slow = [
        obs_stack.submit({"executor": "process", "command": ["sleep", "60"], "labels": tag})
        for _ in range(2)
    ]
    for j in slow:
        obs_stack.wait_status(j["id"], "running")
        assert obs_stack.http.post(f"/api/v1/jobs/{j['id']}/cancel").status_code == 200
    for j, want in (
        [(j, "succeeded") for j in ok]
        + [(j, "failed") for j in bad]
        + [(j, "cancelled") for j in slow]
    ):
        assert obs_stack.wait_status(j["id"])["status"] == want
    ended = "launchbay_jobs_ended_total"
    # The store shows a job's end as it commits; its counters go out right after, with
    # its events (the outbox): wait for ten ends counted, then check each count exactly.

    def counted() -> dict | None:
        now = scrape(obs_stack)
        ends = sum(
            delta(before, now, ended, executor="process", status=s)
            for s in ("succeeded", "failed", "cancelled", "timed_out")
        )
        return now if ends >= 10 else None

    after = wait_until(counted, timeout=30, what="the ten jobs' ends to be counted")
    assert delta(before, after, "launchbay_jobs_submitted_total", executor="process") == 10
    assert delta(before, after, ended, executor="process", status="succeeded") == 5
    assert delta(before, after, ended, executor="process", status="failed") == 3
    assert delta(before, after, ended, executor="process", status="cancelled") == 2
    assert delta(before, after, ended, executor="process", status="timed_out") == 0
    # Every one was claimed on its first attempt and started before it ended.
    assert delta(before, after, "launchbay_job_queue_wait_seconds_count", executor="process") == 10
    assert delta(before, after, "launchbay_job_run_seconds_count", executor="process") == 10
    inf = delta(before, after, "launchbay_job_run_seconds_bucket", executor="process", le="+Inf")
    assert inf == 10
    # The worker's slots are there, none busy now.
    slots = [k for k in after if k[0] == "launchbay_worker_slots"]
    assert slots and all(after[k] == 4 for k in slots)
    busy = [after[k] for k in after if k[0] == "launchbay_worker_busy_slots"]
    assert busy and all(b == 0 for b in busy)
    assert ("launchbay_stream_clients", (("transport", "sse"),)) in after


def _job(**fields: object) -> Job:
    now = utcnow()
    base: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "spec": {"executor": "process", "command": ["true"]},
        "created_at": now,
    }
    base.update(fields)
    return Job.model_validate(base)


def test_increments_are_a_few_counter_fields_per_transition() -> None:
    created = _job()
    assert increments(created, EventType.created) == {"submitted|process": 1}
    t0 = created.created_at
    from datetime import timedelta

    claimed = _job(status="claimed", created_at=t0, claimed_at=t0 + timedelta(seconds=0.3))
    got = increments(claimed, EventType.claimed)
    assert got == {f"queue_wait|process|b{bucket_index(0.3)}": 1, "queue_wait|process|sum": 0.3}
    lost = _job(status="queued", attempt=2, error="runner r lost (lease expired) on attempt 1; x")
    assert increments(lost, EventType.requeued) == {"requeued|process|lost": 1}
    launch = _job(
        status=JobStatus.failed,
        error="docker launcher failed on launch attempt 3: no such image",
        started_at=None,
        finished_at=t0,
    )
    assert increments(launch, EventType.failed) == {
        "ended|process|failed": 1,
        "launch_failures|process": 1,
    }
    assert increments(_job(status="running"), EventType.cancel_requested) == {}
    assert bucket_index(BUCKETS[-1] + 1) == len(BUCKETS)
    sink = MemorySink()
    MetricsRecorder(sink).transition(created, EventType.created)
    MetricsRecorder(sink).transition(created, EventType.created)
    assert sink.fields == {"submitted|process": 2}


def test_queue_depth_counts_every_priority_list(store: JobStore, events: Events) -> None:
    name = f"lb.obs-{uuid.uuid4().hex[:8]}"
    keys = queue_keys(name)
    try:
        events.r.lpush(keys[0], "a", "b")
        events.r.lpush(keys[3], "c")
        runner = RunnerInfo(executors=["process"], capacity=3, queues=[name])

        class Registry:
            def live(self) -> list[RunnerInfo]:
                return [runner]

        job = store.create({"executor": "process", "command": ["true"]}, match_timeout_s=60)
        store.claim(job.id, runner.id, 30)
        fams = {f.name: f for f in ClusterCollector(events.r, store.engine, Registry()).collect()}
        depth = {s.labels["queue"]: s.value for s in fams["launchbay_queue_messages"].samples}
        assert depth == {name: 3}
        busy = fams["launchbay_worker_busy_slots"].samples
        assert [(s.labels["runner"], s.value) for s in busy] == [(runner.id, 1)]
        jobs = {(s.labels["status"], s.value) for s in fams["launchbay_jobs"].samples}
        assert ("claimed", 1) in jobs
    finally:
        events.r.delete(*keys)
