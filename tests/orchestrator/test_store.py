"""The job store's suite, run on every backend (SQLite and PostgreSQL via ``backend_url``).

It pins the store's contract: every transition of ``orchestrator.job.TRANSITIONS`` is one
compare-and-set, losers get ``None``, races have exactly one winner, and data outlives
the process that wrote it. Schema migrations (Alembic) are tested at the bottom.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.errors import JobNotEnded, JobNotFound
from orchestrator.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Job,
    JobStatus,
    utcnow,
)
from orchestrator.migrations import (
    INITIAL_REVISION,
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from orchestrator.schema import jobs, make_engine, metadata
from orchestrator.store import JobStore

LEASE = 30.0
S = JobStatus


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}
    base.update(over)
    return base


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    st = JobStore(backend_url)
    yield st
    st.dispose()


def job_in(store: JobStore, status: JobStatus, **spec_over: Any) -> Job:
    """A new job brought to ``status`` through the store's own transitions."""
    job = store.create(spec(**spec_over))
    if status == S.queued:
        return job
    claimed = store.claim(job.id, "runner-a", LEASE)
    assert claimed is not None
    if status == S.claimed:
        return claimed
    running = store.start(job.id, 1, LEASE)
    assert running is not None
    if status == S.running:
        return running
    ended = store.finish(job.id, 1, status, exit_code=0 if status == S.succeeded else 1)
    assert ended is not None and ended.status == status
    return ended


def set_created(store: JobStore, job_id: str, when: datetime) -> None:
    with store.engine.begin() as c:
        c.execute(jobs.update().where(jobs.c.id == job_id).values(created_at=when))


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at once in threads (released together by a barrier); their results."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn()
        except BaseException as exc:  # surfaced below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    if errors:
        raise errors[0]
    return results


# ------------------------------------------------------------------ create and read


def test_create_starts_queued_with_attempt_one(store: JobStore) -> None:
    job = store.create(spec(name="n", labels={"team": "a"}), match_timeout_s=60)
    assert job.status == S.queued
    assert job.attempt == 1
    assert job.runner_id is None and job.claimed_at is None
    assert job.spec.labels == {"team": "a"}
    assert job.name == "n"
    assert job.created_at.tzinfo is not None
    assert job.match_deadline is not None
    assert timedelta(seconds=59) < job.match_deadline - job.created_at <= timedelta(seconds=60)
    assert store.get(job.id) == job


def test_get_unknown_raises_and_find_returns_none(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("nope")
    assert store.find("nope") is None


def test_fields_round_trip_with_json_and_utc(store: JobStore) -> None:
    job = job_in(store, S.running)
    result = {"primes": [2, 3, 5], "nested": {"ok": True, "x": None}}
    steps = [
        {
            "name": "build",
            "exit_code": 0,
            "started_at": utcnow().isoformat(),
            "finished_at": utcnow().isoformat(),
        }
    ]
    assert store.update_fields(job.id, 1, result=result, steps=steps, resource_usage={"cpu_s": 1.5})
    assert store.set_progress(job.id, 1, 42.5, "half way")
    got = store.get(job.id)
    assert got.result == result
    assert [s.name for s in got.steps] == ["build"] and got.steps[0].exit_code == 0
    assert got.resource_usage == {"cpu_s": 1.5}
    assert got.progress.percent == 42.5 and got.progress.message == "half way"
    assert got.started_at is not None and got.started_at.tzinfo == UTC
    assert abs((got.started_at - utcnow()).total_seconds()) < 300


# ------------------------------------------------------------------ the transition table


@pytest.mark.parametrize("source", list(S), ids=lambda s: s.value)
def test_every_transition_of_the_table(store: JobStore, source: JobStatus) -> None:
    """From ``source``, exactly the table's targets are reachable; the rest answer None."""
    for target in S:
        job = job_in(store, source)
        got = store.transition(job.id, target)
        if target in TRANSITIONS[source]:
            assert got is not None, f"{source} -> {target} refused"
            assert got.status == target
            assert store.get(job.id).status == target
            if target in TERMINAL_STATUSES:
                assert got.finished_at is not None and got.lease_expires_at is None
        else:
            assert got is None, f"{source} -> {target} allowed"
            assert store.get(job.id).status == source


def test_terminal_statuses_have_no_way_out(store: JobStore) -> None:
    for status in TERMINAL_STATUSES:
        job = job_in(store, status)
        assert store.claim(job.id, "r", LEASE) is None
        assert store.start(job.id, job.attempt, LEASE) is None
        assert store.requeue(job.id, job.attempt, reason="x") is None
        assert store.request_cancel(job.id) is None
        assert store.get(job.id).status == status


def test_claim_sets_runner_and_lease(store: JobStore) -> None:
    job = store.create(spec())
    got = store.claim(job.id, "runner-7", 10)
    assert got is not None and got.status == S.claimed
    assert got.runner_id == "runner-7"
    assert got.claimed_at is not None and got.lease_expires_at is not None
    assert timedelta(seconds=9) < got.lease_expires_at - got.claimed_at <= timedelta(seconds=10)


def test_start_and_finish_record_times_and_exit(store: JobStore) -> None:
    job = job_in(store, S.claimed)
    running = store.start(job.id, 1, LEASE)
    assert running is not None and running.started_at is not None
    done = store.finish(job.id, 1, S.failed, exit_code=3, error="boom")
    assert done is not None
    assert (done.status, done.exit_code, done.error) == (S.failed, 3, "boom")
    assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]
    assert done.lease_expires_at is None


