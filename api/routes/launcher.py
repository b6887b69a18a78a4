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
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import State
from api.routes.streams import hub_of
from api.state import AppState
from orchestrator.artifacts import safe_name
from orchestrator.errors import InvalidTransition, LaunchbayError, ParamError
from orchestrator.job import ACTIVE_STATUSES, Artifact, Job, JobStatus, StepResult
from orchestrator.runners import RunnerInfo, new_runner_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/launcher", tags=["launcher"])

POLL_TIMEOUT_S = 30
# Wake-ups come from lb:events; this bounded re-check covers a missed message or a
# subscriber that is reconnecting.
_FALLBACK_CHECK_S = 2.0
MAX_ARTIFACT_BYTES = 1 << 30
_RUNNER_ID = r"^runner-[0-9a-f]{12}$"
_TAG = r"^[A-Za-z0-9_.:-]{1,64}$"
_WAKE_TYPES = frozenset({"created", "requeued", "resync"})

Executor = Annotated[str, Field(pattern=r"^(builtin|process|docker|kubernetes)$")]
Tag = Annotated[str, Field(pattern=_TAG)]
LauncherId = Annotated[str, Field(pattern=_RUNNER_ID, description="From /launcher/register.")]


# ---------------------------------------------------------------- errors


class LauncherNotRegistered(LaunchbayError):
    """The launcher id is unknown or its registration expired: register again."""

    status_code = 404

    def __init__(self, launcher_id: str) -> None:
        super().__init__(
            f"launcher {launcher_id} is not registered (or its registration "
            f"expired); register again"
        )


class LauncherConflict(LaunchbayError):
    """A report for a job this launcher and attempt do not (or no longer) hold, or an id
    that is not this agent's to take."""

    status_code = 409


# ---------------------------------------------------------------- bodies

_STRICT = ConfigDict(extra="forbid")


class RegisterIn(BaseModel):
    model_config = _STRICT
    executors: list[Executor] = Field(min_length=1, description="Executors this agent runs.")
    tags: list[Tag] = Field(default_factory=list, max_length=32, description="Runner tags.")
    capacity: int = Field(default=1, ge=1, le=256, description="Jobs it runs at once.")
    hostname: str = Field(default="", max_length=255)
    pid: int | None = Field(default=None, ge=0)
    launcher_id: LauncherId | None = Field(
        default=None, description="Re-register under an id this agent already had."
    )


class RegisterOut(BaseModel):
    launcher_id: str
    poll_timeout_s: int
    heartbeat_interval_s: float
    lease_s: float


class Claim(BaseModel):
    model_config = _STRICT
    launcher_id: LauncherId
    attempt: int = Field(ge=1, description="The attempt the agent was given.")


class ProgressIn(Claim):
    percent: float = Field(ge=0, le=100)
    message: str = Field(default="", max_length=2000)


class LogLineIn(BaseModel):
    model_config = _STRICT
    stream: str = Field(default="stdout", pattern=r"^(stdout|stderr|system)$")
    step: str | None = Field(default=None, max_length=100)
    line: str = Field(max_length=65536)


class LogsIn(Claim):
    lines: list[LogLineIn] = Field(min_length=1, max_length=5000)


class CompletedIn(Claim):
    exit_code: int = Field(default=0, description="Non-zero is recorded as a failure.")
    result: Any = None
    steps: list[StepResult] = Field(default_factory=list)
    resource_usage: dict[str, Any] | None = None


class FailedIn(Claim):
    error: str = Field(min_length=1, max_length=10000)
    exit_code: int | None = None
    timed_out: bool = Field(default=False, description="The agent stopped it at timeout_s.")
    steps: list[StepResult] = Field(default_factory=list)
    result: Any = None


class HeartbeatIn(BaseModel):
    model_config = _STRICT
    launcher_id: LauncherId
    jobs: list[str] = Field(default_factory=list, max_length=1024)


