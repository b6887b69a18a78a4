"""How an attempt ended, decided once for every channel (no I/O)."""

from __future__ import annotations

import enum
from typing import Any

from orchestrator.errors import RunnerLaunchError
from orchestrator.job import JobStatus, StepResult
from orchestrator.protocol import Verdict
from workers.launchers import Outcome


class Stop(enum.StrEnum):
    """Why the runner stopped what it launched. The first reason wins: a cancel asked
    while a run-time limit's grace runs out is still a timeout, and the reverse."""

    cancel = "cancel"
    timeout = "timeout"
    lost = "lost"  # the runner no longer holds the attempt: nothing to report
    handback = "handback"  # the runner is going away: the job goes back to the queue


def decide(
    outcome: Outcome | None,
    *,
    stop: Stop | None,
    launch_error: RunnerLaunchError | None,
    result: Any = None,
    steps: list[StepResult] | None = None,
) -> Verdict:
    """The verdict: why it was stopped, else a launch error, else the job's own outcome."""
    code = outcome.exit_code if outcome is not None else None
    extra: dict[str, Any] = {"result": result, "steps": steps or []}
    if outcome is not None and outcome.resource_usage:
        extra["resource_usage"] = outcome.resource_usage
    if stop == Stop.timeout:
        # The core words it from the spec ("timed out after N s").
        return Verdict(status=JobStatus.timed_out, exit_code=code, error="timed out", **extra)
    if stop == Stop.cancel:
        return Verdict(status=JobStatus.cancelled, exit_code=None, error="cancelled", **extra)
    if launch_error is not None:
        # Transient errors were retried within the attempt; one that outlasted those
        # retries may earn another attempt, a permanent one (no such image or executable)
        # would fail the same way again.
        return Verdict(
            status=JobStatus.failed,
            error=str(launch_error),
            may_retry=launch_error.transient,
            **extra,
        )
    if outcome is not None and outcome.ok:
        return Verdict(status=JobStatus.succeeded, exit_code=0, **extra)
    error = (outcome.error if outcome is not None else None) or f"exited with code {code}"
    return Verdict(status=JobStatus.failed, exit_code=code, error=error, **extra)


def result_of(outcome: Outcome | None, has_result: bool, reported: Any) -> Any:
    """The job's result: a ``::result`` line wins over what the launcher returned."""
    if has_result:
        return reported
    return outcome.result if outcome is not None else None
