"""The final report of an attempt: which endpoint to call and with what body (no I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.launchers import Outcome

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
    result = outcome.result if outcome is not None else None
    if reporter.has_result:
        result = reporter.result_value
    if result is not None:
        body["result"] = result
    code = outcome.exit_code if outcome is not None else None
    if timed_out:
        what, body = (
            "failed",
            {
                **body,
                "timed_out": True,
                "exit_code": code,
                "error": f"timed out after {timeout_s:g} s",
            },
        )
    elif cancelled:
        what, body = "failed", {**body, "error": "cancelled"}
    elif abort_reason:
        what, body = "failed", {**body, "error": abort_reason}
    elif launch_error:
        what, body = "failed", {**body, "error": launch_error}
    elif outcome is not None and outcome.ok:
        what = "completed"
        body = {**body, "exit_code": 0}
        if outcome.resource_usage:
            body["resource_usage"] = outcome.resource_usage
    else:
        what, body = (
            "failed",
            {
                **body,
                "exit_code": code,
                "error": ((outcome.error if outcome else None) or f"exited with code {code}"),
            },
        )
    return what, body