class HeartbeatOut(BaseModel):
    cancel: list[str] = Field(description="Jobs whose cancel was asked: stop them.")
    lost: list[str] = Field(description="Jobs no longer held by this launcher: drop them.")


class ReportOut(BaseModel):
    cancel: bool = Field(description="The job's cancel was asked: stop it.")
    seq: int | None = None


class PollOut(BaseModel):
    job: Job


# ---------------------------------------------------------------- wake-ups


class _Waker:
    """Wakes this process's long-polls when a job may have become claimable.

    Waiters take :meth:`current` *before* looking at the store, so a notify that lands
    between the look and the wait is never lost.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


def setup(app: FastAPI) -> None:
    """Wake waiting polls from the process's one fan-out hub (api/fanout.py)."""

    async def start(app: FastAPI) -> None:
        waker = _Waker()
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


# ---------------------------------------------------------------- helpers


def _heartbeat_interval(state: AppState) -> float:
    s = state.settings
    return round(min(s.runner_heartbeat_s, s.lease_s / 3), 3)


def _registered(state: AppState, launcher_id: str) -> RunnerInfo:
    info = state.runners.get(launcher_id)
    if info is None or info.kind != "agent":
        raise LauncherNotRegistered(launcher_id)
    return info


def _owned(state: AppState, job_id: str, claim: Claim) -> Job:
    """The job, if this launcher holds this attempt of it and it is still active."""
    job = state.store.get(job_id)
    if job.runner_id != claim.launcher_id or job.attempt != claim.attempt:
        raise LauncherConflict(
            f"job {job_id} attempt {claim.attempt} is not held by launcher "
            f"{claim.launcher_id} (it is attempt {job.attempt}, runner "
            f"{job.runner_id or 'none'}, {job.status})"
        )
    if job.status not in ACTIVE_STATUSES:
        raise LauncherConflict(f"job {job_id} is {job.status}; it takes no more reports")
    return job


def _claim_for(state: AppState, info: RunnerInfo) -> Job | None:
    active = state.store.active_by_runner().get(info.id, 0)
    if active >= info.capacity:
        return None
    job = state.store.claim_next(info.id, info.executors, info.tags, state.settings.lease_s)
    if job is not None:
        state.events.forget(job.id)
        state.dispatcher.announce(job)
    return job


def _end(
    state: AppState,
    job: Job,
    target: JobStatus,
    *,
    exit_code: int | None,
    error: str | None,
    fields: dict[str, Any],
) -> Job:
    """The terminal step of an agent's attempt, with the Celery path's retry rules."""
    store, dispatcher = state.store, state.dispatcher
    if target == JobStatus.failed and job.attempt < job.spec.max_attempts:
        if fields:
            store.update_fields(job.id, job.attempt, **fields)
        backoff = job.spec.retry_backoff_s * 2 ** (job.attempt - 1)
        again = dispatcher.requeue(job, f"attempt {job.attempt} failed: {error}", countdown=backoff)
        if again is not None:
            state.events.forget(job.id)
            return again
    done = store.finish(job.id, job.attempt, target, exit_code=exit_code, error=error, **fields)
    if done is None:
        # Lost the race to an accepted cancel: success never wins over it.
        done = store.finish(job.id, job.attempt, JobStatus.cancelled, error="cancelled", **fields)
    if done is None:
        current = store.get(job.id)
        raise InvalidTransition(job.id, current.status, target, "another party ended it")
    dispatcher.announce(done)
    state.events.forget(job.id)
    return done