# ------------------------------------------------------------------ CAS losers


def test_cas_losers_get_none(store: JobStore) -> None:
    job = store.create(spec())
    assert store.claim(job.id, "a", LEASE) is not None
    assert store.claim(job.id, "b", LEASE) is None, "a second claim must lose"
    assert store.get(job.id).runner_id == "a"
    assert store.start(job.id, 2, LEASE) is None, "a stale attempt must lose"
    assert store.start(job.id, 1, LEASE) is not None
    assert store.start(job.id, 1, LEASE) is None, "running cannot start again"
    assert store.finish(job.id, 2, S.succeeded) is None
    assert store.finish(job.id, 1, S.succeeded) is not None
    assert store.finish(job.id, 1, S.failed) is None, "an ended job stays ended"
    assert store.get(job.id).status == S.succeeded


def test_live_attempt_updates_refuse_stale_attempts_and_ended_jobs(store: JobStore) -> None:
    job = job_in(store, S.running)
    assert store.renew_lease(job.id, 1, LEASE)
    assert not store.renew_lease(job.id, 2, LEASE)
    assert not store.set_progress(job.id, 2, 10, "stale")
    assert not store.update_fields(job.id, 2, result={"x": 1})
    store.finish(job.id, 1, S.succeeded)
    assert not store.renew_lease(job.id, 1, LEASE)
    assert not store.set_progress(job.id, 1, 99, "late")
    assert store.get(job.id).progress.message == ""


def test_expect_and_attempt_narrow_the_sources(store: JobStore) -> None:
    job = job_in(store, S.claimed)
    assert store.transition(job.id, S.failed, expect=[S.running]) is None
    assert store.transition(job.id, S.failed, attempt=5) is None
    assert store.transition(job.id, S.failed, attempt=1, expect=[S.claimed]) is not None


# ------------------------------------------------------------------ claim_next (agents)


def test_claim_next_takes_the_oldest_job_that_fits(store: JobStore) -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    a = store.create(spec())
    b = store.create({"executor": "process", "command": ["true"]})
    c = store.create(spec(demands={"tags": ["gpu"]}))
    d = store.create(spec())
    for i, j in enumerate((a, b, c, d)):
        set_created(store, j.id, t0 + timedelta(seconds=i))

    first = store.claim_next("agent-1", ["builtin"], [], LEASE)
    assert first is not None and first.id == a.id
    assert first.status == S.claimed and first.runner_id == "agent-1"
    second = store.claim_next("agent-1", ["builtin"], [], LEASE)
    assert second is not None and second.id == d.id  # c needs a tag agent-1 lacks
    assert store.claim_next("agent-1", ["builtin"], [], LEASE) is None
    gpu = store.claim_next("agent-2", ["builtin"], ["gpu", "ssd"], LEASE)
    assert gpu is not None and gpu.id == c.id
    proc = store.claim_next("agent-3", ["process", "docker"], [], LEASE)
    assert proc is not None and proc.id == b.id


