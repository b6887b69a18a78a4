"""The launcher API's rules, apart from HTTP: who holds a job, claiming, ending an attempt.

The store stays the only arbiter; these functions call its compare-and-set steps and
announce every change the way the Celery path does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from api.routes._launcher_models import Claim
from api.state import AppState
from orchestrator.errors import InvalidTransition, LaunchbayError
from orchestrator.job import ACTIVE_STATUSES, Artifact, Job, JobStatus
from orchestrator.runners import RunnerInfo

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


# ---------------------------------------------------------------- wake-ups


class Waker:
    """Wakes this process's long-polls when a job may have become claimable.

    Waiters take :meth:`current` *before* looking at the store, so a notify that lands
    between the look and the wait is never lost.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next :meth:`notify` sets."""
        return self._event

    def notify(self) -> None:
        """Wake every waiter holding the current event."""
        event, self._event = self._event, asyncio.Event()
        event.set()


# ---------------------------------------------------------------- rules


def heartbeat_interval(state: AppState) -> float:
    """How often an agent heartbeats: at least three times per lease."""
    s = state.settings
    return round(min(s.runner_heartbeat_s, s.lease_s / 3), 3)


def registered_launcher(state: AppState, launcher_id: str) -> RunnerInfo:
    """The live registration of this agent, or :class:`LauncherNotRegistered`."""
    info = state.runners.get(launcher_id)
    if info is None or info.kind != "agent":
        raise LauncherNotRegistered(launcher_id)
    return info


def owned_job(state: AppState, job_id: str, claim: Claim) -> Job:
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


def claim_next_for(state: AppState, info: RunnerInfo) -> Job | None:
    """Claim the next job this agent can run, if it has a free slot; announce the claim."""
    active = state.store.active_by_runner().get(info.id, 0)
    if active >= info.capacity:
        return None
    job = state.store.claim_next(info.id, info.executors, info.tags, state.settings.lease_s)
    if job is not None:
        state.events.forget(job.id)
        state.dispatcher.announce(job)
    return job


def end_attempt(
    state: AppState,
    job: Job,
    target: JobStatus,
    *,
    exit_code: int | None,
    error: str | None,
    fields: dict[str, Any],
) -> Job:
    """The terminal step of an agent's attempt (``Dispatcher.end_attempt``, as on the
    Celery path); a conflict when another party ended it first."""
    done = state.dispatcher.end_attempt(
        job, target, exit_code=exit_code, error=error, fields=fields
    )
    if done is None:
        current = state.store.get(job.id)
        raise InvalidTransition(job.id, current.status, target, "another party ended it")
    state.events.forget(job.id)
    return done


def record_artifact(state: AppState, job_id: str, claim: Claim, name: str, path: Path) -> Artifact:
    """Save an uploaded file as the job's artifact ``name`` and list it on the job."""
    job = owned_job(state, job_id, claim)
    saved = state.artifacts.save(job_id, name, path)
    kept = [a for a in job.artifacts if a.name != saved.name] + [saved]
    if not state.store.update_fields(
        job.id, job.attempt, artifacts=[a.model_dump(mode="json") for a in kept]
    ):
        raise LauncherConflict(f"job {job_id} attempt {claim.attempt} is no longer active")
    return saved


def renew_leases(
    state: AppState, info: RunnerInfo, job_ids: list[str]
) -> tuple[list[str], list[str]]:
    """Renew the leases of the jobs this agent says it runs: ``(cancel, lost)``, the ones
    whose cancel was asked and the ones it no longer holds."""
    cancel: list[str] = []
    lost: list[str] = []
    for job_id in dict.fromkeys(job_ids):
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
    return cancel, lost
