"""The core's attempt rules (orchestrator/lifecycle.py) on the in-memory core, in
milliseconds: who holds an attempt, what a failure, a loss and a hand-back cost, what wins
a race with a cancel, the attempt rows and the listeners."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.job import Artifact, EventType, Job, JobStatus
from orchestrator.lifecycle import NotHeld, Renewal
from orchestrator.listeners import Listener
from orchestrator.protocol import Verdict
from orchestrator.runners import RunnerInfo
from orchestrator.testing import MemoryCore, memory_core

A, B = "runner-aaaaaaaaaaaa", "runner-bbbbbbbbbbbb"
FAILED = Verdict(status=JobStatus.failed, exit_code=1, error="boom")
SUCCEEDED = Verdict(status=JobStatus.succeeded, exit_code=0)


@pytest.fixture
def core() -> Iterator[MemoryCore]:
    c = memory_core()
    yield c
    c.close()


def _submit(core: MemoryCore, **spec: Any) -> Job:
    return core.dispatcher.submit({"executor": "process", "command": ["true"], **spec})


def _running(core: MemoryCore, job_id: str, runner: str = A) -> Job:
    """Claim the job's current attempt for ``runner`` and start it."""
    job = core.lifecycle.claim(job_id, runner)
    assert job is not None, f"{runner} could not claim {job_id}"
    return core.lifecycle.start(job_id, runner, job.attempt)


def _outcomes(core: MemoryCore, job_id: str) -> list[tuple[int, str | None, str | None]]:
    return [(a.attempt, a.runner_id, a.outcome) for a in core.store.attempts(job_id)]