def test_claim_next_pages_past_jobs_that_do_not_fit(store: JobStore) -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    for i in range(5):
        j = store.create(spec(demands={"tags": ["gpu"]}))
        set_created(store, j.id, t0 + timedelta(seconds=i))
    plain = store.create(spec())
    set_created(store, plain.id, t0 + timedelta(seconds=10))
    got = store.claim_next("agent", ["builtin"], [], LEASE, page=2)
    assert got is not None and got.id == plain.id
    assert store.claim_next("agent", ["builtin"], [], LEASE, page=2) is None


def test_claim_next_waits_out_a_retrys_backoff(store: JobStore) -> None:
    job = job_in(store, S.running)
    again = store.requeue(job.id, 1, reason="attempt 1 failed", match_timeout_s=60, delay_s=30)
    assert again is not None and again.not_before is not None
    assert timedelta(seconds=29) < again.not_before - utcnow() <= timedelta(seconds=30)
    # the match window starts when the backoff ends
    assert again.match_deadline is not None
    assert again.match_deadline - again.not_before == timedelta(seconds=60)
    assert store.claim_next("runner-b", ["builtin"], [], LEASE) is None
    with store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    taken = store.claim_next("runner-b", ["builtin"], [], LEASE)
    assert taken is not None and taken.id == job.id and taken.attempt == 2
    # a requeue without a delay (a lost lease) leaves nothing to wait for
    requeued = store.requeue(job.id, 2, reason="lease lost")
    assert requeued is not None
    assert requeued.not_before is None


def test_claim_next_skips_jobs_past_their_match_deadline(store: JobStore) -> None:
    late = store.create(spec(match_timeout_s=5))
    with store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id == late.id)
            .values(match_deadline=utcnow() - timedelta(seconds=1))
        )
    assert store.claim_next("agent", ["builtin"], [], LEASE) is None
    assert store.get(late.id).status == S.queued


def test_racing_claim_next_never_hands_one_job_to_two(backend_url: str) -> None:
    racers = [JobStore(backend_url) for _ in range(6)]
    try:
        made = {racers[0].create(spec()).id for _ in range(4)}
        results = race(
            *[
                (lambda st=st, i=i: st.claim_next(f"agent-{i}", ["builtin"], [], LEASE))
                for i, st in enumerate(racers)
            ]
        )
        won = [r.id for r in results if r is not None]
        assert sorted(won) == sorted(made), "each job exactly once, every job taken"
    finally:
        for st in racers:
            st.dispose()


# ------------------------------------------------------------------ races


def test_racing_claims_of_one_job_have_exactly_one_winner(backend_url: str) -> None:
    racers = [JobStore(backend_url) for _ in range(6)]
    try:
        for _ in range(5):
            job = racers[0].create(spec())
            results = race(
                *[
                    (lambda st=st, i=i, job=job: st.claim(job.id, f"runner-{i}", LEASE))
                    for i, st in enumerate(racers)
                ]
            )
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, f"{len(winners)} claims won"
            assert racers[0].get(job.id).runner_id == winners[0].runner_id
    finally:
        for st in racers:
            st.dispose()


def test_cancel_racing_finish_never_ends_succeeded_after_an_accepted_cancel(
    backend_url: str,
) -> None:
    canceller, runner = JobStore(backend_url), JobStore(backend_url)
    try:
        outcomes = set()
        for _ in range(12):
            job = job_in(canceller, S.running)
            cancelled, finished = race(
                partial(canceller.request_cancel, job.id),
                partial(runner.finish, job.id, 1, S.succeeded, exit_code=0),
            )
            final = canceller.get(job.id)
            assert (cancelled is None) != (finished is None), "exactly one side must win"
            if cancelled is not None:
                assert final.status != S.succeeded
                assert final.cancel_requested
                # the runner then stops the job and ends it cancelled
                assert runner.finish(job.id, 1, S.cancelled) is not None
                outcomes.add("cancel")
            else:
                assert final.status == S.succeeded
                assert not final.cancel_requested
                outcomes.add("finish")
        assert outcomes  # at least one side won every time (asserted above)
    finally:
        canceller.dispose()
        runner.dispose()


