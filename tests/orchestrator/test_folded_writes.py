"""Issue 13, PostgreSQL's round trips: a claim, a start and an end are one statement each
(the attempt's row written in it, a data-modifying CTE) in autocommit, and a read or a
plain insert sends no BEGIN or COMMIT; what lands in both tables is what the
transactional path writes, on SQLite and PostgreSQL alike. (A session's or a keyed job's
claim keeps its transaction, for its guard or its key's lock: test_claim_at_once.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.job import JobStatus, ProcessSpec
from orchestrator.schema import attempts
from orchestrator.store import _SPEC, JobStore
from orchestrator.testing import ManualClock
from tests.support import SqlSent

R = "runner-0123456789ab"
AT_ONCE = frozenset({"builtin"})


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    s = JobStore(backend_url, clock=ManualClock())
    yield s
    s.dispose()


def _attempt_rows(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    with store.engine.connect() as c:
        q = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
        return [dict(r._mapping) for r in c.execute(q)]


def test_claim_start_end_write_both_tables(store: JobStore) -> None:
    job = store.create({"executor": "process", "command": ["true"]})
    claimed = store.claim(job.id, R, 30, attempt=1)
    assert claimed is not None and claimed.status == JobStatus.claimed
    [row] = _attempt_rows(store, job.id)
    assert (row["number"], row["runner_id"], row["started_at"]) == (1, R, None)
    started = store.start(job.id, 1, 30, runner_id=R, handle="pid:42")
    assert started is not None and started.status == JobStatus.running
    ended = store.finish(job.id, 1, JobStatus.succeeded, exit_code=0, runner_id=R)
    assert ended is not None and ended.status == JobStatus.succeeded and ended.exit_code == 0
    [row] = _attempt_rows(store, job.id)
    assert row["handle"] == "pid:42" and row["started_at"] is not None
    assert (row["outcome"], row["exit_code"]) == ("succeeded", 0) and row["ended_at"] is not None
    # The fencing holds: a second end and a second claim win nothing, and write nothing.
    assert store.finish(job.id, 1, JobStatus.failed, runner_id=R) is None
    assert store.claim(job.id, R, 30) is None
    assert [r["outcome"] for r in _attempt_rows(store, job.id)] == ["succeeded"]


def test_a_builtin_claim_starts_its_attempt_row_too(store: JobStore) -> None:
    job = store.create({"executor": "builtin", "type": "primes", "params": {"limit": 100}})
    claimed = store.claim(job.id, R, 30, start_at_once=AT_ONCE)
    assert claimed is not None and claimed.status == JobStatus.running
    [row] = _attempt_rows(store, job.id)
    assert row["started_at"] == row["claimed_at"] and row["started_at"] is not None


def test_a_retry_ends_the_row_and_the_next_claim_adds_one(store: JobStore) -> None:
    job = store.create({"executor": "process", "command": ["false"], "max_attempts": 2})
    assert store.claim(job.id, R, 30) is not None
    again = store.requeue(job.id, 1, reason="exit 1", exit_code=1, runner_id=R)
    assert again is not None and again.attempt == 2 and again.status == JobStatus.queued
    assert store.claim(job.id, R, 30, attempt=2) is not None
    rows = _attempt_rows(store, job.id)
    assert [(r["number"], r["outcome"]) for r in rows] == [(1, "retried"), (2, None)]


def test_round_trips_per_write(store: JobStore, backend_url: str) -> None:
    job = store.create({"executor": "builtin", "type": "primes", "params": {"limit": 100}})
    with SqlSent(store.engine) as seen:
        store.get(job.id)
        store.claim(job.id, R, 30, start_at_once=AT_ONCE)
        store.finish(job.id, 1, JobStatus.succeeded, exit_code=0, runner_id=R)
        store.create({"executor": "builtin", "type": "primes", "params": {"limit": 100}})
    if backend_url.startswith("postgresql"):
        # One statement each, none wrapped in BEGIN … COMMIT.
        assert seen.sent == ["SELECT JOBS.ID,", "WITH WON", "WITH WON", "INSERT INTO"]
    else:  # SQLite: a write is one transaction (no round trip to save), a read none
        assert seen.sent == [
            "SELECT JOBS.ID,",
            *("BEGIN IMMEDIATE", "UPDATE JOBS", "INSERT INTO", "COMMIT"),
            *("BEGIN IMMEDIATE", "UPDATE JOBS", "UPDATE ATTEMPTS", "COMMIT"),
            *("BEGIN IMMEDIATE", "INSERT INTO", "COMMIT"),
        ]


def test_jobs_submitted_together_are_one_insert(store: JobStore, backend_url: str) -> None:
    specs = [
        _SPEC.validate_python({"executor": "process", "command": ["echo", str(i)]})
        for i in range(3)
    ]
    with SqlSent(store.engine) as seen:
        made = store.create_many(specs)
    commands = []
    for j in made:
        spec = store.get(j.id).spec
        assert isinstance(spec, ProcessSpec)
        commands.append(spec.command)
    assert commands == [
        ["echo", "0"],
        ["echo", "1"],
        ["echo", "2"],
    ]
    if backend_url.startswith("postgresql"):  # (one statement: all or none, in autocommit)
        assert seen.sent == ["INSERT INTO"]
    else:
        assert seen.sent == ["BEGIN IMMEDIATE", *["INSERT INTO"] * 3, "COMMIT"]
