"""Retention: remove ended jobs' records, log streams, stored logs and artifacts."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from orchestrator.artifacts import ArtifactStore
from orchestrator.events import Events
from orchestrator.job import utcnow
from orchestrator.store import JobStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"0s"`` → seconds; ValueError otherwise."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 0s)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def remove_run(store: JobStore, events: Events, artifacts: ArtifactStore,
               job_id: str) -> dict[str, Any]:
    """Remove one ended job: record, streams, stored log, artifact files."""
    job = store.delete(job_id)
    files = artifacts.delete_job(job_id)
    events.purge(job_id)
    return {"id": job.id, "status": job.status.value, "artifact_files": files}


def cleanup_older_than(store: JobStore, events: Events, artifacts: ArtifactStore,
                       seconds: float) -> dict[str, Any]:
    cutoff = utcnow() - timedelta(seconds=seconds)
    removed = []
    for job in store.ended_before(cutoff + timedelta(microseconds=1)):
        try:
            removed.append(remove_run(store, events, artifacts, job.id))
        except Exception:  # one bad record must not stop the sweep
            continue
    return {
        "cutoff": cutoff.isoformat(),
        "removed": len(removed),
        "artifact_files": sum(r["artifact_files"] for r in removed),
        "jobs": [r["id"] for r in removed],
    }
