"""How an attempt ended, decided once for the Celery runner and the remote agent (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.job import JobStatus
from workers.launchers import Outcome


@dataclass(frozen=True)
class Verdict:
    status: JobStatus
    exit_code: int | None
    error: str | None


def decide(
    outcome: Outcome | None,
    launch_error: str | None,
    *,
    timed_out: bool,
    timeout_s: float | None,
    cancelled: bool,
    aborted: str | None = None,
) -> Verdict:
    """The first reason that applies wins: timeout, cancel, abort, launch error, then the
    job's own outcome."""
    code = outcome.exit_code if outcome is not None else None
    if timed_out:
        return Verdict(JobStatus.timed_out, code, f"timed out after {timeout_s:g} s")
    if cancelled:
        return Verdict(JobStatus.cancelled, None, "cancelled")
    if aborted:
        return Verdict(JobStatus.failed, None, aborted)
    if launch_error:
        return Verdict(JobStatus.failed, None, launch_error)
    if outcome is not None and outcome.ok:
        return Verdict(JobStatus.succeeded, 0, None)
    error = (outcome.error if outcome is not None else None) or f"exited with code {code}"
    return Verdict(JobStatus.failed, code, error)


def result_of(outcome: Outcome | None, has_result: bool, reported: Any) -> Any:
    """The job's result: a ``::result`` line wins over what the launcher returned."""
    if has_result:
        return reported
    return outcome.result if outcome is not None else None
