"""``run_job``: the Celery task every job runs through."""

from __future__ import annotations

from orchestrator.celery_app import RUN_JOB
from tasks.app import app
from tasks.context import worker_context


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str, attempt: int | None = None) -> str:  # type: ignore[no-untyped-def]
    """Claim and run one attempt of ``job_id``; the store decides whether it is ours."""
    return worker_context().run(job_id, attempt)
