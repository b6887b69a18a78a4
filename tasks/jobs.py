"""``run_job``: the Celery task every job runs through."""

from __future__ import annotations

from typing import Any

from orchestrator.celery_app import RUN_JOB
from tasks.app import app
from tasks.context import worker_context


@app.task(name=RUN_JOB, bind=True)
def run_job(
    self, job_id: str, attempt: int | None = None, demands: dict[str, Any] | None = None
) -> str:  # type: ignore[no-untyped-def]
    """Claim and run one attempt of ``job_id``; the store decides whether it is ours.

    ``demands`` (rare: a project directory or key=value capabilities, which no queue name
    carries) are checked first; a worker that does not meet them passes the message on.
    """
    ctx = worker_context()
    if demands and not ctx.meets(demands):
        return ctx.pass_on(self.request, job_id, attempt, demands)
    return ctx.run(job_id, attempt)
