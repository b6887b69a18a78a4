"""The keyed claim on both store backends (issue 14): racing claims from several stores
(as separate processes would hold) never over-admit a concurrency key, on SQLite and on
PostgreSQL; a held job is released highest priority first; the schema's flow tables."""

from __future__ import annotations

import threading

from orchestrator.job import JobStatus
from orchestrator.schema import concurrency_limits
from orchestrator.store import JobStore


def _spec(**extra: object) -> dict[str, object]:
    return {"executor": "builtin", "type": "primes", "params": {"limit": 100}, **extra}


def _limit(store: JobStore, key: str, n: int) -> None:
    with store.engine.begin() as c:
        c.execute(
            concurrency_limits.insert().values(key=key, max_running=n, updated_at=store.now())
        )


def _active(store: JobStore, key: str) -> int:
    return sum(
        1
        for j in store.list(statuses=["claimed", "running"], limit=1000)[0]
        if j.spec.concurrency_key == key
    )


def test_racing_claims_never_over_admit_a_key(backend_url: str) -> None:
    main = JobStore(backend_url)
    stores = [JobStore(backend_url, create=False) for _ in range(6)]
    try:
        _limit(main, "k", 2)
        ids = [main.create(_spec(concurrency_key="k")).id for _ in range(30)]
        barrier = threading.Barrier(len(stores))
        lock = threading.Lock()
        peak = 0
        errors: list[BaseException] = []

        def runner(n: int, store: JobStore) -> None:
            nonlocal peak
            try:
                barrier.wait(10)
                for _round in range(40):
                    took = False
                    for job_id in ids[n:] + ids[:n]:
                        won = store.claim(job_id, f"r{n}", 30)
                        if won is None:
                            continue
                        took = True
                        with lock:
                            peak = max(peak, _active(store, "k"))
                        store.start(job_id, won.attempt, 30)
                        store.finish(job_id, won.attempt, JobStatus.succeeded)
                        store.release_key("k")
                        break
                    if not took and all(store.get(i).ended for i in ids):
                        return
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=runner, args=(n, s)) for n, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert 1 <= peak <= 2, peak
        assert main.counts_by_status()["succeeded"] == 30
    finally:
        for s in (main, *stores):
            s.dispose()


def test_a_full_key_holds_and_releases_the_highest_priority_first(backend_url: str) -> None:
    store = JobStore(backend_url)
    try:
        _limit(store, "k", 1)
        first = store.create(_spec(concurrency_key="k"))
        low = store.create(_spec(concurrency_key="k", priority=1))
        high = store.create(_spec(concurrency_key="k", priority=8))
        assert store.claim(first.id, "r1", 30) is not None
        assert store.claim(low.id, "r2", 30) is None
        assert store.claim(high.id, "r2", 30) is None
        assert store.get(low.id).hold == store.get(high.id).hold == "limit"
        assert store.release_key("k") == []  # still full
        store.start(first.id, 1, 30)
        store.finish(first.id, 1, JobStatus.succeeded)
        assert [j.id for j in store.release_key("k")] == [high.id]  # one slot: the 8
        assert store.get(low.id).hold == "limit"
        assert store.claim(high.id, "r2", 30) is not None
    finally:
        store.dispose()
