"""The launcher (agent) API: remote agents that cannot reach Redis pull work over HTTP.

An agent registers its executors and tags, long-polls for work, and reports what happens.
The store stays the only arbiter: a poll claims with the same compare-and-set a Celery
worker uses (``JobStore.claim``), so an agent, a worker and a second agent racing for one
job cannot both win, and the job's Celery message, if a worker later receives it, finds
the job claimed and does nothing. Every change is announced like the Celery path does, so
SSE, WebSocket and the dashboard see agent jobs exactly like the others.

Ownership of a job is ``(runner_id, attempt)``: a re-queue always bumps the attempt, so an
agent that lost its job (lease expired) gets 409 on every later report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from api.deps import State
from api.routes._launcher_core import (
    LauncherConflict,
    Waker,
    claim_next_for,
    end_attempt,
    heartbeat_interval,
    owned_job,
    record_artifact,
    registered_launcher,
    renew_leases,
)
from api.routes._launcher_models import (
    RUNNER_ID,
    Claim,
    CompletedIn,
    FailedIn,
    HeartbeatIn,
    HeartbeatOut,
    LogsIn,
    PollOut,
    ProgressIn,
    RegisterIn,
    RegisterOut,
    ReportOut,
    job_fields,
)
from api.routes.streams import hub_of
from orchestrator.artifacts import safe_name
from orchestrator.errors import ParamError
from orchestrator.job import Artifact, Job, JobStatus
from orchestrator.runners import RunnerInfo, new_runner_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/launcher", tags=["launcher"])

POLL_TIMEOUT_S = 30
# Wake-ups come from lb:events; this bounded re-check covers a missed message or a
# subscriber that is reconnecting.
_FALLBACK_CHECK_S = 2.0
MAX_ARTIFACT_BYTES = 1 << 30
_WAKE_TYPES = frozenset({"created", "requeued", "resync"})


def setup(app: FastAPI) -> None:
    """Wake waiting polls from the process's one fan-out hub (api/fanout.py)."""

    async def start(app: FastAPI) -> None:
        waker = Waker()
        app.state.launcher_waker = waker

        def on_message(msg: dict[str, Any]) -> None:
            # RESYNC after a reconnect counts too: whatever happened meanwhile.
            if msg.get("type") in _WAKE_TYPES:
                waker.notify()

        app.state.launcher_unlisten = hub_of(app.state.lb).listen(on_message)

    async def stop(app: FastAPI) -> None:
        unlisten = getattr(app.state, "launcher_unlisten", None)
        if unlisten is not None:
            unlisten()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


# ---------------------------------------------------------------- routes


@router.post(
    "/register",
    response_model=RegisterOut,
    operation_id="launcher-register",
    summary="Register a remote agent",
)
def register(body: RegisterIn, state: State) -> Any:
    if body.launcher_id:
        held = state.runners.get(body.launcher_id)
        if held is not None and held.kind != "agent":
            raise LauncherConflict(f"{body.launcher_id} is a live {held.kind} runner, not an agent")
    info = RunnerInfo(
        id=body.launcher_id or new_runner_id(),
        kind="agent",
        hostname=body.hostname or "unknown",
        pid=body.pid or 0,
        executors=sorted(set(body.executors)),
        tags=sorted(set(body.tags)),
        capacity=body.capacity,
    )
    state.runners.heartbeat(info)
    return RegisterOut(
        launcher_id=info.id,
        poll_timeout_s=POLL_TIMEOUT_S,
        heartbeat_interval_s=heartbeat_interval(state),
        lease_s=state.settings.lease_s,
    )


@router.post(
    "/unregister",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="launcher-unregister",
    summary="Leave the registry (agent stops)",
)
def unregister(body: HeartbeatIn, state: State) -> Response:
    state.runners.remove(body.launcher_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/jobs",
    response_model=PollOut,
    operation_id="launcher-poll",
    summary="Long-poll for the next job this agent can run",
    responses={204: {"description": "No job within the wait"}},
)
async def poll(
    request: Request,
    state: State,
    launcher_id: Annotated[str, Query(pattern=RUNNER_ID)],
    wait: Annotated[float, Query(ge=0, le=POLL_TIMEOUT_S)] = POLL_TIMEOUT_S,
) -> Any:
    info = await run_in_threadpool(registered_launcher, state, launcher_id)
    waker: Waker | None = getattr(request.app.state, "launcher_waker", None)
    deadline = time.monotonic() + wait
    while True:
        wake = waker.current() if waker is not None else None
        if await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        job = await run_in_threadpool(claim_next_for, state, info)
        if job is not None:
            return {"job": job.public()}
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        pause = min(left, _FALLBACK_CHECK_S if wake is not None else 0.5)
        if wake is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=pause)
        # An agent that unregistered (it is draining) must not be handed a job now.
        if await run_in_threadpool(state.runners.get, launcher_id) is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/jobs/{job_id}/started",
    response_model=Job,
    operation_id="launcher-started",
    summary="The agent launched the job: claimed → running",
)
def started(job_id: str, body: Claim, state: State) -> Any:
    job = owned_job(state, job_id, body)
    running = state.store.start(job.id, job.attempt, state.settings.lease_s)
    if running is None:
        current = state.store.get(job_id)
        raise LauncherConflict(f"job {job_id} is {current.status}; cannot start it")
    state.dispatcher.announce(running)
    return running.public()


