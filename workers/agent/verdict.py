"""The final report of an attempt: which endpoint to call and with what body (no I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.job import JobStatus
from workers.launchers import Outcome
from workers.verdict import decide, result_of

if TYPE_CHECKING:
    from workers.agent.reporter import Reporter


def final_report(
    outcome: Outcome | None,
    launch_error: str | None,
    reporter: Reporter,
    *,
    timed_out: bool,
    timeout_s: float | None,
    cancelled: bool,
    abort_reason: str | None,
) -> tuple[str, dict[str, Any]]:
    """``("completed" | "failed", body)``; the first reason that applies wins, in the order
    timeout, cancel, agent abort, launch error, the job's own outcome."""
    body: dict[str, Any] = {}
    if reporter.steps:
        body["steps"] = [s.model_dump(mode="json") for s in reporter.steps]
    result = result_of(outcome, reporter.has_result, reporter.result_value)
    if result is not None:
        body["result"] = result
    v = decide(
        outcome,
        launch_error,
        timed_out=timed_out,
        timeout_s=timeout_s,
        cancelled=cancelled,
        aborted=abort_reason,
    )
    if v.status == JobStatus.succeeded:
        body["exit_code"] = 0
        if outcome is not None and outcome.resource_usage:
            body["resource_usage"] = outcome.resource_usage
        return "completed", body
    if v.status == JobStatus.timed_out:
        body["timed_out"] = True
    body["exit_code"] = v.exit_code
    body["error"] = v.error
    return "failed", body
