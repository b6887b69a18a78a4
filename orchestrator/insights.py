"""How the system is doing over time, and who is working: read-only views for the dashboard.

* :func:`overview` — jobs ended per bucket by outcome, p50/p95 run time, and queue depth,
  over a recent window, computed from the job store alone (no metrics backend needed).
* :func:`runner_board` — live workers and agents from the registry with the jobs they hold,
  plus the ones that are gone while the store still counts jobs on them (lost).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.job import ACTIVE_STATUSES, AttemptOutcome, JobStatus
from orchestrator.runners import RunnerRegistry
from orchestrator.schema import attempts, jobs
from orchestrator.store import JobStore, labels_match

OUTCOMES = (
    JobStatus.succeeded.value,
    JobStatus.failed.value,
    JobStatus.timed_out.value,
    JobStatus.cancelled.value,
)
BUCKETS = 60


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (``None`` when it is empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def overview(
    store: JobStore,
    minutes: int = 60,
    now: datetime | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Sixty buckets over the last ``minutes``: ended jobs by outcome, the run time
    percentiles of the jobs that ended in each, and how many jobs waited at its end;
    of the jobs carrying every pair of ``labels`` when given."""
    now = now or store.now()
    bucket_s = max(60, minutes * 60 // BUCKETS)
    # Whole buckets, the last one ending at the next bucket boundary after now.
    epoch = now.timestamp()
    end_ts = (math.floor(epoch / bucket_s) + 1) * bucket_s
    start_ts = end_ts - bucket_s * BUCKETS
    start = datetime.fromtimestamp(start_ts, tz=now.tzinfo)

    ended_q = sa.select(jobs.c.status, jobs.c.started_at, jobs.c.finished_at).where(
        jobs.c.finished_at >= start, jobs.c.status.in_(OUTCOMES)
    )
    # A job waited from its creation to its claim (or its end, if it never ran); jobs
    # still queued wait until now. A re-queued job counts from its creation to its last
    # claim: the store keeps no per-wait history.
    waited_q = sa.select(
        jobs.c.status, jobs.c.created_at, jobs.c.claimed_at, jobs.c.finished_at
    ).where(
        jobs.c.created_at < now,
        sa.or_(jobs.c.claimed_at.is_(None), jobs.c.claimed_at >= start),
        sa.or_(jobs.c.finished_at.is_(None), jobs.c.finished_at >= start),
    )
    with store.engine.connect() as c:
        ended = _rows(c, ended_q, labels)
        waited = _rows(c, waited_q, labels)

    counts = [dict.fromkeys(OUTCOMES, 0) for _ in range(BUCKETS)]
    runs: list[list[float]] = [[] for _ in range(BUCKETS)]
    every_run: list[float] = []
    for status, started_at, finished_at in ended:
        i = int((finished_at.timestamp() - start_ts) // bucket_s)
        if not 0 <= i < BUCKETS:
            continue
        counts[i][status] += 1
        if started_at is not None:
            seconds = max(0.0, (finished_at - started_at).total_seconds())
            runs[i].append(seconds)
            every_run.append(seconds)

    starts: list[float] = []
    ends: list[float] = []
    for status, created_at, claimed_at, finished_at in waited:
        if status == JobStatus.queued.value:
            stop = math.inf
        else:
            stop_at = claimed_at or finished_at
            if stop_at is None:  # claimed with no claim time: not waiting
                continue
            stop = stop_at.timestamp()
        starts.append(created_at.timestamp())
        ends.append(stop)
    starts.sort()
    ends.sort()

    buckets = []
    for i in range(BUCKETS):
        t0 = start_ts + i * bucket_s
        # Depth at the bucket's end, or at now for the bucket now falls in.
        at = min(t0 + bucket_s, epoch)
        depth = bisect_right(starts, at) - bisect_right(ends, at)
        durations = sorted(runs[i])
        buckets.append(
            {
                "start": datetime.fromtimestamp(t0, tz=now.tzinfo),
                **counts[i],
                "ended": sum(counts[i].values()),
                "p50_s": percentile(durations, 50),
                "p95_s": percentile(durations, 95),
                "queue_depth": max(0, depth),
            }
        )
    every_run.sort()
    totals = {s: sum(b[s] for b in counts) for s in OUTCOMES}
    return {
        "start": start,
        "end": datetime.fromtimestamp(end_ts, tz=now.tzinfo),
        "now": now,
        "bucket_s": bucket_s,
        "buckets": buckets,
        "totals": {**totals, "ended": sum(totals.values())},
        "run_time": {
            "count": len(every_run),
            "p50_s": percentile(every_run, 50),
            "p95_s": percentile(every_run, 95),
        },
    }


def _rows(c: sa.Connection, q: sa.Select[Any], labels: dict[str, str] | None) -> list[Any]:
    """``q``'s rows, of the jobs carrying ``labels`` when given (labels are JSON: matched
    here, as the store's listing matches them)."""
    if not labels:
        return list(c.execute(q).all())
    width = len(q.selected_columns)
    return [
        r[:width] for r in c.execute(q.add_columns(jobs.c.labels)) if labels_match(r[width], labels)
    ]


# A runner whose last heartbeat is older than this many heartbeat periods is marked stale:
# still in the registry (its key has not expired yet), but probably gone.
STALE_HEARTBEATS = 2
LOST_WINDOW = timedelta(hours=1)


def runner_board(
    store: JobStore,
    registry: RunnerRegistry,
    heartbeat_s: float,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every live runner with its jobs and state (live, draining, stale), and the runners
    that are gone: still holding active jobs in the store, or lost an attempt in the last
    hour."""
    now = now or store.now()
    active_q = (
        sa.select(
            jobs.c.id,
            jobs.c.name,
            jobs.c.status,
            jobs.c.executor,
            jobs.c.runner_id,
            jobs.c.started_at,
            jobs.c.lease_expires_at,
            jobs.c.spec,
        )
        .where(jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]), jobs.c.runner_id.is_not(None))
        .order_by(jobs.c.created_at)
    )
    lost_q = (
        sa.select(attempts.c.runner_id, sa.func.max(attempts.c.ended_at), sa.func.count())
        .where(
            attempts.c.outcome == AttemptOutcome.lost.value,
            attempts.c.ended_at >= now - LOST_WINDOW,
            attempts.c.runner_id.is_not(None),
        )
        .group_by(attempts.c.runner_id)
    )
    with store.engine.connect() as c:
        held = c.execute(active_q).all()
        lost_rows = c.execute(lost_q).all()

    by_runner: dict[str, list[dict[str, Any]]] = {}
    for row in held:
        m = row._mapping
        by_runner.setdefault(m["runner_id"], []).append(
            {
                "id": m["id"],
                "name": m["name"],
                "status": m["status"],
                "executor": m["executor"],
                "type": (m["spec"] or {}).get("type"),
                "started_at": m["started_at"],
                "lease_expires_at": m["lease_expires_at"],
            }
        )

    stale_after = timedelta(seconds=heartbeat_s * STALE_HEARTBEATS)
    items: list[dict[str, Any]] = []
    live_ids: set[str] = set()
    for info in registry.live():
        live_ids.add(info.id)
        held_jobs = by_runner.get(info.id, [])
        last_seen = datetime.fromisoformat(info.last_seen)
        if info.draining:
            state = "draining"
        elif now - last_seen > stale_after:
            state = "stale"
        else:
            state = "live"
        items.append(
            {
                **info.model_dump(),
                "last_seen": last_seen,
                "state": state,
                "active": len(held_jobs),
                "jobs": held_jobs,
                "lost_attempts": 0,
            }
        )

    lost: dict[str, dict[str, Any]] = {}
    for runner_id, held_jobs in by_runner.items():
        if runner_id not in live_ids:
            lost[runner_id] = {"jobs": held_jobs, "last_lost": None, "lost_attempts": 0}
    for runner_id, last_lost, n in lost_rows:
        if runner_id in live_ids:
            for item in items:
                if item["id"] == runner_id:
                    item["lost_attempts"] = int(n)
            continue
        entry = lost.setdefault(runner_id, {"jobs": [], "last_lost": None, "lost_attempts": 0})
        entry["last_lost"] = last_lost
        entry["lost_attempts"] = int(n)
    for runner_id in sorted(lost):
        entry = lost[runner_id]
        items.append(
            {
                "id": runner_id,
                "kind": None,
                "hostname": None,
                "pid": None,
                "executors": sorted({j["executor"] for j in entry["jobs"]}),
                "tags": [],
                "capacity": 0,
                "queues": [],
                "draining": False,
                "started_at": None,
                "last_seen": entry["last_lost"],
                "state": "lost",
                "active": len(entry["jobs"]),
                "jobs": entry["jobs"],
                "lost_attempts": entry["lost_attempts"],
            }
        )

    counts = {s: sum(1 for i in items if i["state"] == s) for s in RUNNER_STATES}
    live = [i for i in items if i["state"] != "lost"]
    return {
        "items": items,
        "counts": counts,
        "capacity": sum(i["capacity"] for i in live),
        "busy": sum(min(i["active"], i["capacity"]) for i in live),
        "heartbeat_s": heartbeat_s,
        "now": now,
    }


RUNNER_STATES = ("live", "draining", "stale", "lost")