def test_accepted_cancel_blocks_success_but_not_failure(store: JobStore) -> None:
    job = job_in(store, S.running)
    marked = store.request_cancel(job.id)
    assert marked is not None and marked.cancel_requested and marked.cancel_requested_at
    assert store.request_cancel(job.id) is None, "asking twice is not a second win"
    assert store.finish(job.id, 1, S.succeeded) is None
    assert store.get(job.id).status == S.running
    assert store.finish(job.id, 1, S.cancelled) is not None


# ------------------------------------------------------------------ requeue


def test_requeue_bumps_attempt_and_clears_the_runner(store: JobStore) -> None:
    job = job_in(store, S.running)
    store.set_progress(job.id, 1, 50, "half")
    again = store.requeue(job.id, 1, reason="runner lost", match_timeout_s=60)
    assert again is not None
    assert again.status == S.queued and again.attempt == 2
    assert again.runner_id is None and again.claimed_at is None and again.started_at is None
    assert again.lease_expires_at is None
    assert again.error == "runner lost"
    assert again.progress.percent == 0
    assert again.match_deadline is not None
    # the old attempt's late writes lose; the new attempt runs normally
    assert store.finish(job.id, 1, S.succeeded) is None
    assert store.requeue(job.id, 1, reason="again") is None
    assert store.claim(job.id, "runner-b", LEASE) is not None
    assert store.start(job.id, 1, LEASE) is None
    assert store.start(job.id, 2, LEASE) is not None
    assert store.finish(job.id, 2, S.succeeded) is not None
    assert store.get(job.id).attempt == 2


def test_requeue_refuses_a_cancelled_job_and_queued_jobs(store: JobStore) -> None:
    queued = store.create(spec())
    assert store.requeue(queued.id, 1, reason="x") is None
    job = job_in(store, S.claimed)
    store.request_cancel(job.id)
    assert store.requeue(job.id, 1, reason="x") is None
    assert store.get(job.id).attempt == 1


# ------------------------------------------------------------------ list and counts


def test_list_is_newest_first_with_filters_and_pagination(store: JobStore) -> None:
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ids = []
    for i in range(7):
        j = store.create(spec())
        set_created(store, j.id, t0 + timedelta(minutes=i))
        ids.append(j.id)
    proc = store.create({"executor": "process", "command": ["true"]})
    set_created(store, proc.id, t0 + timedelta(minutes=30))
    store.claim(ids[1], "r", LEASE)
    store.claim(ids[3], "r", LEASE)

    page, total = store.list(limit=3)
    assert total == 8
    assert [j.id for j in page] == [proc.id, ids[6], ids[5]]
    page2, total2 = store.list(limit=3, offset=3)
    assert total2 == 8 and [j.id for j in page2] == [ids[4], ids[3], ids[2]]
    last, _ = store.list(limit=3, offset=6)
    assert [j.id for j in last] == [ids[1], ids[0]]

    claimed, n = store.list(statuses=["claimed"])
    assert n == 2 and [j.id for j in claimed] == [ids[3], ids[1]]
    both, n = store.list(statuses=["claimed", "queued"], limit=100)
    assert n == 8 and len(both) == 8

    by_exec, n = store.list(executor="process")
    assert n == 1 and by_exec[0].id == proc.id

    window, n = store.list(since=t0 + timedelta(minutes=2), until=t0 + timedelta(minutes=5))
    assert n == 3 and [j.id for j in window] == [ids[4], ids[3], ids[2]]


