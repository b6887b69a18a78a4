"""Capabilities and demands: which runner may take which job.

A runner (Celery worker or remote agent) declares its capabilities when it registers:
its host name, the executors it runs, its tags, its project directories and free
``key=value`` pairs. A job's spec demands some of them (``demands``). The rules, the same
for the Celery path, the agents' long-poll and the warning at submit:

- the job's executor is one of the runner's executors;
- every demanded tag is one of the runner's tags;
- a demanded ``hostname`` equals the runner's host name (case-insensitive);
- a demanded ``project_dir`` is one of the runner's project directories or lies inside one;
- every demanded ``values`` key is declared by the runner with the same value.

A job no live runner matches waits for one up to its match timeout (default 300 s), then
fails, saying what it demanded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

log = logging.getLogger(__name__)


def unmet(runner: Any, executor: str, demands: Any) -> list[str]:
    """What ``runner`` (a RunnerInfo) lacks to take a job of ``executor`` with ``demands``;
    empty when it matches."""
    missing: list[str] = []
    if executor not in runner.executors:
        missing.append(f"executor {executor}")
    lacking = sorted(set(demands.tags) - set(runner.tags))
    if lacking:
        missing.append(f"tags {','.join(lacking)}")
    if demands.hostname and demands.hostname.lower() != (runner.hostname or "").lower():
        missing.append(f"hostname={demands.hostname}")
    if demands.project_dir and not _inside_any(demands.project_dir, runner.project_dirs):
        missing.append(f"project_dir={demands.project_dir}")
    have = runner.capabilities or {}
    for key, value in sorted(demands.values.items()):
        if have.get(key) != value:
            missing.append(f"{key}={value}")
    return missing


def satisfies(runner: Any, executor: str, demands: Any) -> bool:
    return not unmet(runner, executor, demands)


def _inside_any(path: str, roots: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or p.is_relative_to(PurePosixPath(r)) for r in roots)


def describe(executor: str, demands: Any) -> str:
    """The demands in one phrase, for errors and warnings."""
    parts = [f"executor {executor}"]
    if demands.tags:
        parts.append(f"tags {','.join(sorted(demands.tags))}")
    if demands.hostname:
        parts.append(f"hostname={demands.hostname}")
    if demands.project_dir:
        parts.append(f"project_dir={demands.project_dir}")
    parts.extend(f"{k}={v}" for k, v in sorted(demands.values.items()))
    return ", ".join(parts)


_FRESH_S = 0.5


class LiveRunners:
    """The registry's live runners, read at most every ``ttl_s`` (submits stay cheap)."""

    def __init__(self, read: Callable[[], list[Any]], ttl_s: float = 2.0) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._at = -1e9
        self._cached: list[Any] = []
        self._lock = threading.Lock()

    def get(self, *, fresh: bool = False) -> list[Any]:
        """The live runners; ``fresh`` reads again unless the last read is under
        ``_FRESH_S`` old (a stream of unmatched submits reads the registry once, not each)."""
        with self._lock:
            age = time.monotonic() - self._at
            if age > self._ttl_s or (fresh and age > _FRESH_S):
                try:
                    self._cached = self._read()
                except Exception:  # no warning is better than no submit
                    log.warning("could not read the runner registry", exc_info=True)
                    return []
                self._at = time.monotonic()
            return list(self._cached)

    def warnings(self, executor: str, demands: Any) -> list[str]:
        """One warning when no live runner meets the job's demands (it will wait)."""
        runners = self.get()
        if any(satisfies(r, executor, demands) for r in runners):
            return []
        # Before warning, look again: a runner may have registered since the last read.
        runners = self.get(fresh=True)
        if any(satisfies(r, executor, demands) for r in runners):
            return []
        closest = min((unmet(r, executor, demands) for r in runners), key=len, default=None)
        why = f" (the closest lacks {', '.join(closest)})" if closest else " (none is live)"
        return [
            f"no live runner meets this job's demands: {describe(executor, demands)}{why}; "
            "it waits for one until its match timeout"
        ]


def celery_demands(demands: Any) -> dict[str, Any] | None:
    """The task kwargs that carry what Celery routing cannot (project_dir, values): a worker
    that does not meet them passes the message on (tasks/jobs.py). ``None`` for most jobs."""
    if not (demands.project_dir or demands.values):
        return None
    return {"demands": {"project_dir": demands.project_dir, "values": dict(demands.values)}}


def worker_meets(project_dirs: list[str], values: dict[str, str], wanted: dict[str, Any]) -> bool:
    """Whether a worker with these capabilities meets :func:`celery_demands`' demands."""
    pd = wanted.get("project_dir")
    if pd and not _inside_any(pd, project_dirs):
        return False
    return all(values.get(k) == v for k, v in (wanted.get("values") or {}).items())
