"""The launcher (agent) API: remote agents that cannot reach Redis pull work over HTTP.

An agent registers its executors and tags, long-polls for work, and reports what happens.
These routes parse, call the core (``orchestrator/lifecycle.py``: claim-next, start,
progress, renew, release, end — each a compare-and-set, each announced to the listeners)
and answer. An agent, a Celery worker and a second agent racing for one job cannot both
win; a report about an attempt the agent does not hold is a 409.
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

from api.auth import AgentCaller, EnrollingCaller, acting_as
from api.bodies import StrictJSONRoute
from api.deps import State
from api.errors import answers
from api.routes.streams import hub_of
from api.waiting import held_s
from api.waker import Waker
from orchestrator.artifacts import MAX_NAME, safe_name
from orchestrator.errors import LaunchbayError
from orchestrator.events import clip_line
from orchestrator.job import STATUS_EVENTS, TERMINAL_STATUSES, Artifact, EventType, Job
from orchestrator.protocol import (
    MAX_ATTEMPT,
    RUNNER_ID,
    Claim,
    CompletedIn,
    EndIn,
    FailedIn,
    HeartbeatIn,
    HeartbeatOut,
    LogsIn,
    PollOut,
    ProgressIn,
    RegisterIn,
    RegisterOut,
    ReportOut,
    StartedIn,
    Verdict,
)
from orchestrator.runners import RunnerInfo, new_runner_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/launcher", tags=["launcher"], route_class=StrictJSONRoute)

POLL_TIMEOUT_S = 30
# Wake-ups come from lb:events; this bounded re-check covers a missed message or a
# subscriber that is reconnecting.
_FALLBACK_CHECK_S = 2.0
# A job's end wakes them too: the slot it frees may let a job held for its concurrency
# key, its session's turn or its dependencies go (those are sent to Celery at once; an
# agent parked here must get the same chance, not wait for its fallback check).
_WAKE_TYPES = frozenset(
    {
        EventType.created,
        EventType.requeued,
        EventType.resync,
        *(STATUS_EVENTS[s] for s in TERMINAL_STATUSES),
    }
)


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


# ---------------------------------------------------------------- rules of the registry


class LauncherNotRegistered(LaunchbayError):
    """The launcher id is unknown or its registration expired: register again."""

    status_code = 404

    def __init__(self, launcher_id: str) -> None:
        super().__init__(
            f"launcher {launcher_id} is not registered (or its registration expired); "
            f"register again"
        )


class LauncherConflict(LaunchbayError):
    """An id that is not this agent's to take."""

    status_code = 409


def _heartbeat_interval(state: State) -> float:
    """How often an agent heartbeats: at least three times per lease."""
    s = state.settings
    return round(min(s.runner_heartbeat_s, s.lease_s / 3), 3)


def _registered(state: State, launcher_id: str) -> RunnerInfo:
    info = state.runners.get(launcher_id)
    if info is None or info.kind != "agent":
        raise LauncherNotRegistered(launcher_id)
    return info


# ---------------------------------------------------------------- routes


@router.post(
    "/register",
    response_model=RegisterOut,
    operation_id="launcher-register",
    summary="Register a remote agent",
    responses=answers(409),
)
def register(body: RegisterIn, state: State, who: EnrollingCaller) -> Any:
    key: str | None = None
    if body.launcher_id:
        held = state.runners.get(body.launcher_id)
        if held is not None and held.kind != "agent":
            raise LauncherConflict(f"{body.launcher_id} is a live {held.kind} runner, not an agent")
        if who.agent_id is not None:
            acting_as(who, body.launcher_id)  # an agent registers itself again, with its key
        elif state.agent_keys.exists(body.launcher_id):
            raise LauncherConflict(
                f"{body.launcher_id} belongs to another agent; register without launcher_id "
                f"to get an id of your own"
            )
    elif who.agent_id is not None:
        raise LauncherConflict("an agent's key registers that agent again: name its launcher_id")
    info = RunnerInfo(
        id=body.launcher_id or new_runner_id(),
        kind="agent",
        hostname=body.hostname or "unknown",
        pid=body.pid or 0,
        executors=sorted(set(body.executors)),
        tags=sorted(set(body.tags)),
        project_dirs=sorted(set(body.project_dirs)),
        capabilities=dict(body.capabilities),
        capacity=body.capacity,
    )
    if who.agent_id is None:
        key = state.agent_keys.issue(info.id)
    state.runners.heartbeat(info)
    return RegisterOut(
        launcher_id=info.id,
        poll_timeout_s=POLL_TIMEOUT_S,
        heartbeat_interval_s=_heartbeat_interval(state),
        lease_s=state.settings.lease_s,
        agent_key=key,
    )


