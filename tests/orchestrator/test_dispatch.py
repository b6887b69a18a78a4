"""Dispatch against a real store and Valkey: broker failure, races, the reconciler."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.celery_app import make_celery
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import BrokerUnavailable, InvalidTransition
from orchestrator.events import Events
from orchestrator.job import BuiltinSpec, Demands, JobStatus, utcnow
from orchestrator.protocol import Verdict
from orchestrator.schema import jobs
from orchestrator.services import free_port
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from workers.channels.direct import DirectChannel
from workers.launchers import LauncherSet

# A job of priority 0 (the default) is sent at kombu priority 9: its Redis list is the
# queue's "\x06\x169" one (kombu serves 0 first; orchestrator/dispatch.py, issue 14).
PRIORITY_0 = "\x06\x169"

SPEC = BuiltinSpec(type="fibonacci", params={"count": 5})


@pytest.fixture
def dispatcher(settings: Settings, store: JobStore, events: Events) -> Dispatcher:
    return Dispatcher(settings, store, events, make_celery(settings))


def _expire_lease(store: JobStore, job_id: str) -> None:
    with store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_broker_down_fails_the_job_with_503(
    settings: Settings, store: JobStore, events: Events
) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    d = Dispatcher(settings, store, events, make_celery(dead))
    with pytest.raises(BrokerUnavailable) as info:
        d.submit(SPEC)
    assert info.value.status_code == 503
    [job], total = store.list()
    assert total == 1 and job.status == JobStatus.failed
    assert "broker unavailable" in (job.error or "")


def test_submit_publishes_created_and_enqueues(dispatcher: Dispatcher, events: Events) -> None:
    job = dispatcher.submit(SPEC)
    assert job.task_id is None or job.task_id == job.id
    assert dispatcher.store.get(job.id).task_id == job.id
    evs = events.read_events(job.id)
    assert [e["type"] for e in evs] == ["created"]
    assert evs[0]["data"]["id"] == job.id
    assert events.r.llen("lb.builtin" + PRIORITY_0) >= 1


def test_cancel_racing_finish_never_ends_succeeded(dispatcher: Dispatcher, store: JobStore) -> None:
    for _ in range(20):
        job = store.create(SPEC)
        store.claim(job.id, "runner-x", 30)
        store.start(job.id, 1, 30)
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def cancel(
            job_id: str = job.id,
            barrier: threading.Barrier = barrier,
            results: dict[str, object] = results,
        ) -> None:
            barrier.wait()
            try:
                results["cancel"] = dispatcher.cancel(job_id)
            except InvalidTransition as exc:  # the finish won: cancel must say so
                results["cancel"] = exc

        def finish(
            job_id: str = job.id,
            barrier: threading.Barrier = barrier,
            results: dict[str, object] = results,
        ) -> None:
            barrier.wait()
            results["finish"] = store.finish(job_id, 1, JobStatus.succeeded, exit_code=0)

        threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        final = store.get(job.id)
        if results["finish"] is None:
            # The cancel won: the job is still running with cancel_requested; the runner's
            # own finish CAS must now turn it into cancelled, never succeeded.
            assert final.cancel_requested and final.status == JobStatus.running
            assert store.finish(job.id, 1, JobStatus.succeeded) is None
        else:
            assert final.status == JobStatus.succeeded and not final.cancel_requested
            assert isinstance(results["cancel"], InvalidTransition)


def test_two_runners_one_job_exactly_one_runs(
    settings: Settings, dispatcher: Dispatcher, artifact_store: ArtifactStore
) -> None:
    job = dispatcher.store.create(SPEC)
    launchers = LauncherSet(settings)
    runners = [DirectChannel(dispatcher, f"runner-{i:012x}", artifact_store) for i in range(2)]
    out: list[str] = []
    barrier = threading.Barrier(2)

    def go(r: DirectChannel) -> None:
        barrier.wait()
        out.append(r.run(job.id, 1, launchers))

    threads = [threading.Thread(target=go, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out.count("succeeded") == 1
    assert [o for o in out if o != "succeeded"][0].startswith("skipped")
    assert dispatcher.store.get(job.id).status == JobStatus.succeeded


def test_redelivered_message_for_a_running_job_is_a_no_op(
    settings: Settings, dispatcher: Dispatcher, artifact_store: ArtifactStore
) -> None:
    job = dispatcher.store.create(SPEC)
    dispatcher.store.claim(job.id, "runner-aaaaaaaaaaaa", 30)
    runner = DirectChannel(dispatcher, "runner-bbbbbbbbbbbb", artifact_store)
    assert runner.run(job.id, 1, LauncherSet(settings)).startswith("skipped")
    assert dispatcher.store.get(job.id).runner_id == "runner-aaaaaaaaaaaa"


def test_a_lost_runner_requeues_on_the_loss_budget_not_max_attempts(
    dispatcher: Dispatcher, store: JobStore
) -> None:
    job = store.create(SPEC.model_copy(update={"max_lost": 1}))  # max_attempts 1
    store.claim(job.id, "runner-lost", 30)
    store.start(job.id, 1, 30)
    _expire_lease(store, job.id)
    assert dispatcher.reconcile()["requeued"] == 1
    again = store.get(job.id)
    assert again.status == JobStatus.queued and again.attempt == 2 and again.losses == 1
    assert again.own_attempts == 1  # the loss spent no attempt of the job's own
    assert again.task_id == f"{job.id}-a2" and "lost" in (again.error or "")
    # The loss budget is spent: the next loss fails it.
    store.claim(job.id, "runner-lost2", 30)
    _expire_lease(store, job.id)
    assert dispatcher.reconcile()["failed"] == 1
    final = store.get(job.id)
    assert final.status == JobStatus.failed
    assert "loss budget (1) is spent" in (final.error or "")
    assert [(a.attempt, a.runner_id, a.outcome) for a in store.attempts(job.id)] == [
        (1, "runner-lost", "lost"),
        (2, "runner-lost2", "failed"),
    ]


def test_a_job_that_must_never_run_twice_fails_on_its_first_loss(
    dispatcher: Dispatcher, store: JobStore
) -> None:
    job = store.create(SPEC.model_copy(update={"max_lost": 0, "max_attempts": 3}))
    store.claim(job.id, "runner-lost", 30)
    _expire_lease(store, job.id)
    assert dispatcher.reconcile()["failed"] == 1
    assert store.get(job.id).attempt == 1


def test_reconcile_fails_unmatched_and_finishes_unanswered_cancels(
    settings: Settings, store: JobStore, events: Events
) -> None:
    s = settings.model_copy(update={"cancel_fallback_s": 0.01})
    d = Dispatcher(s, store, events, make_celery(s))
    unmatched = store.create(SPEC.model_copy(update={"match_timeout_s": 0.001}))
    stuck = store.create(SPEC.model_copy(update={"grace_s": 0}))
    store.claim(stuck.id, "runner-deaf", 30)
    store.start(stuck.id, 1, 30)
    d.cancel(stuck.id)
    with store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id == stuck.id)
            .values(cancel_requested_at=utcnow() - timedelta(seconds=5))
        )
    counts = d.reconcile()
    assert counts["unmatched"] == 1 and counts["force_cancelled"] == 1
    error = store.get(unmatched.id).error
    assert error is not None
    assert error.startswith("no matching runner available within 0.001 s")
    assert store.get(stuck.id).status == JobStatus.cancelled
    with pytest.raises(InvalidTransition):
        d.cancel(unmatched.id)


def test_reconcile_resends_a_queued_job_whose_message_was_lost(
    dispatcher: Dispatcher, events: Events
) -> None:
    spec = SPEC.model_copy(update={"demands": Demands(tags=["resend-test"])})
    job = dispatcher.submit(spec)
    queue = "lb.builtin.resend-test"
    messages = queue + PRIORITY_0
    assert events.r.llen(messages) == 1
    # The broker still holds it: nothing to do.
    assert dispatcher.resend_lost(older_than_s=0) == 0
    assert events.r.llen(messages) == 1
    # Taken from its queue by a worker that died before claiming the job (or lost with
    # a flushed or unpersisted broker): sent again, same task id. An entry left in the
    # ``unacked`` hash of an earlier release's ack emulation does not count as held.
    raw = events.r.lpop(messages)
    events.r.hset("unacked", "tag-1", json.dumps([json.loads(raw), "", queue]))
    assert dispatcher.resend_lost(older_than_s=0) == 1
    events.r.hdel("unacked", "tag-1")
    [again] = events.r.lrange(messages, 0, -1)
    assert json.loads(again)["headers"]["id"] == job.id
    # Young jobs are left alone (their message may be on its way).
    events.r.delete(messages)
    assert dispatcher.resend_lost(older_than_s=3600) == 0


def test_a_retry_is_sent_when_due_and_not_before(
    dispatcher: Dispatcher, store: JobStore, events: Events
) -> None:
    spec = SPEC.model_copy(
        update={
            "demands": Demands(tags=["resend-backoff"]),
            "max_attempts": 2,
            "retry_backoff_s": 600,
        }
    )
    job = dispatcher.submit(spec)
    store.claim(job.id, "runner-x", 30)
    assert store.start(job.id, 1, 30) is not None
    again = dispatcher.lifecycle.end(
        job.id, "runner-x", 1, Verdict(status=JobStatus.failed, error="x")
    )
    assert again.status == JobStatus.queued and again.not_before is not None
    queue = "lb.builtin.resend-backoff" + PRIORITY_0
    events.r.delete(queue)  # the first attempt's message is gone; the retry's was never sent
    # While it waits out its backoff, nothing is sent: not by the lost-message sweep,
    # not by the due sweep.
    assert dispatcher.resend_lost(older_than_s=0) == 0
    assert dispatcher.send_due() == 0 and events.r.llen(queue) == 0
    with store.engine.begin() as c:  # the backoff has passed
        c.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    assert dispatcher.send_due() == 1
    [message] = events.r.lrange(queue, 0, -1)
    headers = json.loads(message)["headers"]
    assert headers["id"] == f"{job.id}-a2" and headers["eta"] is None
    assert store.get(job.id).not_before is None  # taken: a second sweep sends nothing
    assert dispatcher.send_due() == 0


def test_cancel_that_races_a_retry_requeue_still_cancels(
    dispatcher: Dispatcher, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = store.create(SPEC.model_copy(update={"max_attempts": 2}))
    store.claim(job.id, "runner-x", 30)
    store.start(job.id, 1, 30)
    real = store.request_cancel

    def requeue_first(job_id: str) -> object:
        # The worker's retry lands between cancel()'s read and its write.
        monkeypatch.setattr(store, "request_cancel", real)
        assert store.requeue(job_id, 1, reason="attempt 1 failed") is not None
        return real(job_id)

    monkeypatch.setattr(store, "request_cancel", requeue_first)
    out = dispatcher.cancel(job.id)
    assert out.status == JobStatus.cancelled and out.attempt == 2
    assert store.get(job.id).status == JobStatus.cancelled
