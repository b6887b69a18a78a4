"""Issue 13: a job launched in-process at once (a built-in) goes queued → running in the
claim's one compare-and-set, with its attempt row; every other job keeps claim → start.
The claim's fencing (attempt, concurrency keys, sessions) holds either way, on SQLite and
PostgreSQL; the end and the lease renewal read nothing before their one write."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import store as store_module
from orchestrator.job import EventType, Job, JobStatus
from orchestrator.lifecycle import Lifecycle, NotHeld
from orchestrator.listeners import Listener, Listeners
from orchestrator.protocol import Verdict
from orchestrator.schema import attempts, concurrency_limits, jobs
from orchestrator.sessions import Sessions
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.testing import ManualClock, MemoryCore, memory_core

AT_ONCE = frozenset({"builtin"})
R = "runner-0123456789ab"
LEASE = 30.0


def _builtin(**extra: Any) -> dict[str, Any]:
    return {"executor": "builtin", "type": "primes", "params": {"limit": 100}, **extra}


def _process(**extra: Any) -> dict[str, Any]:
    return {"executor": "process", "command": ["true"], **extra}


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    """A store on each backend, on a manual clock (this module's own, not the stack's)."""
    s = JobStore(backend_url, clock=ManualClock())
    yield s
    s.dispose()


@pytest.fixture
def core() -> Iterator[MemoryCore]:
    c = memory_core()
    yield c
    c.close()


# ---------------------------------------------------------------- the store


def test_a_builtin_claim_starts_it_in_the_same_write(store: JobStore) -> None:
    job = store.create(_builtin())
    got = store.claim(job.id, R, LEASE, attempt=1, start_at_once=AT_ONCE)
    assert got is not None and got.status == JobStatus.running
    assert got.runner_id == R and got.attempt == 1
    assert got.started_at is not None and got.started_at == got.claimed_at
    assert got.lease_expires_at is not None and got.lease_expires_at > got.claimed_at
    # what it answered is stored (its running duration is the reading's own: left out)
    running = {"duration_s"}
    assert store.get(job.id).model_dump(exclude=running) == got.model_dump(exclude=running)
    [row] = store.attempts(job.id)
    assert (row.runner_id, row.claimed_at, row.started_at) == (R, got.claimed_at, got.started_at)
    assert row.outcome is None and row.ended_at is None


def test_other_executors_are_only_claimed(store: JobStore) -> None:
    job = store.create(_process())
    got = store.claim(job.id, R, LEASE, start_at_once=AT_ONCE)
    assert got is not None and got.status == JobStatus.claimed and got.started_at is None
    assert store.attempts(job.id)[0].started_at is None
    running = store.start(job.id, 1, LEASE, runner_id=R, handle="pid:42")
    assert running is not None and running.status == JobStatus.running
    assert store.attempts(job.id)[0].handle == "pid:42"


def test_a_builtin_claim_without_start_at_once_is_a_plain_claim(store: JobStore) -> None:
    job = store.create(_builtin())
    got = store.claim(job.id, R, LEASE)  # an agent's claim (claim_next) starts nothing
    assert got is not None and got.status == JobStatus.claimed


def test_the_started_claim_is_fenced_like_any_claim(store: JobStore) -> None:
    job = store.create(_builtin())
    assert store.claim(job.id, R, LEASE, attempt=2, start_at_once=AT_ONCE) is None  # stale
    assert store.claim(job.id, R, LEASE, attempt=1, start_at_once=AT_ONCE) is not None
    assert store.claim(job.id, "runner-other", LEASE, start_at_once=AT_ONCE) is None
    assert store.start(job.id, 1, LEASE, runner_id=R) is None, "running cannot start again"
    assert store.finish(job.id, 1, JobStatus.succeeded, runner_id="runner-other") is None
    assert store.finish(job.id, 2, JobStatus.succeeded, runner_id=R) is None
    done = store.finish(job.id, 1, JobStatus.succeeded, exit_code=0, runner_id=R)
    assert done is not None and done.status == JobStatus.succeeded
    [row] = store.attempts(job.id)
    assert row.outcome == "succeeded" and row.ended_at == done.finished_at


def test_a_cancel_asked_of_a_started_claim_wins_over_its_success(store: JobStore) -> None:
    job = store.create(_builtin())
    assert store.claim(job.id, R, LEASE, start_at_once=AT_ONCE) is not None
    assert store.request_cancel(job.id) is not None
    assert store.finish(job.id, 1, JobStatus.succeeded, runner_id=R) is None
    assert store.finish(job.id, 1, JobStatus.cancelled, runner_id=R) is not None


def test_a_full_concurrency_key_refuses_a_started_claim_and_holds_it(store: JobStore) -> None:
    with store.engine.begin() as c:
        c.execute(
            concurrency_limits.insert().values(key="k", max_running=1, updated_at=store.now())
        )
    first = store.create(_builtin(concurrency_key="k"))
    second = store.create(_builtin(concurrency_key="k"))
    got = store.claim(first.id, R, LEASE, attempt=1, start_at_once=AT_ONCE)
    assert got is not None and got.status == JobStatus.running
    assert store.claim(second.id, R, LEASE, attempt=1, start_at_once=AT_ONCE) is None
    assert store.get(second.id).hold == "limit"
    assert store.attempts(second.id) == []
    assert store.finish(first.id, 1, JobStatus.succeeded, runner_id=R) is not None
    [released] = store.release_key("k")
    assert released.id == second.id
    again = store.claim(second.id, R, LEASE, attempt=1, start_at_once=AT_ONCE)
    assert again is not None and again.status == JobStatus.running


def test_a_sessions_runs_start_one_at_a_time(store: JobStore, tmp_path: Path) -> None:
    session = Sessions(store.engine, tmp_path).create("builtin", {}, name="s", parent=None)
    clock = store.now
    assert isinstance(clock, ManualClock)
    first = store.create(_builtin(session={"id": session.id}))
    clock.advance(0.001)
    second = store.create(_builtin(session={"id": session.id}))
    assert store.claim(second.id, R, LEASE, start_at_once=AT_ONCE) is None  # not its turn
    assert store.claim(first.id, R, LEASE, start_at_once=AT_ONCE) is not None
    assert store.claim(second.id, R, LEASE, start_at_once=AT_ONCE) is None  # first runs
    assert store.finish(first.id, 1, JobStatus.succeeded, runner_id=R) is not None
    got = store.claim(second.id, R, LEASE, start_at_once=AT_ONCE)
    assert got is not None and got.status == JobStatus.running


def test_extend_lease_answers_held_and_cancel_in_one_write(store: JobStore) -> None:
    job = store.create(_process())
    assert store.extend_lease(job.id, 1, LEASE) is None  # queued: no live attempt
    assert store.claim(job.id, R, LEASE) is not None
    assert store.extend_lease(job.id, 1, LEASE, runner_id=R) is False
    assert store.extend_lease(job.id, 1, LEASE, runner_id="runner-other") is None
    assert store.extend_lease(job.id, 2, LEASE, runner_id=R) is None
    store.now.advance(5)  # type: ignore[attr-defined]
    assert store.extend_lease(job.id, 1, 60, runner_id=R, progress=(40, "forty")) is False
    now = store.get(job.id)
    assert now.lease_expires_at == store.now() + timedelta(seconds=60)
    assert (now.progress.percent, now.progress.message) == (40, "forty")
    assert store.request_cancel(job.id) is not None
    assert store.extend_lease(job.id, 1, LEASE, runner_id=R) is True
    assert store.renew_lease(job.id, 1, LEASE, runner_id=R)


def test_active_count_counts_claimed_and_running_jobs_of_one_runner(store: JobStore) -> None:
    a, b, c = (store.create(_builtin()) for _ in range(3))
    other = store.create(_process())
    assert store.claim(a.id, R, LEASE, start_at_once=AT_ONCE) is not None  # running
    assert store.claim(b.id, R, LEASE) is not None  # claimed
    assert store.claim(other.id, "runner-other", LEASE) is not None
    assert store.active_count(R) == 2 and store.active_count("runner-other") == 1
    assert store.finish(a.id, 1, JobStatus.succeeded, runner_id=R) is not None
    assert store.active_count(R) == 1 and store.active_count("nobody") == 0
    assert store.get(c.id).status == JobStatus.queued


def test_claim_next_pages_past_jobs_that_do_not_fit(store: JobStore) -> None:
    clock = store.now
    assert isinstance(clock, ManualClock)
    gpu = []
    for _ in range(5):
        gpu.append(store.create(_process(demands={"tags": ["gpu"]})))
        clock.advance(0.001)  # oldest first
    plain = store.create(_process())
    got = store.claim_next(R, ["process"], [], LEASE, page=2)
    assert got is not None and got.id == plain.id
    assert store.claim_next(R, ["process"], [], LEASE, page=2) is None
    assert store.claim_next(R, ["builtin"], ["gpu"], LEASE) is None
    took = store.claim_next(R, ["process"], ["gpu"], LEASE, page=2)
    assert took is not None and took.id == gpu[0].id


# ---------------------------------------------------------------- the lifecycle


class _Seen(Listener):
    def __init__(self) -> None:
        self.seen: list[tuple[EventType, JobStatus, bool]] = []

    def transition(self, job: Job, event: EventType) -> None:
        self.seen.append((event, job.status, job.started_at is not None))


@pytest.fixture
def core_seen() -> Iterator[tuple[MemoryCore, _Seen]]:
    seen = _Seen()
    core = memory_core(listeners=[seen])
    yield core, seen
    core.close()


def test_listeners_see_claimed_then_started_for_a_started_claim(
    core_seen: tuple[MemoryCore, _Seen],
) -> None:
    core, seen = core_seen
    job = core.dispatcher.submit(_builtin())
    got = core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE)
    assert got is not None and got.status == JobStatus.running
    assert seen.seen == [
        (EventType.created, JobStatus.queued, False),
        (EventType.claimed, JobStatus.claimed, False),
        (EventType.started, JobStatus.running, True),
    ]
    assert core.events.types(job.id) == ["created", "claimed", "started"]


def test_listeners_see_only_claimed_for_a_plain_claim(core_seen: tuple[MemoryCore, _Seen]) -> None:
    core, seen = core_seen
    job = core.dispatcher.submit(_process())
    assert core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE) is not None
    assert [e for e, _, _ in seen.seen] == [EventType.created, EventType.claimed]


def _no_reads(core: MemoryCore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the end read the job before its write")

    monkeypatch.setattr(core.store, "get", refuse)
    monkeypatch.setattr(core.store, "find", refuse)


def test_an_end_with_the_runners_copy_reads_nothing_first(
    core_seen: tuple[MemoryCore, _Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    core, _ = core_seen
    job = core.dispatcher.submit(_builtin())
    mine = core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE)
    assert mine is not None
    validated: list[Any] = []
    real_validate = store_module._SPEC.validate_python

    def counting(raw: Any, *args: Any, **kwargs: Any) -> Any:
        validated.append(raw)
        return real_validate(raw, *args, **kwargs)

    with monkeypatch.context() as m:
        _no_reads(core, m)
        m.setattr(store_module._SPEC, "validate_python", counting)
        done = core.lifecycle.end(job.id, R, 1, Verdict(status=JobStatus.succeeded), mine)
    assert done.status == JobStatus.succeeded and done.progress.percent == 100
    assert core.events.types(job.id)[-1] == "succeeded"
    # Nor validates the row's spec again: a job's spec never changes, the runner holds it.
    assert validated == [] and done.spec is mine.spec


def test_a_cancel_asked_after_the_runners_copy_still_wins(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_builtin(max_attempts=3))
    mine = core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE)
    assert mine is not None and not mine.cancel_requested
    core.dispatcher.cancel(job.id)  # the copy does not know
    for verdict in (
        Verdict(status=JobStatus.succeeded, result={"n": 1}),
        Verdict(status=JobStatus.failed, error="boom", may_retry=True),
    ):
        other = core.dispatcher.submit(_builtin(max_attempts=3))
        theirs = core.lifecycle.claim(other.id, R, 1, start_at_once=AT_ONCE)
        assert theirs is not None
        core.dispatcher.cancel(other.id)
        done = core.lifecycle.end(other.id, R, 1, verdict, theirs)
        assert (done.status, done.error, done.attempt) == (JobStatus.cancelled, "cancelled", 1)
    done = core.lifecycle.end(job.id, R, 1, Verdict(status=JobStatus.succeeded), mine)
    assert done.status == JobStatus.cancelled
    assert [a.outcome for a in core.store.attempts(job.id)] == ["cancelled"]


def test_a_retry_with_the_runners_copy_spends_max_attempts(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_builtin(max_attempts=2, retry_backoff_s=0))
    outcomes = []
    for attempt in (1, 2):
        mine = core.lifecycle.claim(job.id, R, attempt, start_at_once=AT_ONCE)
        assert mine is not None and mine.attempt == attempt
        verdict = Verdict(status=JobStatus.failed, error="boom", exit_code=1, may_retry=True)
        outcomes.append(core.lifecycle.end(job.id, R, attempt, verdict, mine).status)
    assert outcomes == [JobStatus.queued, JobStatus.failed]
    assert [a.outcome for a in core.store.attempts(job.id)] == ["retried", "failed"]


def test_an_end_with_a_stale_copy_is_refused(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_builtin())
    mine = core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE)
    assert mine is not None
    assert core.lifecycle.lose(mine) is not None  # the reconciler re-queued it (attempt 2)
    with pytest.raises(NotHeld):
        core.lifecycle.end(job.id, R, 1, Verdict(status=JobStatus.succeeded), mine)
    assert core.store.get(job.id).status == JobStatus.queued


def test_a_timed_out_end_names_the_limit(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_builtin(timeout_s=2))
    mine = core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE)
    assert mine is not None
    done = core.lifecycle.end(job.id, R, 1, Verdict(status=JobStatus.timed_out), mine)
    assert (done.status, done.error) == (JobStatus.timed_out, "timed out after 2 s")


def test_a_renewal_is_one_write_with_the_held_back_progress(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_builtin())
    assert core.lifecycle.claim(job.id, R, 1, start_at_once=AT_ONCE) is not None
    core.lifecycle.progress(job.id, R, 1, 10, "first")  # held back: the claim just wrote
    core.lifecycle.progress(job.id, R, 1, 20, "held back")  # (the latest wins)
    statements: list[str] = []

    def count(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        statements.append(statement)

    sa.event.listen(core.store.engine, "before_cursor_execute", count)
    try:
        renewal = core.lifecycle.renew(job.id, R, 1)
    finally:
        sa.event.remove(core.store.engine, "before_cursor_execute", count)
    assert renewal.held and not renewal.cancel
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("UPDATE")
    assert core.store.get(job.id).progress.message == "held back"
    core.dispatcher.cancel(job.id)
    assert core.lifecycle.renew(job.id, R, 1).cancel
    assert not core.lifecycle.renew(job.id, R, 2).held


def test_a_transition_from_no_allowed_status_matches_nothing(store: JobStore) -> None:
    job = store.create(_process())
    assert store.transition(job.id, JobStatus.cancelled, expect=[JobStatus.running]) is None
    assert store.transition(job.id, JobStatus.cancelled, expect=[]) is None
    assert store.get(job.id).status == JobStatus.queued
    done = store.transition(job.id, JobStatus.cancelled, expect=[JobStatus.queued])
    assert done is not None and done.status == JobStatus.cancelled


def test_a_rehearsal_claims_and_ends_a_job_and_leaves_nothing(store: JobStore) -> None:
    # (tasks/warm.py: a worker rehearses before its pool forks, and each child again)
    announced: list[Any] = []
    lifecycle = Lifecycle(Settings(), store, Listeners(), lambda *a, **k: announced.append(a))
    statements: list[str] = []

    def seen(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        lifecycle.rehearse(R, AT_ONCE)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert any(s.startswith("INSERT INTO jobs") for s in statements)  # the claimed row
    # (PostgreSQL: in the claim's own statement, a data-modifying CTE)
    assert any("INSERT INTO attempts" in s for s in statements)
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0
        assert c.execute(sa.select(sa.func.count()).select_from(attempts)).scalar_one() == 0
    assert announced == []
