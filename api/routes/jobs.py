"""Jobs: submit, read, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep, Offset, Store
from api.errors import answers
from orchestrator.job import Job, JobSpec, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)


class JobPage(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Job,
    operation_id="jobs-create",
    summary="Submit a job",
)
def create_job(spec: Annotated[JobSpec, Body()], dispatcher: DispatcherDep) -> Any:
    return dispatcher.submit(spec).public()


@router.get("", response_model=JobPage, operation_id="jobs-list", summary="List jobs")
def list_jobs(
    store: Store,
    status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Any:
    items, total = store.list(statuses=[s.value for s in status_ or []], limit=limit, offset=offset)
    return {"items": [j.public() for j in items], "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=Job, operation_id="jobs-get", summary="One job")
def get_job(job_id: str, store: Store) -> Any:
    return store.get(job_id).public()


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    operation_id="jobs-cancel",
    summary="Cancel a queued or running job",
    responses=answers(409),
)
def cancel_job(job_id: str, dispatcher: DispatcherDep) -> Any:
    return dispatcher.cancel(job_id).public()


@router.delete(
    "/{job_id}",
    response_model=Job,
    operation_id="jobs-delete",
    summary="Cancel a job (same as POST /cancel)",
    responses=answers(409),
)
def delete_job(job_id: str, dispatcher: DispatcherDep) -> Any:
    return dispatcher.cancel(job_id).public()
