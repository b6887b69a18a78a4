"""Job types, stats, health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import State
from orchestrator.jobtypes import JOB_TYPES

router = APIRouter(tags=["meta"])


def stats_of(state: Any) -> dict[str, Any]:
    counts = state.store.counts_by_status()
    workers = state.runners.summary(state.store.active_by_runner())
    return {**counts, "total": sum(counts.values()), "workers": workers}


@router.get("/job-types", operation_id="meta-job-types", summary="Built-in job types")
def job_types() -> list[dict[str, Any]]:
    return [t.to_dict() for t in JOB_TYPES.values()]


@router.get("/stats", operation_id="meta-stats", summary="Counts per status and live workers")
def stats(state: State) -> dict[str, Any]:
    return stats_of(state)


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
        state.store.counts_by_status()
    except Exception:
        db_ok = False
    return {
        "status": "ok" if redis_ok and db_ok else "degraded",
        "redis": redis_ok,
        "database": db_ok,
    }