def test_list_labels_filter_counts_and_pages(store: JobStore) -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    made = []
    for i in range(6):
        labels = {"team": "a" if i % 2 == 0 else "b", "env": "prod" if i < 3 else "dev"}
        j = store.create(spec(labels=labels))
        set_created(store, j.id, t0 + timedelta(seconds=i))
        made.append(j.id)
    team_a, n = store.list(labels={"team": "a"})
    assert n == 3 and [j.id for j in team_a] == [made[4], made[2], made[0]]
    both, n = store.list(labels={"team": "a", "env": "prod"})
    assert n == 2 and {j.id for j in both} == {made[0], made[2]}
    page, n = store.list(labels={"team": "a"}, limit=1, offset=1)
    assert n == 3 and [j.id for j in page] == [made[2]]
    none, n = store.list(labels={"team": "c"})
    assert (none, n) == ([], 0)


def test_counts_by_status_names_every_status(store: JobStore) -> None:
    assert store.counts_by_status() == {s.value: 0 for s in S}
    job_in(store, S.queued)
    job_in(store, S.queued)
    job_in(store, S.running)
    job_in(store, S.failed)
    counts = store.counts_by_status()
    assert counts["queued"] == 2 and counts["running"] == 1 and counts["failed"] == 1
    assert counts["succeeded"] == 0 and set(counts) == {s.value for s in S}


def test_active_by_runner_counts_live_attempts(store: JobStore) -> None:
    a = store.create(spec())
    b = store.create(spec())
    c = store.create(spec())
    store.claim(a.id, "r1", LEASE)
    store.claim(b.id, "r1", LEASE)
    store.claim(c.id, "r2", LEASE)
    store.start(c.id, 1, LEASE)
    store.finish(c.id, 1, S.succeeded)
    assert store.active_by_runner() == {"r1": 2}


# ------------------------------------------------------------------ reconciler queries


def test_expired_leases_finds_active_jobs_past_their_lease(store: JobStore) -> None:
    claimed = job_in(store, S.claimed)
    running = job_in(store, S.running)
    job_in(store, S.succeeded)
    job_in(store, S.queued)
    assert store.expired_leases() == []
    later = utcnow() + timedelta(seconds=LEASE + 5)
    assert {j.id for j in store.expired_leases(later)} == {claimed.id, running.id}
    store.renew_lease(running.id, 1, LEASE * 10)
    assert [j.id for j in store.expired_leases(later)] == [claimed.id]


def test_overdue_queued_uses_the_match_deadline(store: JobStore) -> None:
    soon = store.create(spec(match_timeout_s=5))
    store.create(spec())  # no deadline at all
    late = store.create(spec(), match_timeout_s=500)
    claimed = store.create(spec(match_timeout_s=5))
    store.claim(claimed.id, "r", LEASE)
    assert store.overdue_queued() == []
    found = store.overdue_queued(utcnow() + timedelta(seconds=60))
    assert [j.id for j in found] == [soon.id]
    found = store.overdue_queued(utcnow() + timedelta(seconds=1000))
    assert {j.id for j in found} == {soon.id, late.id}


def test_stuck_cancels_queued_older_than_and_ended_before(store: JobStore) -> None:
    running = job_in(store, S.running)
    store.request_cancel(running.id)
    queued = store.create(spec())
    done = job_in(store, S.succeeded)
    future = utcnow() + timedelta(minutes=5)
    assert store.stuck_cancels(utcnow() - timedelta(minutes=5)) == []
    assert [j.id for j in store.stuck_cancels(future)] == [running.id]
    assert [j.id for j in store.queued_older_than(future)] == [queued.id]
    assert store.queued_older_than(utcnow() - timedelta(minutes=5)) == []
    assert [j.id for j in store.ended_before(future)] == [done.id]
    assert store.ended_before(utcnow() - timedelta(minutes=5)) == []


# ------------------------------------------------------------------ delete


def test_delete_refuses_unended_jobs_and_removes_ended_ones(store: JobStore) -> None:
    for status in (S.queued, *ACTIVE_STATUSES):
        job = job_in(store, status)
        with pytest.raises(JobNotEnded):
            store.delete(job.id)
        assert store.get(job.id).status == status
    done = job_in(store, S.cancelled)
    removed = store.delete(done.id)
    assert removed.id == done.id and removed.status == S.cancelled
    assert store.find(done.id) is None
    with pytest.raises(JobNotFound):
        store.delete(done.id)