@router.post(
    "/unregister",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="launcher-unregister",
    summary="Leave the registry (agent stops)",
)
def unregister(body: HeartbeatIn, state: State, who: AgentCaller) -> Response:
    acting_as(who, body.launcher_id)
    state.runners.remove(body.launcher_id)
    state.agent_keys.revoke(body.launcher_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/jobs",
    response_model=PollOut,
    operation_id="launcher-poll",
    summary="Long-poll for the next job this agent can run",
    responses={204: {"description": "No job within the wait"}, **answers(404)},
)
async def poll(
    request: Request,
    state: State,
    who: AgentCaller,
    launcher_id: Annotated[str, Query(pattern=RUNNER_ID)],
    wait: Annotated[float, Query(ge=0, le=POLL_TIMEOUT_S)] = POLL_TIMEOUT_S,
) -> Any:
    acting_as(who, launcher_id)
    info = await run_in_threadpool(_registered, state, launcher_id)
    waker: Waker | None = getattr(request.app.state, "launcher_waker", None)
    deadline = time.monotonic() + held_s(state.settings, wait)
    while True:
        wake = waker.current() if waker is not None else None
        if await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        # A long-poll is a sign of life: an agent that only polls stays registered. An
        # agent that unregistered (it is draining) must not be handed a job now.
        if not await run_in_threadpool(state.runners.touch, info.id):
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        job = await run_in_threadpool(
            state.dispatcher.lifecycle.claim_next, info, state.runners.get
        )
        if job is not None:
            return {"job": job.public(), "secrets": job.spec.secrets}
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        pause = min(left, _FALLBACK_CHECK_S if wake is not None else 0.5)
        if wake is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=pause)


