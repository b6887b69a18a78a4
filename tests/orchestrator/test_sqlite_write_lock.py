"""How a SQLite writer waits for the database's one write lock (orchestrator/schema.py
``_take_write_lock``): ``BEGIN IMMEDIATE`` before a transaction's first write, tried again
in steps of 50 µs to 1 ms instead of SQLite's 1, 2, 5, 10… ms sleeps.

Real SQLite files, a second connection holding the lock the way another process would."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import schema
from orchestrator.job import JobStatus
from orchestrator.store import STORE_DOWN, JobStore

SPEC = {"executor": "builtin", "type": "fibonacci", "params": {"count": 1}}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def store(db: Path) -> Iterator[JobStore]:
    s = JobStore(f"sqlite:///{db}")
    s.create_schema()
    yield s
    s.dispose()


def _holder(db: Path) -> sqlite3.Connection:
    """Another process's writer: holds the write lock until it commits."""
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_write_waits_for_the_lock_and_lands_once_it_is_free(store: JobStore, db: Path) -> None:
    other = _holder(db)
    done = threading.Event()
    made: list[str] = []

    def write() -> None:
        made.append(store.create(SPEC).id)
        done.set()

    t = threading.Thread(target=write)
    t.start()
    assert not done.wait(0.3), "wrote while another connection held the write lock"
    other.execute("COMMIT")
    assert done.wait(10)
    t.join()
    assert store.get(made[0]).status is JobStatus.queued


def test_the_wait_is_in_fine_steps(
    store: JobStore, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _holder(db)
    delays: list[float] = []

    def sleep(s: float) -> None:  # records the step, and frees the lock after ten of them
        delays.append(s)
        if len(delays) == 10:
            other.execute("COMMIT")

    monkeypatch.setattr(schema.time, "sleep", sleep)
    job = store.create(SPEC)
    assert store.get(job.id).id == job.id
    assert len(delays) == 10
    assert delays[0] == schema.WRITE_WAIT_FIRST_S
    assert delays == sorted(delays)
    assert max(delays) <= schema.WRITE_WAIT_MAX_S


def test_a_lock_held_past_the_busy_timeout_is_a_store_outage(
    store: JobStore, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers tell a store that cannot be reached by STORE_DOWN (they retry or answer
    503): a lock never freed must end as that, not as a bare sqlite3 error."""
    other = _holder(db)
    monkeypatch.setattr(schema, "_SQLITE_BUSY_S", 0.2)
    with pytest.raises(STORE_DOWN):
        store.create(SPEC)
    other.execute("COMMIT")
    # The connection is usable again, its busy timeout back: the next write lands.
    assert store.get(store.create(SPEC).id).status is JobStatus.queued
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 200


def test_reads_take_no_lock(store: JobStore, db: Path) -> None:
    job = store.create(SPEC)
    other = _holder(db)
    try:
        assert store.get(job.id).id == job.id  # (would wait 15 s for a lock it took)
    finally:
        other.execute("COMMIT")


def test_an_autocommit_connection_is_left_alone(db: Path) -> None:
    """Where Python's sqlite3 does not manage transactions, nobody would commit a
    transaction opened for it: its writes stay autocommitted."""
    engine = schema.make_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("INSERT INTO t VALUES (1)")
        dbapi = c.connection.dbapi_connection
        assert dbapi is not None
        assert not dbapi.in_transaction
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1
    engine.dispose()


def test_a_read_that_starts_with_with_takes_no_lock(store: JobStore, db: Path) -> None:
    other = _holder(db)
    try:
        with store.engine.connect() as c:
            assert c.exec_driver_sql("WITH one AS (SELECT 1 AS x) SELECT x FROM one").scalar() == 1
            dbapi = c.connection.dbapi_connection
            assert dbapi is not None
            assert not dbapi.in_transaction
    finally:
        other.execute("COMMIT")
