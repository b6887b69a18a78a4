"""The session clause of the claim's compare-and-set, on SQLite and PostgreSQL (issue 16)."""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrator.job import JobStatus
from orchestrator.sessions import Sessions
from orchestrator.store import JobStore
from orchestrator.testing import ManualClock

R = [f"runner-{i:012x}" for i in range(8)]


def test_runners_racing_for_a_sessions_runs_take_them_one_at_a_time_in_order(
    backend_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    store = JobStore(backend_url, clock=clock)
    try:
        session = Sessions(store.engine, tmp_path).create("process", {}, name="race", parent=None)
        ids = []
        for _ in range(5):
            spec = {"executor": "process", "command": ["true"], "session": {"id": session.id}}
            ids.append(store.create(spec).id)
            clock.advance(0.001)
        order: list[str] = []
        for _ in ids:
            won: list[str] = []
            lock = threading.Lock()

            def race(runner: str, won: list[str] = won, lock: threading.Lock = lock) -> None:
                for job_id in reversed(ids):  # the youngest first: only the oldest may win
                    got = store.claim(job_id, runner, 30)
                    if got is not None:
                        with lock:
                            won.append(job_id)

            threads = [threading.Thread(target=race, args=(r,)) for r in R]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(won) == 1, won  # one run of the session at a time
            order.extend(won)
            job = store.get(won[0])
            assert store.start(job.id, 1, 30) is not None
            clock.advance(0.001)
            assert store.finish(job.id, 1, JobStatus.succeeded, exit_code=0) is not None
        assert order == ids  # in submit order
    finally:
        store.dispose()


def test_jobs_without_a_session_are_not_held_back(backend_url: str) -> None:
    store = JobStore(backend_url)
    try:
        a = store.create({"executor": "process", "command": ["true"]})
        b = store.create({"executor": "process", "command": ["true"]})
        assert store.claim(b.id, R[0], 30) is not None
        assert store.claim(a.id, R[1], 30) is not None
        assert store.claim(a.id, R[2], 30) is None  # the usual compare-and-set
        assert store.get(a.id).session_id is None
    finally:
        store.dispose()
