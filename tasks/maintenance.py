"""Periodic tasks that beat schedules: reconcile, retention, orphan removal."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.celery_app import FIRE_SCHEDULES, RECONCILE, REMOVE_ORPHANS, RETENTION
from tasks.app import app
from tasks.context import worker_context
from workers.launchers import launcher_class

log = logging.getLogger(__name__)


@app.task(name=RECONCILE, ignore_result=True)
def reconcile() -> dict[str, int]:
    """Re-queue or fail jobs whose runner was lost; fail unmatched jobs; finish stuck cancels."""
    return worker_context().dispatcher.reconcile()


@app.task(name=FIRE_SCHEDULES, ignore_result=True)
def fire_schedules() -> dict[str, int]:
    """Fire each due cron tick once (a compare-and-set on the schedule's next fire time)."""
    from orchestrator.schedules import Schedules

    return Schedules(worker_context().dispatcher).fire_due()


@app.task(name=RETENTION, ignore_result=True)
def retention() -> dict[str, Any]:
    from orchestrator.retention import cleanup_older_than, sweep_strays

    ctx = worker_context()
    result = cleanup_older_than(
        ctx.store,
        ctx.events,
        ctx.artifacts,
        ctx.settings.retention_days * 86400,
        workspaces_dir=ctx.settings.workspaces_dir,
    )
    result["strays"] = len(sweep_strays(ctx.store, ctx.events))
    return result


@app.task(name=REMOVE_ORPHANS, ignore_result=True)
def remove_orphans() -> dict[str, int]:
    """Remove containers and Jobs left by ended jobs or superseded attempts."""
    ctx = worker_context()
    removed: dict[str, int] = {}

    def is_live(job_id: str, attempt: int) -> bool:
        job = ctx.store.find(job_id)
        return job is not None and not job.ended and job.attempt == attempt

    for executor in ctx.settings.worker_executors:
        if launcher_class(executor).orphan_sweep != "beat":
            continue  # leftovers of that executor are swept per host, or there are none
        try:
            launcher = ctx.launchers.get(executor)
            handles = launcher.orphans(is_live)
            for h in handles:
                launcher.remove(h)
            removed[executor] = len(handles)
        except Exception:
            log.exception("orphan sweep failed for %s", executor)
    return removed