@router.post(
    "/jobs/{job_id}/progress",
    response_model=ReportOut,
    operation_id="launcher-progress",
    summary="Report progress",
)
def progress(job_id: str, body: ProgressIn, state: State) -> Any:
    job = owned_job(state, job_id, body)
    if not state.store.set_progress(job.id, job.attempt, body.percent, body.message):
        raise LauncherConflict(f"job {job_id} attempt {body.attempt} is no longer active")
    state.events.publish(
        job.id,
        "progress",
        {"percent": body.percent, "message": body.message, "attempt": job.attempt},
    )
    return ReportOut(cancel=job.cancel_requested)


@router.post(
    "/jobs/{job_id}/logs",
    response_model=ReportOut,
    operation_id="launcher-logs",
    summary="Append log lines",
)
def logs(job_id: str, body: LogsIn, state: State) -> Any:
    job = owned_job(state, job_id, body)
    # Another API process may have appended the previous batch: take the sequence from
    # Redis, not from this process's cache.
    state.events.forget(job.id)
    seq = state.events.append_logs(job.id, [(ln.stream, ln.step, ln.line) for ln in body.lines])
    return ReportOut(cancel=job.cancel_requested, seq=seq)


@router.post(
    "/jobs/{job_id}/completed",
    response_model=Job,
    operation_id="launcher-completed",
    summary="The job exited; exit code 0 succeeds it",
)
def completed(job_id: str, body: CompletedIn, state: State) -> Any:
    job = owned_job(state, job_id, body)
    fields = job_fields(body.steps, body.result, body.resource_usage)
    if body.exit_code == 0:
        return end_attempt(
            state, job, JobStatus.succeeded, exit_code=0, error=None, fields=fields
        ).public()
    target = JobStatus.cancelled if job.cancel_requested else JobStatus.failed
    return end_attempt(
        state,
        job,
        target,
        exit_code=body.exit_code,
        error="cancelled" if job.cancel_requested else f"exited with code {body.exit_code}",
        fields=fields,
    ).public()


@router.post(
    "/jobs/{job_id}/failed",
    response_model=Job,
    operation_id="launcher-failed",
    summary="The job failed, timed out, or stopped after a cancel",
)
def failed(job_id: str, body: FailedIn, state: State) -> Any:
    job = owned_job(state, job_id, body)
    fields = job_fields(body.steps, body.result)
    if job.cancel_requested:
        target, error = JobStatus.cancelled, "cancelled"
    elif body.timed_out:
        target = JobStatus.timed_out
        limit = job.spec.timeout_s
        error = f"timed out after {limit:g} s" if limit else body.error
    else:
        target, error = JobStatus.failed, body.error
    return end_attempt(
        state, job, target, exit_code=body.exit_code, error=error, fields=fields
    ).public()


@router.post(
    "/jobs/{job_id}/release",
    response_model=Job,
    operation_id="launcher-release",
    summary="Give back a claimed job the agent will not start",
)
def release(job_id: str, body: Claim, state: State) -> Any:
    job = owned_job(state, job_id, body)
    if job.status != JobStatus.claimed:
        raise LauncherConflict(f"job {job_id} is {job.status}; only a claimed job can be released")
    again = state.dispatcher.requeue(job, f"released by {body.launcher_id} before it started")
    if again is None:  # a cancel was asked meanwhile: honour it
        return end_attempt(
            state, job, JobStatus.cancelled, exit_code=None, error="cancelled", fields={}
        ).public()
    state.events.forget(job.id)
    return again.public()


@router.post(
    "/jobs/{job_id}/artifacts",
    response_model=Artifact,
    operation_id="launcher-artifact-upload",
    summary="Upload one artifact (raw body)",
)
async def upload_artifact(
    job_id: str,
    request: Request,
    state: State,
    launcher_id: Annotated[str, Query(pattern=RUNNER_ID)],
    attempt: Annotated[int, Query(ge=1)],
    name: Annotated[str, Query(min_length=1, max_length=1000)],
) -> Any:
    claim = Claim(launcher_id=launcher_id, attempt=attempt)
    await run_in_threadpool(owned_job, state, job_id, claim)
    safe_name(name)  # refuse a bad name before reading the body
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=state.settings.home)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_ARTIFACT_BYTES:
                    raise ParamError("body", f"artifact larger than {MAX_ARTIFACT_BYTES} bytes")
                await run_in_threadpool(out.write, chunk)
        return await run_in_threadpool(record_artifact, state, job_id, claim, name, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


@router.post(
    "/heartbeat",
    response_model=HeartbeatOut,
    operation_id="launcher-heartbeat",
    summary="Keep the agent and the leases of its jobs alive",
)
def heartbeat(body: HeartbeatIn, state: State) -> Any:
    info = registered_launcher(state, body.launcher_id)
    state.runners.heartbeat(info)
    cancel, lost = renew_leases(state, info, body.jobs)
    return HeartbeatOut(cancel=cancel, lost=lost)
