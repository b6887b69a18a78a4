"""Jobs: submit, read, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep, Offset, Store
from api.errors import answers
from api.routes.streams import hub_of
from api.waiting import MAX_WAIT_S, wait_for_end
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
def create_job(
    spec: Annotated[JobSpec, Body()],
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Submit at most once per key: the same key and body answer the "
            "first job (200); another body is a 409 (orchestrator/idempotency.py).",
        ),
    ] = None,
) -> Any:
    if idempotency_key is None:
        job = dispatcher.submit(spec)
    else:
        body = spec.model_dump(mode="json")
        job, created = dispatcher.flow.submit_idempotent(idempotency_key, body, spec)
        if not created:
            response.status_code = status.HTTP_200_OK
    return dispatcher.flow.with_waiting(job).public()


@router.get("", response_model=JobPage, operation_id="jobs-list", summary="List jobs")
def list_jobs(
    store: Store,
    dispatcher: DispatcherDep,
    status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Any:
    items, total = store.list(statuses=[s.value for s in status_ or []], limit=limit, offset=offset)
    items = [dispatcher.flow.with_waiting(j) for j in items]  # why each queued one waits
    return {"items": [j.public() for j in items], "total": total, "limit": limit, "offset": offset}


@router.get(
    "/{job_id}",
    response_model=Job,
    operation_id="jobs-get",
    summary="One job (with `wait`: once it has ended, or after `wait` seconds)",
)
async def get_job(
    job_id: str,
    request: Request,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait for the job to end before answering (a long-poll: "
            "no need to poll); the job as it stands when the wait runs out. 0 answers at once.",
        ),
    ] = 0,
) -> Any:
    state = request.app.state.lb
    if not wait:
        job = await run_in_threadpool(state.store.get, job_id)
    else:
        job = await wait_for_end(state.store, hub_of(state), job_id, wait)
    if job.status == JobStatus.queued:  # why it waits (orchestrator/flow.py)
        job = await run_in_threadpool(state.dispatcher.flow.with_waiting, job)
    return job.public()


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
