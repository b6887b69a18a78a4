"""Jobs: submit (one, or a batch), read, list, cancel. Each answer is serialized once,
straight from the model (``response_model`` documents it)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep, Offset, Store
from api.errors import answers
from api.routes.streams import hub_of
from api.submits import groups_of
from api.waiting import MAX_WAIT_S, held_s, wait_for_end
from orchestrator.errors import ParamError
from orchestrator.job import Job, JobSpec, JobStatus
from orchestrator.store import new_job_id

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)

MAX_BATCH = 500
_JSON = "application/json"


def _answer(job: Job, code: int = 200) -> Response:
    """The job as JSON, serialized once (``response_model`` documents the same shape)."""
    return Response(job.model_dump_json(), status_code=code, media_type=_JSON)


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
async def create_job(
    spec: Annotated[JobSpec, Body()],
    request: Request,
    dispatcher: DispatcherDep,
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
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait for the job to end before answering: submit and "
            "wait in one request (as `GET /jobs/{id}?wait=`); the job as it stands when "
            "the wait runs out. 0 answers at once.",
        ),
    ] = 0,
) -> Any:
    state = request.app.state.lb
    if idempotency_key is not None:
        body = spec.model_dump(mode="json")
        job, created = await run_in_threadpool(
            dispatcher.flow.submit_idempotent, idempotency_key, body, spec
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        if wait:  # (the key's job may be an earlier one: its id is known only now)
            job = await wait_for_end(
                dispatcher.store, hub_of(state), job.id, held_s(state.settings, wait)
            )
        return _answer(await _why_queued(dispatcher, job), code)
    if not wait:
        if spec.session is None:  # (with the submits that arrive meanwhile: api/submits.py)
            job = await groups_of(state).submit(spec)
        else:  # (one thread hop: the submit, and why a queued job waits)
            job = await run_in_threadpool(_submit, dispatcher, spec)
        return _answer(job, status.HTTP_201_CREATED)
    job_id = new_job_id()  # (subscribed to before it exists: its end cannot slip past)
    submitted: list[Job] = []

    def submit() -> Job:
        job: Job = dispatcher.submit(spec, job_id=job_id)
        submitted.append(job)
        return job

    job = await wait_for_end(
        dispatcher.store, hub_of(state), job_id, held_s(state.settings, wait), submit=submit
    )
    if submitted and not job.warnings:  # (the submit's own, e.g. no live runner fits)
        job.warnings = submitted[0].warnings
    return _answer(await _why_queued(dispatcher, job), status.HTTP_201_CREATED)


def _submit(dispatcher: Any, spec: JobSpec) -> Job:
    return dispatcher.flow.with_waiting(dispatcher.submit(spec))  # type: ignore[no-any-return]


async def _why_queued(dispatcher: Any, job: Job) -> Job:
    """The job with why it waits, if it is queued (orchestrator/flow.py): a thread hop
    only then."""
    if job.status != JobStatus.queued:
        return job
    return await run_in_threadpool(dispatcher.flow.with_waiting, job)  # type: ignore[no-any-return]


class JobBatch(BaseModel):
    jobs: list[JobSpec] = Field(
        min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} job specs."
    )


class JobBatchAnswer(BaseModel):
    jobs: list[Job] = Field(description="The jobs made, in the order of the specs.")


class _BatchRoute(StrictJSONRoute):
    """Names a refused spec by its place in the batch (``jobs[3].params.seconds``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def named(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError(
                    [_in_batch(e) for e in exc.errors()], body=exc.body
                ) from None

        return named


def _in_batch(err: Any) -> Any:
    loc = tuple(err.get("loc", ()))
    if loc[:2] != ("body", "jobs") or len(loc) < 3 or not isinstance(loc[2], int):
        return err
    at = f"jobs[{loc[2]}]"
    err = {**err, "loc": ("body", at, *loc[3:])}
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):  # (a job type's params check names its own field)
        err["ctx"] = {**err["ctx"], "error": ParamError(f"{at}.{cause.field}", str(cause))}
    return err


def create_jobs(
    batch: Annotated[JobBatch, Body()], dispatcher: DispatcherDep, request: Request
) -> Any:
    if "idempotency-key" in request.headers:
        raise ParamError(
            "Idempotency-Key",
            "POST /jobs/batch takes no Idempotency-Key (submit one job per key with POST /jobs)",
        )
    jobs = dispatcher.submit_many(batch.jobs)
    runners = dispatcher.live_runners.get()  # (read once for the whole batch)
    answer = JobBatchAnswer.model_construct(
        jobs=[dispatcher.flow.with_waiting(j, runners) for j in jobs]
    )
    return Response(answer.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type=_JSON)


router.add_api_route(
    "/batch",
    create_jobs,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=JobBatchAnswer,
    operation_id="jobs-create-batch",
    summary="Submit several jobs at once",
    description=f"1 to {MAX_BATCH} specs (and at most LAUNCHBAY_MAX_BODY_BYTES), all "
    "validated first: one refused spec is a 422 naming it (`jobs[3].params.seconds`) and no "
    "job is made. The jobs are inserted in one transaction, their messages sent together, "
    "and each gets its `created` event; the answer lists them in order. An "
    "`Idempotency-Key` header is refused (422): use `POST /jobs` for keyed submits.",
    route_class_override=_BatchRoute,
)


@router.get("", response_model=JobPage, operation_id="jobs-list", summary="List jobs")
def list_jobs(
    store: Store,
    dispatcher: DispatcherDep,
    status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Any:
    items, total = store.list(statuses=[s.value for s in status_ or []], limit=limit, offset=offset)
    queued = any(j.status == JobStatus.queued for j in items)
    runners = dispatcher.live_runners.get() if queued else None  # (read once for the page)
    items = [dispatcher.flow.with_waiting(j, runners) for j in items]  # why each queued one waits
    page = JobPage.model_construct(items=items, total=total, limit=limit, offset=offset)
    return Response(page.model_dump_json(), media_type=_JSON)


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
    if not wait:  # (one thread hop: the read, and why a queued job waits)
        return _answer(await run_in_threadpool(_read, state.store, state.dispatcher, job_id))
    job = await wait_for_end(state.store, hub_of(state), job_id, held_s(state.settings, wait))
    return _answer(await _why_queued(state.dispatcher, job))


def _read(store: Any, dispatcher: Any, job_id: str) -> Job:
    return dispatcher.flow.with_waiting(store.get(job_id))  # type: ignore[no-any-return]


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    operation_id="jobs-cancel",
    summary="Cancel a queued or running job",
    responses=answers(409),
)
def cancel_job(job_id: str, dispatcher: DispatcherDep) -> Any:
    return _answer(dispatcher.cancel(job_id))


@router.delete(
    "/{job_id}",
    response_model=Job,
    operation_id="jobs-delete",
    summary="Cancel a job (same as POST /cancel)",
    responses=answers(409),
)
def delete_job(job_id: str, dispatcher: DispatcherDep) -> Any:
    return _answer(dispatcher.cancel(job_id))