def _fields(
    steps: list[StepResult], result: Any, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if steps:
        fields["steps"] = [s.model_dump(mode="json") for s in steps]
    if result is not None:
        fields["result"] = result
    if usage:
        fields["resource_usage"] = usage
    return fields


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
        heartbeat_interval_s=_heartbeat_interval(state),
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
    launcher_id: Annotated[str, Query(pattern=_RUNNER_ID)],
    wait: Annotated[float, Query(ge=0, le=POLL_TIMEOUT_S)] = POLL_TIMEOUT_S,
) -> Any:
    info = await run_in_threadpool(_registered, state, launcher_id)
    waker: _Waker | None = getattr(request.app.state, "launcher_waker", None)
    deadline = time.monotonic() + wait
    while True:
        wake = waker.current() if waker is not None else None
        if await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        job = await run_in_threadpool(_claim_for, state, info)
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
    job = _owned(state, job_id, body)
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
    job = _owned(state, job_id, body)
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
    job = _owned(state, job_id, body)
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
    job = _owned(state, job_id, body)
    fields = _fields(body.steps, body.result, body.resource_usage)
    if body.exit_code == 0:
        return _end(
            state, job, JobStatus.succeeded, exit_code=0, error=None, fields=fields
        ).public()
    target = JobStatus.cancelled if job.cancel_requested else JobStatus.failed
    return _end(
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
    job = _owned(state, job_id, body)
    fields = _fields(body.steps, body.result)
    if job.cancel_requested:
        target, error = JobStatus.cancelled, "cancelled"
    elif body.timed_out:
        target = JobStatus.timed_out
        limit = job.spec.timeout_s
        error = f"timed out after {limit:g} s" if limit else body.error
    else:
        target, error = JobStatus.failed, body.error
    return _end(state, job, target, exit_code=body.exit_code, error=error, fields=fields).public()


@router.post(
    "/jobs/{job_id}/release",
    response_model=Job,
    operation_id="launcher-release",
    summary="Give back a claimed job the agent will not start",
)
def release(job_id: str, body: Claim, state: State) -> Any:
    job = _owned(state, job_id, body)
    if job.status != JobStatus.claimed:
        raise LauncherConflict(f"job {job_id} is {job.status}; only a claimed job can be released")
    again = state.dispatcher.requeue(job, f"released by {body.launcher_id} before it started")
    if again is None:  # a cancel was asked meanwhile: honour it
        return _end(
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
    launcher_id: Annotated[str, Query(pattern=_RUNNER_ID)],
    attempt: Annotated[int, Query(ge=1)],
    name: Annotated[str, Query(min_length=1, max_length=1000)],
) -> Any:
    claim = Claim(launcher_id=launcher_id, attempt=attempt)
    await run_in_threadpool(_owned, state, job_id, claim)
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
        return await run_in_threadpool(_record_artifact, state, job_id, claim, name, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


def _record_artifact(state: AppState, job_id: str, claim: Claim, name: str, path: Path) -> Artifact:
    job = _owned(state, job_id, claim)
    saved = state.artifacts.save(job_id, name, path)
    kept = [a for a in job.artifacts if a.name != saved.name] + [saved]
    if not state.store.update_fields(
        job.id, job.attempt, artifacts=[a.model_dump(mode="json") for a in kept]
    ):
        raise LauncherConflict(f"job {job_id} attempt {claim.attempt} is no longer active")
    return saved


@router.post(
    "/heartbeat",
    response_model=HeartbeatOut,
    operation_id="launcher-heartbeat",
    summary="Keep the agent and the leases of its jobs alive",
)
def heartbeat(body: HeartbeatIn, state: State) -> Any:
    info = _registered(state, body.launcher_id)
    state.runners.heartbeat(info)
    cancel: list[str] = []
    lost: list[str] = []
    for job_id in dict.fromkeys(body.jobs):
        job = state.store.find(job_id)
        if (
            job is None
            or job.runner_id != info.id
            or job.status not in ACTIVE_STATUSES
            or not state.store.renew_lease(job.id, job.attempt, state.settings.lease_s)
        ):
            lost.append(job_id)
        elif job.cancel_requested:
            cancel.append(job_id)
    return HeartbeatOut(cancel=cancel, lost=lost)
