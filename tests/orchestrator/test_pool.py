"""A store keeps the connections its process uses at once (orchestrator/schema.py,
``POOL_SIZE``): with many requests in flight, no connection is opened for one use
and closed after it (each costs PostgreSQL a server process's start, SQLite its
settings, schema read and prepared statements; with 8 clients submitting on PostgreSQL,
that was 10% of the throughput). On SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.schema import POOL_SIZE
from orchestrator.store import JobStore

AT_ONCE = 12  # requests in flight at once (the API serves up to 40)
ROUNDS = 20


@pytest.fixture
def store(backend_url: str) -> Iterator[JobStore]:
    s = JobStore(backend_url)
    yield s
    s.dispose()


def test_concurrent_requests_reuse_the_pools_connections(store: JobStore) -> None:
    job = store.create({"executor": "process", "command": ["true"]})
    opened: list[object] = []
    sa.event.listen(store.engine, "connect", lambda conn, _rec: opened.append(conn))
    barrier = threading.Barrier(AT_ONCE)
    errors: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(ROUNDS):
                barrier.wait(timeout=30)  # (all in flight together, every round)
                with store.engine.connect() as c:
                    barrier.wait(timeout=30)  # (each holds its connection meanwhile)
                    c.execute(sa.text("SELECT 1"))
                assert store.get(job.id).id == job.id
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=requests) for _ in range(AT_ONCE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # Each of the 12 opened once, and kept (with 5 kept, 7 were opened every round: 144).
    assert AT_ONCE <= POOL_SIZE
    assert len(opened) <= AT_ONCE
