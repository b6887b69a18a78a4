"""Re-runs (issue 14): one job again, or every ended job a filter matches."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, status
from pydantic import BaseModel, ConfigDict, Field

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep
from api.errors import answers
from orchestrator.job import Executor, Job, UtcTime

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)

EndedStatus = Literal["failed", "timed_out", "cancelled", "succeeded"]


def _failed() -> list[EndedStatus]:
    return ["failed"]


class RerunFilter(BaseModel):
    """Which ended jobs to run again (each gets a new job with ``rerun_of``)."""

    model_config = ConfigDict(extra="forbid")
    status: list[EndedStatus] = Field(default_factory=_failed, min_length=1)
    executor: Executor | None = None
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    since: UtcTime | None = Field(default=None, description="Created at or after.")
    until: UtcTime | None = Field(default=None, description="Created before.")
    limit: int = Field(default=100, ge=1, le=1000, description="At most this many re-runs.")


class Reruns(BaseModel):
    items: list[Job]
    count: int


@router.post(
    "/rerun",
    response_model=Reruns,
    status_code=status.HTTP_201_CREATED,
    operation_id="jobs-rerun-many",
    summary="Re-queue ended jobs by filter (default: the failed ones)",
)
def rerun_many(filter_: Annotated[RerunFilter, Body()], dispatcher: DispatcherDep) -> Any:
    done = dispatcher.flow.rerun_many(
        statuses=filter_.status,
        executor=filter_.executor,
        labels=filter_.labels or None,
        since=filter_.since,
        until=filter_.until,
        limit=filter_.limit,
    )
    return {"items": [j.public() for j in done], "count": len(done)}


@router.post(
    "/{job_id}/rerun",
    response_model=Job,
    status_code=status.HTTP_201_CREATED,
    operation_id="jobs-rerun",
    summary="Run an ended job again: a new job from its spec, with rerun_of",
    responses=answers(409),
)
def rerun(job_id: str, dispatcher: DispatcherDep) -> Any:
    return dispatcher.flow.rerun(job_id).public()
