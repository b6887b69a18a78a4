"""Retention: remove ended jobs' records, log streams, stored logs and artifacts.

Used by ``DELETE /api/v1/runs/{id}``, ``POST /api/v1/runs/cleanup`` and beat's daily
retention task. Only ended jobs are ever touched: a job that is queued or running keeps
everything.
"""

from __future__ import annotations

import logging
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import JobNotEnded, JobNotFound
from orchestrator.events import Events
from orchestrator.job import utcnow
from orchestrator.store import JobStore

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


MAX_DURATION_S = 100 * 365 * 86400  # a cutoff further back is before any run (and past
# about 2700 years it is no date at all)


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"0s"`` → seconds, at most 100 years; ValueError
    otherwise."""
    m = _DURATION.match(text if isinstance(text, str) else "")
    if not m:
        raise ValueError(f"not a duration: {text[:40]!r} (use e.g. 7d, 12h, 30m, 0s)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text.strip()!r} is longer than 100 years")
    return seconds


def remove_run(
    store: JobStore,
    events: Events,
    artifacts: ArtifactStore,
    job_id: str,
    *,
    workspaces_dir: Path | None = None,
) -> dict[str, Any]:
    """Remove one ended job: artifact files, streams, stored log, workspace, then the record.

    The record goes last, so a removal that fails half-way leaves a record to retry with.
    An ended job never changes status again, so checking first and deleting after is safe.
    Raises JobNotFound, or JobNotEnded while the job is queued or running.
    """
    job = store.get(job_id)
    if not job.ended:
        raise JobNotEnded(job_id, job.status)
    files = artifacts.delete_job(job_id)
    events.purge(job_id)
    if workspaces_dir is not None:
        # Kept on purpose when the spec said cleanup "never"/"on_success"; gone with the run.
        artifacts.job_dir(job_id)  # refuses an id that is not a plain folder name
        shutil.rmtree(workspaces_dir / job_id, ignore_errors=True)
    store.delete(job_id)
    return {"id": job.id, "status": job.status.value, "artifact_files": files}


def sweep_strays(store: JobStore, events: Events) -> list[str]:
    """Remove streams, flags and stored logs whose job has no record; return those ids.

    A run deleted between a worker's last status write and its last event or log line gets
    that stream (or log file) back with no job to own it. A record is always written before
    anything in Redis, so "no record" means a stray, never a job being created. Beat's daily
    retention task runs this after the age-based cleanup.
    """
    ids = events.job_ids_with_data()
    strays = sorted(ids - store.existing_ids(ids))
    for job_id in strays:
        events.purge(job_id)
    if strays:
        log.info("retention removed the streams and logs of %d deleted job(s)", len(strays))
    return strays


def cleanup_older_than(
    store: JobStore,
    events: Events,
    artifacts: ArtifactStore,
    seconds: float,
    *,
    workspaces_dir: Path | None = None,
) -> dict[str, Any]:
    """Remove every job that ended more than ``seconds`` ago; say what went.

    ``seconds=0`` removes every ended job. One job that cannot be removed is logged and
    counted in ``errors``; it does not stop the sweep.
    """
    cutoff = utcnow() - timedelta(seconds=seconds)
    removed: list[dict[str, Any]] = []
    errors = 0
    # The +1 µs makes "0s" include a job that finished in this very microsecond.
    for job in store.ended_before(cutoff + timedelta(microseconds=1)):
        try:
            removed.append(
                remove_run(store, events, artifacts, job.id, workspaces_dir=workspaces_dir)
            )
        except JobNotFound:
            continue  # removed meanwhile by someone else: nothing left to do
        except Exception:
            log.exception("retention could not remove job %s", job.id)
            errors += 1
    from orchestrator.webhooks import WebhookStore  # (the delivery log ages out alike)

    pruned = WebhookStore(store.engine).prune(cutoff)
    if pruned:
        log.info("retention removed %d webhook deliveries", pruned)
    return {
        "cutoff": cutoff.isoformat(),
        "removed": len(removed),
        "jobs": [r["id"] for r in removed],
        "artifact_files": sum(r["artifact_files"] for r in removed),
        "errors": errors,
    }
