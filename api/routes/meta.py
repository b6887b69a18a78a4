"""Job types, the API's vocabulary, stats, health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.bodies import StrictJSONRoute
from api.deps import State
from api.routes.streams import SSE_NAMES
from orchestrator.job import (
    ACTIVE_STATUSES,
    EXECUTORS,
    STATUS_EVENTS,
    TERMINAL_STATUSES,
    EventType,
    Executor,
    JobStatus,
)
from orchestrator.jobtypes import JOB_TYPES

router = APIRouter(tags=["meta"], route_class=StrictJSONRoute)


class Vocabulary(BaseModel):
    """The names the API speaks, so that clients (the dashboard) need not repeat them."""

    executors: list[Executor] = Field(description="Every executor a JobSpec may name.")
    statuses: list[JobStatus] = Field(description="Every job status, in lifecycle order.")
    terminal_statuses: list[JobStatus] = Field(description="The statuses a job ends in.")
    event_types: list[EventType] = Field(description="Every type of job event.")
    stream_end_events: list[str] = Field(
        description="The SSE events of GET /jobs/{id}/events after which the stream closes."
    )


@router.get(
    "/meta",
    response_model=Vocabulary,
    operation_id="meta-vocabulary",
    summary="Executors, statuses and event types",
)
def vocabulary() -> Vocabulary:
    ended = [s for s in JobStatus if s in TERMINAL_STATUSES]
    return Vocabulary(
        executors=list(EXECUTORS),
        statuses=list(JobStatus),
        terminal_statuses=ended,
        event_types=list(EventType),
        stream_end_events=[SSE_NAMES[STATUS_EVENTS[s]] for s in ended],
    )


# Jobs that need a worker slot now or soon: waiting (also for a retry's due time), claimed,
# or running. The autoscalers scale workers on it (deploy/k8s/keda-scaledobject.yaml).
DEMAND_STATUSES = (JobStatus.queued.value, *sorted(s.value for s in ACTIVE_STATUSES))


def stats_of(state: Any, executors: list[str] | None = None) -> dict[str, Any]:
    counts = state.store.counts_by_status()
    workers = state.runners.summary(state.store.active_by_runner())
    if executors:
        demand = sum(
            state.store.list(statuses=DEMAND_STATUSES, executor=e, limit=0)[1]
            for e in dict.fromkeys(executors)
        )
    else:
        demand = sum(counts[s] for s in DEMAND_STATUSES)
    return {**counts, "total": sum(counts.values()), "demand": demand, "workers": workers}


@router.get("/job-types", operation_id="meta-job-types", summary="Built-in job types")
def job_types() -> list[dict[str, Any]]:
    return [t.to_dict() for t in JOB_TYPES.values()]


@router.get(
    "/stats",
    operation_id="meta-stats",
    summary="Counts per status and live workers",
    description="One count per job status (`queued`, `claimed`, `running`, `succeeded`, ...), "
    "`total` (every job in the store), `demand` (jobs queued, claimed or running: the slots "
    "workers need now, busy ones included; only the given `executor`s' jobs when the "
    "parameter is given — the Kubernetes autoscaler's metric) and `workers` (`count` live "
    "workers and agents, their `capacity` in slots, `active` slots in use).",
)
def stats(
    state: State,
    executor: Annotated[
        list[Executor] | None,
        Query(description="Count only these executors' jobs in `demand` (repeatable)."),
    ] = None,
) -> dict[str, Any]:
    return stats_of(state, list(executor or []))


@router.get("/workers", operation_id="meta-workers", summary="Live workers and agents")
def workers(state: State) -> list[dict[str, Any]]:
    active = state.store.active_by_runner()
    return [{**r.model_dump(), "active": active.get(r.id, 0)} for r in state.runners.live()]


def healthz(state: State) -> dict[str, Any]:
    redis_ok = db_ok = True
    try:
        state.events.r.ping()
    except Exception:
        redis_ok = False
    try:
        state.store.ping()  # (not a count: a health probe must cost the same at any size)
    except Exception:
        db_ok = False
    return {
        "status": "ok" if redis_ok and db_ok else "degraded",
        "redis": redis_ok,
        "database": db_ok,
    }
