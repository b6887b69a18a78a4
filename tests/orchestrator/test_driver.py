"""orchestrator/driver.py: the store's hot statements on the driver's connection give what
SQLAlchemy's execution gives for the same statement — the same rows, the same errors, a
rolled-back transaction on failure, a lost connection replaced — on SQLite and on
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.driver import Driver
from orchestrator.job import Job, JobStatus
from orchestrator.schema import attempts, jobs
from orchestrator.store import _GET_JOB, _INSERT_JOB, _SPEC, STORE_DOWN, JobStore
from orchestrator.testing import ManualClock
from tests.support import SqlSent

R = "runner-0123456789ab"


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    s = JobStore(backend_url, clock=ManualClock())
    yield s
    s.dispose()


def _sqlalchemy_row(store: JobStore, stmt: Any, params: dict[str, Any]) -> dict[str, Any]:
    with store.engine.connect() as c:
        row = c.execute(stmt, params).first()
    assert row is not None
    return dict(row._mapping)


def _rich_job(store: JobStore) -> str:
    """A job whose row has every kind of column set: JSON, times, booleans, floats."""
    job = store.create(
        {
            "executor": "process",
            "command": ["echo", "ünïcode ✓"],
            "labels": {"team": "a"},
            "secrets": {"TOKEN": "s3cret"},
            "run_at": "2030-01-02T03:04:05.123456+00:00",
        }
    )
    with store.engine.begin() as c:  # (the rest of the columns, by SQLAlchemy)
        c.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(
                cancel_requested=True,
                cancel_requested_at=datetime(2031, 5, 6, 7, 8, 9, 10, tzinfo=UTC),
                progress_percent=12.5,
                result={"n": [1, 2.5, None, "x"]},
                steps=[{"name": "s", "exit_code": 0}],
            )
        )
    return job.id


def test_a_read_gives_the_row_sqlalchemy_gives(store: JobStore) -> None:
    job_id = _rich_job(store)
    with store._driver.read() as tx:
        fast = tx.first(_GET_JOB, {"job_id": job_id})
    slow = _sqlalchemy_row(store, _GET_JOB, {"job_id": job_id})
    assert fast == slow
    assert fast is not None and fast["not_before"].tzinfo is not None
    assert fast["cancel_requested"] is True and fast["result"] == {"n": [1, 2.5, None, "x"]}
    assert store.get(job_id).spec.secrets == {"TOKEN": "s3cret"}
    with store._driver.read() as tx:
        assert tx.first(_GET_JOB, {"job_id": "nope"}) is None


def test_an_insert_writes_what_sqlalchemy_would(store: JobStore) -> None:
    made = store.create({"executor": "builtin", "type": "echo_delay", "params": {"message": "é"}})
    row = _sqlalchemy_row(store, _GET_JOB, {"job_id": made.id})
    # (the columns the row does not name take their defaults, as SQLAlchemy's insert does)
    assert (row["losses"], row["handbacks"], row["has_dependents"]) == (0, 0, False)
    assert row["spec"]["params"] == {"message": "é", "delay": 3}
    assert row["created_at"] == made.created_at
    assert store.get(made.id).model_dump() == made.model_dump()


def _same(a: Job, b: Job) -> bool:
    """The same job (its running time aside: that is the reader's clock)."""
    return a.model_dump(exclude={"duration_s"}) == b.model_dump(exclude={"duration_s"})


def test_an_insert_stores_each_value_as_sqlalchemy_stores_it(store: JobStore) -> None:
    # (SQLAlchemy stores a JSON column's None as JSON 'null', not SQL NULL: the driver too)
    spec = {"executor": "process", "command": ["true"]}
    fast = store.create(spec).id
    slow = "f" * 32
    values = store._new_row(_SPEC.validate_python(spec), slow, None, None, None)
    with store.engine.begin() as c:
        c.execute(_INSERT_JOB, values)
    columns = [c for c in jobs.c if c.name not in ("id", "task_id", "created_at")]
    raw = sa.select(*(sa.cast(c, sa.Text).is_(None).label(c.name) for c in columns))
    with store.engine.connect() as c:
        a = c.execute(raw.where(jobs.c.id == fast)).one()._asdict()
        b = c.execute(raw.where(jobs.c.id == slow)).one()._asdict()
    assert a == b
    assert a["secrets"] is False and a["runner_id"] is True  # (JSON null; SQL NULL)


def test_a_claim_and_an_end_write_both_tables(store: JobStore) -> None:
    job = store.create({"executor": "builtin", "type": "primes", "params": {"limit": 100}})
    won = store.claim(job.id, R, 30, attempt=1, start_at_once=frozenset({"builtin"}))
    assert won is not None and won.status == JobStatus.running
    assert _same(won, store.get(job.id))
    done = store.finish(job.id, 1, JobStatus.succeeded, exit_code=0, runner_id=R)
    assert done is not None and done.model_dump() == store.get(job.id).model_dump()
    with store.engine.connect() as c:
        [row] = c.execute(sa.select(attempts).where(attempts.c.job_id == job.id)).all()
    assert (row.outcome, row.exit_code, row.runner_id) == ("succeeded", 0, R)
    assert row.started_at == row.claimed_at == won.started_at


def test_a_failed_statement_rolls_back_and_raises_as_sqlalchemy_does(store: JobStore) -> None:
    first = store.create({"executor": "process", "command": ["true"]})
    values = _sqlalchemy_row(store, _GET_JOB, {"job_id": first.id})
    fresh = {**values, "id": "0" * 32}
    if store._driver.autocommit:  # (PostgreSQL: each statement is its own transaction)
        with pytest.raises(sa.exc.IntegrityError), store._driver.write() as tx:
            tx.run(_INSERT_JOB, values)
    else:
        with pytest.raises(sa.exc.IntegrityError), store._driver.write() as tx:
            tx.run(_INSERT_JOB, fresh)  # (rolled back with the failure after it)
            tx.run(_INSERT_JOB, values)
        assert store.find(fresh["id"]) is None
    # The connection went back to the pool clean: the next write commits.
    assert store.create({"executor": "process", "command": ["true"]}) is not None


def test_an_exception_inside_a_write_rolls_it_back(store: JobStore) -> None:
    job = store.create({"executor": "process", "command": ["true"]})
    hold = jobs.update().where(jobs.c.id == sa.bindparam("p_id")).values(hold="limit")
    with pytest.raises(RuntimeError), store._driver.write() as tx:
        tx.run(hold, {"p_id": job.id})
        raise RuntimeError("boom")
    # (PostgreSQL: the store sends only one-statement writes here, each in autocommit)
    assert store.get(job.id).hold == ("limit" if store._driver.autocommit else None)
    with pytest.raises(RuntimeError), store._driver.rehearsal() as tx:
        tx.run(hold, {"p_id": job.id})
        raise RuntimeError("boom")
    with store._driver.rehearsal() as tx:  # (rolled back at the end, whatever happens)
        assert tx.run(jobs.delete().where(jobs.c.id == sa.bindparam("p_id")), {"p_id": job.id})
    assert store.find(job.id) is not None


def test_a_statement_the_driver_cannot_lay_out_is_refused(store: JobStore) -> None:
    expanding = sa.select(jobs.c.id).where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
    with pytest.raises(TypeError, match="expanding"), store._driver.read() as tx:
        tx.first(expanding, {"ids": ["a"]})
    computed = sa.Table(
        "computed",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, default=datetime.now),
    )
    with pytest.raises(TypeError, match="plain defaults"):
        Driver(store.engine, autocommit=False).compiled(computed.insert(), {"id": 1})


def test_a_lost_connection_is_replaced(postgres_url: str) -> None:
    store = JobStore(postgres_url)
    killer = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    try:
        job = store.create({"executor": "process", "command": ["true"]})
        with killer.connect() as c:  # every connection the store's pool holds, killed
            killed = c.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 1
        seen: list[BaseException] = []
        pool = store.engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        for _ in range(pool.size() + 2):
            try:
                assert store.get(job.id).id == job.id
                break
            except STORE_DOWN as exc:
                seen.append(exc)
        else:
            raise AssertionError(f"the store never answered again: {seen}")
        assert seen and all(getattr(e, "connection_invalidated", False) for e in seen)
    finally:
        killer.dispose()
        store.dispose()


def test_a_ping_reads_nothing_and_fails_when_the_store_is_down(store: JobStore) -> None:
    with SqlSent(store.engine) as seen:
        store.ping()
    assert seen.sent == ["SELECT 1"]
    gone = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/none", create=False)
    try:
        with pytest.raises(STORE_DOWN):
            gone.ping()
    finally:
        gone.dispose()
