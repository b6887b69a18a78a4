"""The dashboard's aggregates on the in-memory core: charts per bucket, the runner board."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.events import RUNNERS_INDEX, runner_key
from orchestrator.insights import overview, percentile, runner_board
from orchestrator.job import AttemptOutcome, JobStatus
from orchestrator.runners import RunnerInfo
from orchestrator.store import JobStore
from orchestrator.testing import ManualClock, MemoryCore, memory_core

LEASE = 60.0


@pytest.fixture
def core() -> Iterator[MemoryCore]:
    # On a bucket boundary plus 5 s, so the arithmetic below is exact.
    c = memory_core(clock=ManualClock(datetime(2026, 12, 2, 12, 0, 5, tzinfo=UTC)))
    yield c
    c.close()


def spec(name: str = "job", **labels: str) -> dict[str, Any]:
    return {"executor": "process", "command": ["true"], "name": name, "labels": labels}


def run(
    core: MemoryCore, status: JobStatus, seconds: float, runner: str = "r1", **labels: str
) -> str:
    """A job that waits 1 s, runs ``seconds`` and ends ``status``."""
    job = core.store.create(spec(**labels))
    core.clock.advance(1)
    assert core.store.claim(job.id, runner, LEASE)
    assert core.store.start(job.id, 1, LEASE)
    core.clock.advance(seconds)
    assert core.store.finish(job.id, 1, status)
    return job.id


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_overview_counts_outcomes_and_run_times_per_minute(core: MemoryCore) -> None:
    run(core, JobStatus.succeeded, 2)
    run(core, JobStatus.succeeded, 4)
    run(core, JobStatus.failed, 10)
    core.clock.advance(60)
    run(core, JobStatus.timed_out, 30)

    view = overview(core.store, 60)

    assert view["bucket_s"] == 60
    assert len(view["buckets"]) == 60
    assert view["totals"] == {
        "succeeded": 2,
        "failed": 1,
        "timed_out": 1,
        "cancelled": 0,
        "ended": 4,
    }
    first = next(b for b in view["buckets"] if b["ended"] == 3)
    assert (first["succeeded"], first["failed"]) == (2, 1)
    assert (first["p50_s"], first["p95_s"]) == (4.0, 10.0)
    last = view["buckets"][-1]
    assert last["timed_out"] == 1 and last["p50_s"] == 30.0
    assert view["run_time"] == {"count": 4, "p50_s": 4.0, "p95_s": 30.0}
    # Buckets are whole minutes, oldest first, the last one holding now.
    starts = [b["start"] for b in view["buckets"]]
    assert starts == sorted(starts)
    assert starts[-1] <= core.clock() < view["end"]


def test_queue_depth_follows_waiting_jobs(core: MemoryCore) -> None:
    waiting = [core.store.create(spec(f"w{i}")) for i in range(3)]
    core.clock.advance(120)
    assert core.store.claim(waiting[0].id, "r1", LEASE)
    core.clock.advance(60)

    buckets = overview(core.store, 60)["buckets"]

    # Three waited for two minutes, then one was claimed: two wait now.
    assert [b["queue_depth"] for b in buckets[-4:]] == [3, 3, 2, 2]
    assert buckets[0]["queue_depth"] == 0


def test_overview_leaves_out_jobs_that_ended_before_the_window(core: MemoryCore) -> None:
    run(core, JobStatus.failed, 1)
    core.clock.advance(2 * 3600)
    run(core, JobStatus.succeeded, 1)

    view = overview(core.store, 60)

    assert view["totals"]["failed"] == 0
    assert view["totals"]["succeeded"] == 1


def test_a_label_filter_counts_only_the_jobs_carrying_every_pair(core: MemoryCore) -> None:
    run(core, JobStatus.succeeded, 2, team="a", env="prod")
    run(core, JobStatus.failed, 4, team="a", env="dev")
    run(core, JobStatus.cancelled, 8, team="b", env="prod")
    core.store.create(spec("waits", team="a", env="prod"))
    core.store.create(spec("waits too", team="b"))
    core.clock.advance(1)

    mine = overview(core.store, 60, labels={"team": "a", "env": "prod"})
    team = overview(core.store, 60, labels={"team": "a"})
    every = overview(core.store, 60)

    assert mine["totals"] == {
        "succeeded": 1,
        "failed": 0,
        "timed_out": 0,
        "cancelled": 0,
        "ended": 1,
    }
    assert mine["run_time"] == {"count": 1, "p50_s": 2.0, "p95_s": 2.0}
    assert mine["buckets"][-1]["queue_depth"] == 1
    assert (team["totals"]["ended"], team["buckets"][-1]["queue_depth"]) == (2, 1)
    assert (every["totals"]["ended"], every["buckets"][-1]["queue_depth"]) == (3, 2)
    assert overview(core.store, 60, labels={"team": "c"})["totals"]["ended"] == 0


def test_wider_windows_use_wider_buckets(core: MemoryCore) -> None:
    view = overview(core.store, 1440)
    assert view["bucket_s"] == 1440
    assert len(view["buckets"]) == 60


def test_runner_board_shows_slots_jobs_and_states(core: MemoryCore) -> None:
    worker = RunnerInfo(id="runner-a", executors=["process"], tags=["gpu"], capacity=4)
    drain = RunnerInfo(id="runner-b", executors=["docker"], capacity=2, draining=True)
    beat(core, worker)
    beat(core, drain)
    busy = core.store.create(spec("busy"))
    assert core.store.claim(busy.id, "runner-a", LEASE)
    assert core.store.start(busy.id, 1, LEASE)
    # A runner that vanished from the registry while it held a job: lost.
    held = core.store.create(spec("held"))
    assert core.store.claim(held.id, "runner-gone", LEASE)

    board = runner_board(core.store, core.runners, heartbeat_s=5)

    by_id = {r["id"]: r for r in board["items"]}
    assert set(by_id) == {"runner-a", "runner-b", "runner-gone"}
    a = by_id["runner-a"]
    assert (a["state"], a["capacity"], a["active"], a["tags"]) == ("live", 4, 1, ["gpu"])
    assert [j["name"] for j in a["jobs"]] == ["busy"]
    assert a["jobs"][0]["status"] == "running"
    assert by_id["runner-b"]["state"] == "draining"
    gone = by_id["runner-gone"]
    assert gone["state"] == "lost" and [j["id"] for j in gone["jobs"]] == [held.id]
    assert board["counts"] == {"live": 1, "draining": 1, "stale": 0, "lost": 1}
    assert (board["capacity"], board["busy"]) == (6, 1)


def test_runner_board_marks_overdue_heartbeats_stale_and_lost_attempts(
    core: MemoryCore,
) -> None:
    beat(core, RunnerInfo(id="runner-slow", executors=["process"]))
    job = core.store.create(spec())
    assert core.store.claim(job.id, "runner-old", LEASE)
    assert core.store.requeue(job.id, 1, reason="lease expired", outcome=AttemptOutcome.lost)

    board = runner_board(core.store, core.runners, heartbeat_s=5)
    assert {r["id"]: r["state"] for r in board["items"]}["runner-slow"] == "live"

    # Two heartbeats missed (5 s each), but its key (15 s) has not expired yet.
    core.clock.advance(12)
    board = runner_board(core.store, core.runners, heartbeat_s=5)

    rows = {r["id"]: r for r in board["items"]}
    assert rows["runner-slow"]["state"] == "stale"
    old = rows["runner-old"]
    assert (old["state"], old["lost_attempts"], old["active"]) == ("lost", 1, 0)
    assert board["counts"] == {"live": 0, "draining": 0, "stale": 1, "lost": 1}


def beat(core: MemoryCore, info: RunnerInfo) -> None:
    """A heartbeat at the core's clock (the registry's own stamps the wall clock)."""
    info.last_seen = core.clock().isoformat()
    core.keys.set(runner_key(info.id), info.model_dump_json(), ex=15)
    core.keys.sadd(RUNNERS_INDEX, info.id)


def test_search_and_overview_on_each_backend(backend_url: str) -> None:
    clock = ManualClock(datetime(2026, 12, 2, 12, 0, 5, tzinfo=UTC))
    store = JobStore(backend_url, clock=clock)
    try:
        made = {
            n: store.create(spec(n, kind="end" if n == "x" else "wait"))
            for n in ("Deploy web", "deploy DB", "100%_sure", "x")
        }
        clock.advance(1)
        ended = made["x"]
        assert store.claim(ended.id, "r1", LEASE) and store.start(ended.id, 1, LEASE)
        clock.advance(3)
        assert store.finish(ended.id, 1, JobStatus.failed)

        def found(q: str) -> list[str]:
            return sorted(j.name or "" for j in store.list(search=q)[0])

        assert found("DEPLOY") == ["Deploy web", "deploy DB"]
        assert found("%") == ["100%_sure"]  # LIKE's wildcards are plain characters
        assert found("_") == ["100%_sure"]
        assert store.list(search=ended.id[:10])[0][0].id == ended.id
        assert store.list(search="deploy", statuses=["queued"], limit=1)[1] == 2

        view = overview(store, 60)
        assert view["totals"]["failed"] == 1
        assert view["run_time"] == {"count": 1, "p50_s": 3.0, "p95_s": 3.0}
        assert view["buckets"][-1]["queue_depth"] == 3
        ended_only = overview(store, 60, labels={"kind": "end"})
        assert ended_only["totals"]["failed"] == 1
        assert ended_only["buckets"][-1]["queue_depth"] == 0
        assert overview(store, 60, labels={"kind": "wait"})["totals"]["ended"] == 0
    finally:
        store.dispose()