# ------------------------------------------------------------------ restart


def test_data_survives_a_new_store_on_the_same_url(backend_url: str) -> None:
    first = JobStore(backend_url)
    queued = first.create(spec(name="keep", labels={"k": "v"}))
    running = job_in(first, S.running)
    first.update_fields(running.id, 1, result={"n": 1})
    done = job_in(first, S.succeeded)
    before = {j.id: j for j in (first.get(queued.id), first.get(running.id), first.get(done.id))}
    first.dispose()

    second = JobStore(backend_url)  # a restarted process: migrations run again, no-op
    try:
        for job_id, job in before.items():
            assert second.get(job_id) == job
        assert second.get(running.id).result == {"n": 1}
        assert second.counts_by_status()["running"] == 1
        # and it carries on where the first left off
        assert second.finish(running.id, 1, S.succeeded) is not None
    finally:
        second.dispose()


# ------------------------------------------------------------------ migrations


def test_new_database_is_at_head_and_matches_the_table(store: JobStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as c:
        assert current_revision(c) == head_revision()
        diff = compare_metadata(
            MigrationContext.configure(c, opts={"compare_type": True}), metadata
        )
    assert diff == [], f"migrations and orchestrator.schema.jobs differ: {diff}"


def _first_release_database(engine: sa.Engine) -> None:
    """The schema as the first release's create_all made it: revision 0001's table and no
    ``alembic_version``."""
    from alembic import command

    with engine.begin() as c:
        command.upgrade(alembic_config(c), INITIAL_REVISION)
        c.execute(sa.text("DROP TABLE alembic_version"))


def _old_row(job_id: str, status: JobStatus, labels: dict[str, str]) -> dict[str, Any]:
    """A row as the first release wrote it: only the columns revision 0001 has."""
    return {
        "id": job_id,
        "spec": spec(labels=labels),
        "executor": "builtin",
        "labels": labels,
        "status": status.value,
        "attempt": 1,
        "created_at": datetime(2025, 1, 1, 12, 0, int(job_id[-1])),
        "progress_percent": 0.0,
        "progress_message": "",
        "steps": [],
        "artifacts": [],
        "cancel_requested": False,
    }


def test_upgrade_keeps_the_data_of_a_database_made_before_migrations(backend_url: str) -> None:
    engine = make_engine(backend_url)
    _first_release_database(engine)
    rows = [_old_row(f"old{i}", S.claimed if i == 0 else S.queued, {"i": str(i)}) for i in range(3)]
    old_jobs = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    assert "not_before" not in old_jobs.c  # the upgrade has something to do
    with engine.begin() as c:
        c.execute(old_jobs.insert(), rows)
        assert current_revision(c) is None

    upgrade_to_head(engine)
    upgrade_to_head(engine)  # running it again changes nothing
    with engine.connect() as c:
        assert current_revision(c) == head_revision()
    engine.dispose()

    store = JobStore(backend_url)
    try:
        labels = [store.get(r["id"]).spec.labels for r in rows]
        assert labels == [{"i": "0"}, {"i": "1"}, {"i": "2"}]
        assert store.get("old0").status == S.claimed
        assert store.get("old1").not_before is None
        assert store.list()[1] == 3
        # and the upgraded rows take part in the new columns' rules
        claimed = store.claim_next("runner-a", ["builtin"], [], LEASE)
        assert claimed is not None
        assert claimed.id == "old1"
    finally:
        store.dispose()


def test_processes_starting_together_migrate_once(backend_url: str) -> None:
    """api, workers and beat all create a store at start; only one may create the table."""
    engines = [make_engine(backend_url) for _ in range(5)]
    try:
        race(*[(lambda e=e: upgrade_to_head(e)) for e in engines])
        with engines[0].connect() as c:
            assert current_revision(c) == head_revision()
            versions = c.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [v[0] for v in versions] == [head_revision()]
    finally:
        for e in engines:
            e.dispose()