class Recorder(Listener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def transition(self, job: Job, event: EventType) -> None:
        self.seen.append((event.value, job.status.value, job.attempt))

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        self.seen.append(("progress", f"{percent:g} {message}", attempt))


class Broken(Listener):
    def transition(self, job: Job, event: EventType) -> None:
        raise RuntimeError("this listener is broken")

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        raise RuntimeError("this listener is broken")


# ---------------------------------------------------------------- who holds an attempt


def test_claim_is_a_compare_and_set_one_of_two_claimers_wins(core: MemoryCore) -> None:
    job = _submit(core)
    won = core.lifecycle.claim(job.id, A)
    assert won is not None and won.runner_id == A and won.status == JobStatus.claimed
    assert core.lifecycle.claim(job.id, B) is None
    assert core.store.get(job.id).runner_id == A
    assert _outcomes(core, job.id) == [(1, A, None)]  # the loser wrote no row


def test_racing_claimers_in_threads_have_exactly_one_winner(core: MemoryCore) -> None:
    job = _submit(core)
    runners = [f"runner-{n:012x}" for n in range(8)]
    gate = threading.Barrier(len(runners))
    won: list[str] = []

    def claim(runner: str) -> None:
        gate.wait(timeout=2)
        if core.lifecycle.claim(job.id, runner) is not None:
            won.append(runner)

    threads = [threading.Thread(target=claim, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(won) == 1
    assert _outcomes(core, job.id) == [(1, won[0], None)]


def test_a_claim_naming_a_stale_attempt_is_refused(core: MemoryCore) -> None:
    job = _submit(core, max_attempts=2, retry_backoff_s=0)
    assert core.lifecycle.claim(job.id, A, attempt=2) is None  # not there yet
    _running(core, job.id)
    core.lifecycle.end(job.id, A, 1, FAILED)  # re-queued as attempt 2
    # The first attempt's message, delivered again, must not run attempt 2.
    assert core.lifecycle.claim(job.id, B, attempt=1) is None
    assert core.store.get(job.id).status == JobStatus.queued
    won = core.lifecycle.claim(job.id, B, attempt=2)
    assert won is not None and won.attempt == 2


def _claimed(core: MemoryCore) -> Job:
    job = _submit(core)
    assert core.lifecycle.claim(job.id, A) is not None
    return core.store.get(job.id)


def _started(core: MemoryCore) -> Job:
    return _running(core, _submit(core).id)


_ARTIFACT = Artifact(name="a.txt", size=1, sha256="0" * 64, content_type="text/plain")
# Each report, and the state the job must be in to take it from its holder.
_REPORTS: dict[str, tuple[Callable[[MemoryCore], Job], Callable[..., object]]] = {
    "start": (_claimed, lambda lc, j, r, n: lc.start(j, r, n)),
    "release": (_claimed, lambda lc, j, r, n: lc.release(j, r, n)),
    "progress": (_started, lambda lc, j, r, n: lc.progress(j, r, n, 50, "half")),
    "artifact": (_started, lambda lc, j, r, n: lc.add_artifact(j, r, n, _ARTIFACT)),
    "end": (_started, lambda lc, j, r, n: lc.end(j, r, n, SUCCEEDED)),
}


@pytest.mark.parametrize("report", sorted(_REPORTS))
@pytest.mark.parametrize(("runner", "attempt"), [(B, 1), (A, 2)], ids=["other-runner", "stale"])
def test_reports_from_who_does_not_hold_the_attempt_are_refused(
    core: MemoryCore, report: str, runner: str, attempt: int
) -> None:
    setup, call = _REPORTS[report]
    job = setup(core)
    before = core.events.types(job.id)
    with pytest.raises(NotHeld):
        call(core.lifecycle, job.id, runner, attempt)
    after = core.store.get(job.id)
    assert after.model_dump(exclude={"duration_s"}) == job.model_dump(exclude={"duration_s"})
    assert core.events.types(job.id) == before  # nothing announced
    # The holder's own report still goes through.
    call(core.lifecycle, job.id, A, 1)


def test_renew_extends_the_lease_of_the_holder_only_and_carries_the_cancel(
    core: MemoryCore,
) -> None:
    job = _running(core, _submit(core).id)
    core.clock.advance(20)
    assert core.lifecycle.renew(job.id, A, 1) == Renewal(held=True, cancel=False)
    assert core.store.get(job.id).lease_expires_at == core.clock() + timedelta(
        seconds=core.settings.lease_s
    )
    assert core.lifecycle.renew(job.id, B, 1) == Renewal(held=False)
    assert core.lifecycle.renew(job.id, A, 2) == Renewal(held=False)
    core.dispatcher.cancel(job.id)
    assert core.lifecycle.renew(job.id, A, 1) == Renewal(held=True, cancel=True)


def test_renew_all_answers_which_jobs_to_cancel_and_which_are_lost(core: MemoryCore) -> None:
    mine, cancelled, theirs = (_running(core, _submit(core).id, r) for r in (A, A, B))
    core.dispatcher.cancel(cancelled.id)
    cancel, lost = core.lifecycle.renew_all(A, [mine.id, cancelled.id, theirs.id, "nope"])
    assert cancel == [cancelled.id]
    assert lost == [theirs.id, "nope"]


# ---------------------------------------------------------------- failures and retries


def test_a_failure_with_attempts_left_is_requeued_after_a_doubling_backoff(
    core: MemoryCore,
) -> None:
    job = _submit(core, max_attempts=3, retry_backoff_s=2)
    for attempt, backoff in ((1, 2.0), (2, 4.0)):  # retry_backoff_s · 2^(n-1)
        _running(core, job.id)
        again = core.lifecycle.end(job.id, A, attempt, FAILED)
        assert again.status == JobStatus.queued and again.attempt == attempt + 1
        assert again.not_before == core.clock() + timedelta(seconds=backoff)
        assert again.error == f"attempt {attempt} failed: boom"
        # The retry waits in the store, not as an ETA message in a worker's memory: it
        # is sent when due, by whichever reconciler comes first, once.
        assert len(core.celery.sent_for(job.id)) == attempt
        core.clock.advance(backoff - 0.5)
        assert core.dispatcher.send_due() == 0
        core.clock.advance(0.5)
        assert core.dispatcher.send_due() == 1 and core.dispatcher.send_due() == 0
        sent = core.celery.sent_for(job.id)[-1]
        assert sent.args == (job.id, attempt + 1) and sent.countdown is None
        assert sent.task_id == f"{job.id}-a{attempt + 1}"
    _running(core, job.id)
    done = core.lifecycle.end(job.id, A, 3, FAILED)
    assert done.status == JobStatus.failed and done.attempt == 3 and done.error == "boom"
    assert len(core.celery.sent_for(job.id)) == 3  # the submit and two retries, no more
    assert _outcomes(core, job.id) == [(1, A, "retried"), (2, A, "retried"), (3, A, "failed")]


def test_a_pulling_runner_waits_out_the_retrys_backoff(core: MemoryCore) -> None:
    job = _submit(core, max_attempts=2, retry_backoff_s=5)
    _running(core, job.id)
    core.lifecycle.end(job.id, A, 1, FAILED)
    info = RunnerInfo(id=B, kind="agent", executors=["process"])
    assert core.lifecycle.claim_next(info) is None
    core.clock.advance(4.9)
    assert core.lifecycle.claim_next(info) is None
    core.clock.advance(0.1)
    got = core.lifecycle.claim_next(info)
    assert got is not None and got.id == job.id and got.attempt == 2


def test_a_claim_for_a_runner_that_unregistered_meanwhile_goes_back_unspent(
    core: MemoryCore,
) -> None:
    # An agent's long-poll read its registration, the agent unregistered, then a job came:
    # the claim made with the stale registration must not keep the job.
    info = RunnerInfo(id=B, kind="agent", executors=["process"])
    core.runners.heartbeat(info)
    job = _submit(core, max_attempts=1)
    core.runners.remove(B)
    assert core.lifecycle.claim_next(info, core.runners.get) is None
    back = core.store.get(job.id)
    assert back.status == JobStatus.queued and back.runner_id is None
    # handed back: max_attempts (1) is not spent, so another runner still gets it
    assert _outcomes(core, job.id) == [(1, B, "handed_back")]
    got = core.lifecycle.claim(job.id, A)
    assert got is not None and got.status == JobStatus.claimed


def test_a_claim_for_a_runner_still_registered_is_kept(core: MemoryCore) -> None:
    info = RunnerInfo(id=B, kind="agent", executors=["process"])
    core.runners.heartbeat(info)
    job = _submit(core)
    got = core.lifecycle.claim_next(info, core.runners.get)
    assert got is not None and got.id == job.id and got.runner_id == B


def test_a_failure_that_may_not_retry_ends_the_job_at_once(core: MemoryCore) -> None:
    job = _submit(core, max_attempts=3)
    _running(core, job.id)
    verdict = Verdict(status=JobStatus.failed, error="no such image", may_retry=False)
    done = core.lifecycle.end(job.id, A, 1, verdict)
    assert done.status == JobStatus.failed and done.attempt == 1
    assert done.error == "no such image"
    assert len(core.celery.sent_for(job.id)) == 1  # only the submit


def test_lost_and_handed_back_attempts_do_not_spend_max_attempts(core: MemoryCore) -> None:
    job = _submit(core, max_attempts=2, retry_backoff_s=3)
    lost = _running(core, job.id)
    assert core.lifecycle.lose(lost) is not None  # attempt 1: lost
    assert core.lifecycle.claim(job.id, B) is not None
    core.lifecycle.release(job.id, B, 2)  # attempt 2: handed back
    _running(core, job.id)
    again = core.lifecycle.end(job.id, A, 3, FAILED)  # the job's own first failure
    assert again.status == JobStatus.queued and again.own_attempts == 2
    assert again.not_before == core.clock() + timedelta(seconds=3)  # 2^0: its first retry
    _running(core, job.id)
    done = core.lifecycle.end(job.id, A, 4, FAILED)
    assert done.status == JobStatus.failed and done.attempt == 4
    assert _outcomes(core, job.id) == [
        (1, A, "lost"),
        (2, B, "handed_back"),
        (3, A, "retried"),
        (4, A, "failed"),
    ]


# ---------------------------------------------------------------- cancel races


def test_success_never_wins_over_an_accepted_cancel(core: MemoryCore) -> None:
    job = _running(core, _submit(core).id)
    asked = core.dispatcher.cancel(job.id)
    assert asked.cancel_requested and core.events.cancel_flagged(job.id)
    assert core.celery.revoked_ids() == [job.id]
    done = core.lifecycle.end(job.id, A, 1, SUCCEEDED)
    assert done.status == JobStatus.cancelled and done.error == "cancelled"
    assert core.events.types(job.id)[-2:] == ["cancel_requested", "cancelled"]


@pytest.mark.parametrize("max_attempts", [1, 3], ids=["last-attempt", "attempts-left"])
def test_a_cancel_before_the_end_turns_a_failure_into_cancelled_and_stops_retries(
    core: MemoryCore, max_attempts: int
) -> None:
    job = _running(core, _submit(core, max_attempts=max_attempts).id)
    core.dispatcher.cancel(job.id)
    done = core.lifecycle.end(job.id, A, 1, FAILED)
    assert (done.status, done.attempt, done.error) == (JobStatus.cancelled, 1, "cancelled")
    assert len(core.celery.sent_for(job.id)) == 1  # no retry was sent


@pytest.mark.parametrize(
    ("verdict", "max_attempts"),
    [
        (SUCCEEDED, 1),
        (FAILED, 3),
        (FAILED, 1),
    ],
    ids=["success", "failure-with-a-retry-left", "last-failure"],
)
def test_a_cancel_landing_between_the_ends_read_and_write_still_wins(
    core: MemoryCore, monkeypatch: pytest.MonkeyPatch, verdict: Verdict, max_attempts: int
) -> None:
    job = _running(core, _submit(core, max_attempts=max_attempts).id)
    store = core.store
    finish, requeue = store.finish, store.requeue

    def cancel_first(real: Callable[..., Job | None]) -> Callable[..., Job | None]:
        def call(*args: Any, **kwargs: Any) -> Job | None:
            store.request_cancel(job.id)  # the cancel lands just before the write
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(store, "finish", cancel_first(finish))
    monkeypatch.setattr(store, "requeue", cancel_first(requeue))
    done = core.lifecycle.end(job.id, A, 1, verdict)
    assert done.status == JobStatus.cancelled and done.attempt == 1
    assert _outcomes(core, job.id) == [(1, A, "cancelled")]


@pytest.mark.parametrize("cancel", [False, True], ids=["alone", "with-cancel-asked"])
def test_a_timeout_stays_timed_out_worded_from_the_spec(core: MemoryCore, cancel: bool) -> None:
    job = _running(core, _submit(core, timeout_s=1.5, max_attempts=3).id)
    if cancel:
        core.dispatcher.cancel(job.id)
    done = core.lifecycle.end(job.id, A, 1, Verdict(status=JobStatus.timed_out, error="timed out"))
    assert done.status == JobStatus.timed_out and done.attempt == 1
    assert done.error == "timed out after 1.5 s"


def test_cancelling_a_queued_job_ends_it_and_revokes_its_message(core: MemoryCore) -> None:
    job = _submit(core)
    done = core.dispatcher.cancel(job.id)
    assert done.status == JobStatus.cancelled and done.error == "cancelled before it started"
    assert core.celery.revoked_ids() == [job.id]
    assert core.lifecycle.claim(job.id, A) is None


# ---------------------------------------------------------------- lost runners


def test_a_lost_runner_requeues_on_the_loss_budget_not_max_attempts(core: MemoryCore) -> None:
    job = _running(core, _submit(core).id)  # max_attempts 1, the operator's max_lost 3
    again = core.lifecycle.lose(job)
    assert again is not None and again.status == JobStatus.queued
    assert again.attempt == 2 and again.losses == 1 and again.own_attempts == 1
    assert again.error == f"runner {A} lost (lease expired) on attempt 1; re-queued (loss 1 of 3)"
    assert core.celery.sent_for(job.id)[-1].countdown is None  # at once
    _running(core, job.id, B)
    done = core.lifecycle.end(job.id, B, 2, FAILED)
    assert done.status == JobStatus.failed  # its own one attempt, spent now
    assert _outcomes(core, job.id) == [(1, A, "lost"), (2, B, "failed")]


def test_a_spent_loss_budget_fails_the_job(core: MemoryCore) -> None:
    job = _submit(core, max_lost=2, max_attempts=5)
    for _ in range(2):
        again = core.lifecycle.lose(_running(core, job.id))
        assert again is not None and again.status == JobStatus.queued
    done = core.lifecycle.lose(_running(core, job.id))
    assert done is not None and done.status == JobStatus.failed and done.attempt == 3
    assert done.error == (
        f"runner {A} lost (lease expired) on attempt 3; its loss budget (2) is spent"
    )


def test_a_job_with_max_lost_zero_never_runs_twice(core: MemoryCore) -> None:
    job = _running(core, _submit(core, max_lost=0, max_attempts=3).id)
    done = core.lifecycle.lose(job)
    assert done is not None and done.status == JobStatus.failed and done.attempt == 1
    assert len(core.celery.sent_for(job.id)) == 1


def test_a_lost_runner_with_a_cancel_asked_ends_cancelled(core: MemoryCore) -> None:
    job = _running(core, _submit(core).id)
    asked = core.dispatcher.cancel(job.id)
    done = core.lifecycle.lose(asked)
    assert done is not None and done.status == JobStatus.cancelled
    assert done.error == "cancelled (runner lost)"


def test_a_loss_that_races_the_runners_own_end_changes_nothing(core: MemoryCore) -> None:
    job = _running(core, _submit(core).id)
    done = core.lifecycle.end(job.id, A, 1, SUCCEEDED)
    assert core.lifecycle.lose(job) is None  # the reconciler's view was stale
    assert core.store.get(job.id) == done
    assert _outcomes(core, job.id) == [(1, A, "succeeded")]


def test_the_reconciler_loses_jobs_whose_lease_ran_out_on_the_clock(core: MemoryCore) -> None:
    job = _running(core, _submit(core).id)
    assert core.dispatcher.reconcile()["requeued"] == 0
    core.clock.advance(core.settings.lease_s + 1)
    assert core.dispatcher.reconcile()["requeued"] == 1
    assert core.store.get(job.id).losses == 1


# ---------------------------------------------------------------- hand-backs


def test_release_queues_the_job_again_spending_nothing(core: MemoryCore) -> None:
    job = _submit(core, retry_backoff_s=30)
    claimed = core.lifecycle.claim(job.id, A)
    assert claimed is not None
    again = core.lifecycle.release(job.id, A, 1)
    assert again.status == JobStatus.queued and again.attempt == 2 and again.handbacks == 1
    assert again.own_attempts == claimed.own_attempts == 1
    assert again.not_before is None and again.losses == 0
    assert core.celery.sent_for(job.id)[-1].countdown is None
    assert again.error == f"handed back by {A} before it started"
    assert _outcomes(core, job.id) == [(1, A, "handed_back")]


def test_a_draining_runner_hands_a_running_job_back_spending_nothing(core: MemoryCore) -> None:
    job = _running(core, _submit(core, max_attempts=1, max_lost=0).id)
    again = core.lifecycle.release(job.id, A, 1)
    assert (again.status, again.attempt, again.handbacks) == (JobStatus.queued, 2, 1)
    assert again.own_attempts == 1 and again.losses == 0  # neither budget was spent
    assert core.celery.sent_for(job.id)[-1].args == (job.id, 2)  # sent at once
    assert _outcomes(core, job.id) == [(1, A, "handed_back")]
    with pytest.raises(NotHeld):  # only once
        core.lifecycle.release(job.id, A, 1)


def test_releasing_a_job_whose_cancel_was_asked_ends_it_cancelled(core: MemoryCore) -> None:
    job = _submit(core)
    assert core.lifecycle.claim(job.id, A) is not None
    core.dispatcher.cancel(job.id)
    done = core.lifecycle.release(job.id, A, 1)
    assert done.status == JobStatus.cancelled and done.attempt == 1
    assert len(core.celery.sent_for(job.id)) == 1


# ---------------------------------------------------------------- attempt rows


def test_attempt_rows_keep_runner_times_and_outcome(core: MemoryCore) -> None:
    job = _submit(core, max_attempts=2, retry_backoff_s=0)
    t0 = core.clock()
    assert core.lifecycle.claim(job.id, A) is not None
    core.clock.advance(1)
    core.lifecycle.start(job.id, A, 1)
    core.clock.advance(2)
    core.lifecycle.end(job.id, A, 1, FAILED)
    core.clock.advance(1)
    _running(core, job.id, B)
    core.clock.advance(5)
    core.lifecycle.end(job.id, B, 2, Verdict(status=JobStatus.succeeded, exit_code=0))
    first, second = core.store.attempts(job.id)
    s = timedelta(seconds=1)
    assert (first.runner_id, first.claimed_at, first.started_at, first.ended_at) == (
        A,
        t0,
        t0 + s,
        t0 + 3 * s,
    )
    assert (first.outcome, first.exit_code, first.error) == ("retried", 1, "attempt 1 failed: boom")
    assert (second.runner_id, second.claimed_at, second.started_at, second.ended_at) == (
        B,
        t0 + 4 * s,
        t0 + 4 * s,
        t0 + 9 * s,
    )
    assert (second.outcome, second.exit_code, second.error) == ("succeeded", 0, None)


def test_the_attempt_row_is_written_in_the_transitions_transaction(core: MemoryCore) -> None:
    job = _submit(core)
    with core.store.engine.begin() as c:
        c.execute(sa.text("DROP TABLE attempts"))  # the row's write must fail
    with pytest.raises(sa.exc.OperationalError):
        core.lifecycle.claim(job.id, A)
    assert core.store.get(job.id).status == JobStatus.queued  # and took the claim with it


# ---------------------------------------------------------------- listeners


def test_listeners_get_every_won_transition_in_order() -> None:
    seen = Recorder()
    core = memory_core(listeners=[seen])
    try:
        job = _submit(core, max_attempts=2, retry_backoff_s=0)
        _running(core, job.id)
        assert core.lifecycle.claim(job.id, B) is None  # lost: not announced
        core.lifecycle.progress(job.id, A, 1, 40, "warming")
        core.lifecycle.end(job.id, A, 1, FAILED)
        _running(core, job.id, B)
        core.lifecycle.end(job.id, B, 2, SUCCEEDED)
    finally:
        core.close()
    assert seen.seen == [
        ("created", "queued", 1),
        ("claimed", "claimed", 1),
        ("started", "running", 1),
        ("progress", "40 warming", 1),
        ("requeued", "queued", 2),
        ("claimed", "claimed", 2),
        ("started", "running", 2),
        ("succeeded", "succeeded", 2),
    ]
    assert core.events.types(job.id) == [event for event, _, _ in seen.seen]


def test_a_failing_listener_neither_stops_the_others_nor_undoes_the_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()
    core = memory_core(listeners=[Broken(), seen])
    try:
        job = _submit(core)
        _running(core, job.id)
        core.lifecycle.progress(job.id, A, 1, 10, "")
        done = core.lifecycle.end(job.id, A, 1, SUCCEEDED)
        assert done.status == JobStatus.succeeded
        assert core.store.get(job.id).status == JobStatus.succeeded
    finally:
        core.close()
    assert "listener Broken.transition failed" in caplog.text
    assert [event for event, _, _ in seen.seen] == [
        "created",
        "claimed",
        "started",
        "progress",
        "succeeded",
    ]
