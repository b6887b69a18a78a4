"""Read-only views for the dashboard: charts over the last hour, and the runner board."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.bodies import StrictJSONRoute
from api.deps import LabelFilter, State, label_filter
from orchestrator.insights import overview, runner_board

router = APIRouter(tags=["insights"], route_class=StrictJSONRoute)

OVERVIEW_CACHE_S = 5.0


class Bucket(BaseModel):
    start: datetime = Field(description="The bucket's first instant (UTC).")
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    ended: int = Field(description="Jobs that ended in the bucket, every outcome.")
    p50_s: float | None = Field(description="Median run time of the jobs that ended in it.")
    p95_s: float | None = Field(description="95th percentile run time (nearest rank).")
    queue_depth: int = Field(description="Jobs waiting for a runner at the bucket's end.")


class Totals(BaseModel):
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    ended: int


class RunTime(BaseModel):
    count: int = Field(description="Jobs that ran and ended in the window.")
    p50_s: float | None
    p95_s: float | None


class Overview(BaseModel):
    start: datetime
    end: datetime
    now: datetime
    bucket_s: int = Field(description="Seconds per bucket (60 for the last hour).")
    buckets: list[Bucket] = Field(description="Sixty buckets, oldest first.")
    totals: Totals
    run_time: RunTime


class HeldJob(BaseModel):
    id: str
    name: str | None
    status: str
    executor: str
    type: str | None = Field(description="The built-in job type, for builtin jobs.")
    started_at: datetime | None
    lease_expires_at: datetime | None


class RunnerRow(BaseModel):
    id: str
    kind: str | None = Field(description="celery (a worker) or agent; null when lost.")
    hostname: str | None
    pid: int | None
    executors: list[str]
    tags: list[str]
    capacity: int = Field(description="Slots: jobs it runs at once.")
    queues: list[str]
    draining: bool
    started_at: str | None
    last_seen: datetime | None = Field(
        description="Last heartbeat; for a lost runner, when it last lost an attempt."
    )
    state: str = Field(
        description="live; draining (takes no new jobs); stale (heartbeat overdue, key not "
        "yet expired); lost (gone from the registry while the store counts jobs on it, or "
        "lost an attempt in the last hour)."
    )
    active: int = Field(description="Claimed or running jobs the store assigns to it.")
    jobs: list[HeldJob]
    lost_attempts: int = Field(description="Attempts it lost in the last hour.")


class RunnerCounts(BaseModel):
    live: int
    draining: int
    stale: int
    lost: int


class RunnerBoard(BaseModel):
    items: list[RunnerRow]
    counts: RunnerCounts
    capacity: int = Field(description="Slots of every runner still registered.")
    busy: int = Field(description="Of those, slots in use.")
    heartbeat_s: float
    now: datetime


@router.get(
    "/insights/overview",
    response_model=Overview,
    operation_id="insights-overview",
    summary="Jobs ended per bucket by outcome, p50/p95 run time and queue depth",
)
async def insights_overview(
    state: State,
    minutes: Annotated[
        int, Query(ge=5, le=1440, description="Window: the last N minutes, in 60 buckets.")
    ] = 60,
    label: LabelFilter = None,
) -> Any:
    labels = label_filter(label)
    if labels:  # (computed each time: caching every filter asked for would be unbounded)
        return await run_in_threadpool(overview, state.store, minutes, labels=labels)
    # Every open overview asks every 15 s; one answer serves them all for a few seconds
    # (the query reads every job that ended or waited in the window).
    cache: dict[int, tuple[float, Any]] = state.extras.setdefault("insights_overview", {})
    hit = cache.get(minutes)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    view = await run_in_threadpool(overview, state.store, minutes)
    cache[minutes] = (time.monotonic() + OVERVIEW_CACHE_S, view)
    return view


@router.get(
    "/runners",
    response_model=RunnerBoard,
    operation_id="insights-runners",
    summary="Workers and agents: executors, tags, slots, current jobs, last heartbeat, state",
)
async def runners(state: State) -> Any:
    return await run_in_threadpool(
        runner_board, state.store, state.runners, state.settings.runner_heartbeat_s
    )
