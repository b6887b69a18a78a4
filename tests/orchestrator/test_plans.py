"""Issue 13: an attempt's writes find their job by its primary key, whatever the
planner's statistics say.

Measured in the bench (2026-12-03): on a PostgreSQL table no ANALYZE had seen yet (a new
database, or a burst after an idle hour with stale statistics), the planner took
``ix_jobs_status_created`` for ``id = … AND status = 'queued'`` and read every queued
job's index entry to claim one (45–75 buffers a claim with 400 queued: quadratic in the
queue's depth), and joined an end's attempt row by a sequential scan of ``attempts``: 1.5 ms
of PostgreSQL's time per job against 0.32 ms once analyzed. The store's id-keyed
statements now test their other conditions on the row the key finds
(:func:`orchestrator.schema.on_the_row`), and an attempt's row is found by its own key.

Each test records what the store sends (the driver's statements included) and asks the
database for the plan of every write to ``jobs`` or ``attempts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.job import JobStatus
from orchestrator.store import _SPEC, JobStore

R = "runner-0123456789ab"
AT_ONCE = frozenset({"builtin"})
BUILTIN = {"executor": "builtin", "type": "primes", "params": {"limit": 100}}
PROCESS = {"executor": "process", "command": ["true"]}


class Sent:
    """The (statement, parameters) pairs the engine's connections and the store's driver
    send, writes only."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.writes: list[tuple[str, Any]] = []

    def _seen(self, _conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        head = " ".join(sql.split()[:3]).upper()
        if head.startswith(("UPDATE JOBS", "UPDATE ATTEMPTS", "WITH WON")):
            self.writes.append((sql, params))

    def __enter__(self) -> Sent:
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


def _plan(engine: sa.Engine, sql: str, params: Any) -> str:
    """The plan the database would take for ``sql`` now (not run: rolled back besides)."""
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as c:
        rows = c.exec_driver_sql(explain + sql, params).all()
        c.rollback()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    s = JobStore(backend_url)
    yield s
    s.dispose()


def _every_write(store: JobStore) -> list[tuple[str, Any]]:
    """A deep queue (what tempted the planner), then one attempt of each shape: a built-in
    claimed and started at once and ended, a process job claimed, started, renewed with
    its progress and ended, a cancel asked, a requeue."""
    store.create_many([_SPEC.validate_python(s) for s in [BUILTIN] * 150 + [PROCESS] * 150])
    builtin = store.create(BUILTIN)
    process = store.create(PROCESS)
    other = store.create(PROCESS)
    cancelled = store.create(PROCESS)
    with Sent(store.engine) as sent:
        assert store.claim(builtin.id, R, 30, start_at_once=AT_ONCE) is not None
        assert store.finish(builtin.id, 1, JobStatus.succeeded, runner_id=R) is not None
        assert store.claim(process.id, R, 30, attempt=1) is not None
        assert store.start(process.id, 1, 30, runner_id=R, handle="pid:1") is not None
        assert store.extend_lease(process.id, 1, 30, runner_id=R, progress=(50, "half")) is False
        assert store.set_progress(process.id, 1, 60, "more", runner_id=R)
        assert store.finish(process.id, 1, JobStatus.succeeded, runner_id=R) is not None
        assert store.claim(other.id, R, 30) is not None
        assert store.requeue(other.id, 1, reason="test", runner_id=R) is not None
        assert store.claim(cancelled.id, R, 30) is not None
        assert store.request_cancel(cancelled.id) is not None
    return sent.writes


def test_every_attempt_write_finds_its_job_by_the_primary_key(store: JobStore) -> None:
    writes = _every_write(store)
    assert len(writes) >= 9, [w[0][:60] for w in writes]
    sqlite = store.engine.dialect.name == "sqlite"
    for sql, params in writes:
        plan = _plan(store.engine, sql, params)
        if sqlite:
            for line in plan.splitlines():
                if " jobs " in f" {line} " or "attempts" in line:
                    assert "USING INDEX sqlite_autoindex" in line or "USING PRIMARY KEY" in line, (
                        sql[:120],
                        plan,
                    )
            continue
        if "UPDATE jobs" in sql.split("RETURNING")[0] or sql.lstrip().startswith("WITH"):
            assert "jobs_pkey" in plan, (sql[:120], plan)
        # (A session's claim looks up its siblings by ix_jobs_session: an alias, rightly.)
        assert not re.search(r"(using ix_jobs_\w+|Seq Scan) on jobs  \(", plan), (sql[:120], plan)
        assert "Seq Scan on attempts" not in plan, (sql[:120], plan)


# The indexes on columns most jobs leave empty hold only the jobs that fill them
# (migration 0008): each condition, and a query on the column that its index answers.
_PARTIAL = {
    "ix_jobs_key_status": (
        "concurrency_key IS NOT NULL",
        "SELECT count(*) FROM jobs {by} WHERE concurrency_key = 'k' AND status = 'running'",
    ),
    "ix_jobs_session": (
        "session_id IS NOT NULL",
        "SELECT id FROM jobs {by} WHERE session_id = 'ses_1' AND status = 'queued'",
    ),
    "ix_jobs_hold": ("hold IS NOT NULL", "SELECT id FROM jobs {by} WHERE hold = 'limit'"),
}


def _definition(engine: sa.Engine, name: str) -> str:
    sqlite = engine.dialect.name == "sqlite"
    sql = (
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        if sqlite
        else "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
    )
    with engine.connect() as c:
        found = c.execute(sa.text(sql), {"n": name}).scalar()
    assert found, f"no index {name}"
    return " ".join(str(found).replace("(", " ").replace(")", " ").split())


@pytest.mark.parametrize("name", sorted(_PARTIAL))
def test_an_index_on_a_column_most_jobs_leave_empty_holds_only_the_jobs_that_fill_it(
    store: JobStore, name: str
) -> None:
    """A claim and an end change ``status``: an index holding every job on (key, status)
    or (session, status) was written by both for every job, though most have neither.
    The index is partial, and a query comparing the column still uses it (SQLite refuses
    ``INDEXED BY`` an index that cannot answer the query; PostgreSQL, told not to scan the
    table, names the index it takes)."""
    condition, query = _PARTIAL[name]
    assert f"WHERE {condition}" in _definition(store.engine, name)
    with store.engine.connect() as c:
        if store.engine.dialect.name == "sqlite":
            plan = c.exec_driver_sql("EXPLAIN QUERY PLAN " + query.format(by=f"INDEXED BY {name}"))
            assert name in " ".join(str(v) for row in plan for v in row)
        else:
            c.exec_driver_sql("SET enable_seqscan = off")
            plan = c.exec_driver_sql("EXPLAIN " + query.format(by=""))
            assert name in " ".join(str(row[0]) for row in plan)
            c.rollback()