@router.post(
    "/jobs/{job_id}/started",
    response_model=Job,
    operation_id="launcher-started",
    summary="The agent launched the job: claimed → running",
    responses=answers(409),
)
def started(job_id: str, body: StartedIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    lifecycle = state.dispatcher.lifecycle
    return lifecycle.start(job_id, body.launcher_id, body.attempt, body.handle).public()


@router.post(
    "/jobs/{job_id}/progress",
    response_model=ReportOut,
    operation_id="launcher-progress",
    summary="Report progress",
    responses=answers(409),
)
def progress(job_id: str, body: ProgressIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    lifecycle = state.dispatcher.lifecycle
    lifecycle.progress(job_id, body.launcher_id, body.attempt, body.percent, body.message)
    job = lifecycle.held(job_id, body.launcher_id, body.attempt)
    return ReportOut(cancel=job.cancel_requested)


@router.post(
    "/jobs/{job_id}/logs",
    response_model=ReportOut,
    operation_id="launcher-logs",
    summary="Append log lines (each cut at LAUNCHBAY_MAX_LOG_LINE_BYTES, with a marker)",
    responses=answers(409),
)
def logs(job_id: str, body: LogsIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    job = state.dispatcher.lifecycle.held(job_id, body.launcher_id, body.attempt)
    # Another API process may have appended the previous batch: take the sequence from
    # Redis, not from this process's cache.
    state.events.forget(job.id)
    limit = state.settings.max_log_line_bytes
    seq = state.events.append_logs(
        job.id, [(ln.stream, ln.step, clip_line(ln.line, limit)) for ln in body.lines]
    )
    return ReportOut(cancel=job.cancel_requested, seq=seq)


def _end(state: State, job_id: str, claim: Claim, verdict: Verdict) -> Any:
    done = state.dispatcher.lifecycle.end(job_id, claim.launcher_id, claim.attempt, verdict)
    state.events.forget(job_id)
    return done.public()


@router.post(
    "/jobs/{job_id}/end",
    response_model=Job,
    operation_id="launcher-end",
    summary="End the attempt with its verdict (the core decides: retry, cancel, or the end)",
    responses=answers(409),
)
def end(job_id: str, body: EndIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    return _end(state, job_id, body, Verdict(**body.model_dump(exclude={"launcher_id", "attempt"})))


@router.post(
    "/jobs/{job_id}/completed",
    response_model=Job,
    operation_id="launcher-completed",
    summary="The job exited; exit code 0 succeeds it (a form of /end)",
    responses=answers(409),
)
def completed(job_id: str, body: CompletedIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    return _end(state, job_id, body, body.verdict())


@router.post(
    "/jobs/{job_id}/failed",
    response_model=Job,
    operation_id="launcher-failed",
    summary="The job failed or timed out (a form of /end)",
    responses=answers(409),
)
def failed(job_id: str, body: FailedIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    return _end(state, job_id, body, body.verdict())


@router.post(
    "/jobs/{job_id}/release",
    response_model=Job,
    operation_id="launcher-release",
    summary="Hand back a claimed or running job (draining): queued again, nothing spent",
    responses=answers(409),
)
def release(job_id: str, body: Claim, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    again = state.dispatcher.lifecycle.release(job_id, body.launcher_id, body.attempt)
    state.events.forget(job_id)
    return again.public()


@router.post(
    "/jobs/{job_id}/artifacts",
    response_model=Artifact,
    operation_id="launcher-artifact-upload",
    summary="Upload one artifact (raw body, at most LAUNCHBAY_MAX_ARTIFACT_BYTES)",
    responses=answers(400, 409, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_artifact(
    job_id: str,
    request: Request,
    state: State,
    launcher_id: Annotated[str, Query(pattern=RUNNER_ID)],
    attempt: Annotated[int, Query(ge=1, le=MAX_ATTEMPT)],
    name: Annotated[str, Query(min_length=1, max_length=MAX_NAME)],
    who: AgentCaller,
) -> Any:
    acting_as(who, launcher_id)
    lifecycle = state.dispatcher.lifecycle
    await run_in_threadpool(lifecycle.held, job_id, launcher_id, attempt)
    safe_name(name)  # refuse a bad name before reading the body
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=state.settings.home)
    try:
        # The body's bound (LAUNCHBAY_MAX_ARTIFACT_BYTES, api/app.py) stops it with a 413.
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                await run_in_threadpool(out.write, chunk)
        saved = await run_in_threadpool(state.artifacts.save, job_id, name, Path(tmp))
        await run_in_threadpool(lifecycle.add_artifact, job_id, launcher_id, attempt, saved)
        return saved
    finally:
        Path(tmp).unlink(missing_ok=True)


@router.post(
    "/heartbeat",
    response_model=HeartbeatOut,
    operation_id="launcher-heartbeat",
    summary="Keep the agent and the leases of its jobs alive",
    responses=answers(404),
)
def heartbeat(body: HeartbeatIn, state: State, who: AgentCaller) -> Any:
    acting_as(who, body.launcher_id)
    info = _registered(state, body.launcher_id)
    state.runners.heartbeat(info)
    cancel, lost = state.dispatcher.lifecycle.renew_all(info.id, body.jobs)
    return HeartbeatOut(cancel=cancel, lost=lost)
