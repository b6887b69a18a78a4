"""Prometheus metrics: what the listener counts, and what ``/metrics`` reports.

Why counts live in Redis. Transitions happen in many processes on many hosts: the API
(submit, queued cancels, agents' reports), every prefork child of every worker (claim,
start, end) and beat (lost runners). A ``prometheus_client`` counter in each of those
would need a scrape target per process (or ``PROMETHEUS_MULTIPROC_DIR`` per host, which
still leaves one target per worker pod). Instead :class:`MetricsRecorder`, one listener on
the core's seam, adds each won transition to one Redis hash (``lb:metrics``) with
``HINCRBY``, staged in the process's outbox (``orchestrator/events.py``) so the increments
ride in the same script call as the transition's event: no round trip of their own. Every
API process reads that hash at scrape time. The job counters are therefore cluster-wide,
exact and the same from every API replica, and survive any process's restart (they live
as long as Redis's data).

Histograms are kept the same way: one field per bucket (not cumulative) plus a sum; the
scrape cumulates them.

Gauges (queued jobs, queue lengths, worker slots) are read at scrape time from the store
and the runner registry: one grouped query per scrape, never a query per job. The scrape
side (``prometheus_client``) is :mod:`orchestrator.metrics_scrape`, which only the API
imports: a worker counts, it is never scraped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from orchestrator.events import METRICS_KEY as METRICS_KEY  # (the hash; defined there)
from orchestrator.events import Outbox, outbox_of
from orchestrator.job import TERMINAL_STATUSES, EventType, Job, JobStatus
from orchestrator.listeners import Listener

log = logging.getLogger(__name__)
# Seconds; the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip

# Why a re-queue happened, from the reason the core wrote (orchestrator/lifecycle.py).
_REQUEUE_KINDS = (
    ("lost", re.compile(r"\blost \(lease expired\)")),
    ("handed_back", re.compile(r"^handed back by ")),
    ("retried", re.compile(r"^attempt \d+ failed: ")),
)
_LAUNCH_FAILED = re.compile(r" launcher failed on launch attempt \d+: ")

Sink = Callable[[dict[str, float]], None]


def bucket_index(seconds: float) -> int:
    """The index of the first bucket that holds ``seconds`` (``len(BUCKETS)``: +Inf)."""
    for i, bound in enumerate(BUCKETS):
        if seconds <= bound:
            return i
    return len(BUCKETS)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def increments(job: Job, event: EventType) -> dict[str, float]:
    """The hash fields one transition adds to (pure: tested without Redis)."""
    ex = job.executor
    out: dict[str, float] = {}

    def observe(name: str, seconds: float | None) -> None:
        if seconds is None:
            return
        out[f"{name}|{ex}|b{bucket_index(seconds)}"] = 1
        out[f"{name}|{ex}|sum"] = seconds

    if event == EventType.created:
        out[f"submitted|{ex}"] = 1
    elif event == EventType.claimed:
        # Waiting since submit, or since a retry's backoff ended; a re-queue after a lost
        # runner has no recorded start, so it is not observed.
        since = job.not_before or (job.created_at if job.attempt == 1 else None)
        observe("queue_wait", _seconds(since, job.claimed_at))
    elif event == EventType.requeued:
        reason = job.error or ""
        for kind, pattern in _REQUEUE_KINDS:
            if pattern.search(reason):
                out[f"requeued|{ex}|{kind}"] = 1
                break
        if _LAUNCH_FAILED.search(reason):
            out[f"launch_failures|{ex}"] = 1
    elif job.status in TERMINAL_STATUSES and event.value == job.status.value:
        out[f"ended|{ex}|{job.status.value}"] = 1
        observe("run", _seconds(job.started_at, job.finished_at))
        if job.status == JobStatus.failed and "lost (lease expired)" in (job.error or ""):
            out[f"requeued|{ex}|lost_final"] = 1
        if job.status == JobStatus.failed and _LAUNCH_FAILED.search(job.error or ""):
            out[f"launch_failures|{ex}"] = 1
    return out


def redis_sink(client: Any) -> Sink:
    """Stages increments to ``lb:metrics`` in the client's outbox: sent with the next flush
    (the recorder's own, or the events publisher's: one round trip for both)."""
    return outbox_of(client).count


class MemorySink:
    """The hash in process memory, for the in-memory core (``orchestrator.testing``)."""

    def __init__(self) -> None:
        self.fields: dict[str, float] = {}

    def __call__(self, fields: dict[str, float]) -> None:
        for key, n in fields.items():
            self.fields[key] = self.fields.get(key, 0) + n


class MetricsRecorder(Listener):
    """The metrics listener: a few counter increments per transition, nothing else."""

    def __init__(self, sink: Sink, outbox: Outbox | None = None) -> None:
        self.sink = sink
        self._outbox = outbox  # (where the sink stages its increments, if anywhere)

    @classmethod
    def for_client(cls, client: Any) -> MetricsRecorder:
        """Into Redis when ``client`` is one; else into memory (the in-memory core)."""
        if hasattr(client, "pipeline"):
            return cls(redis_sink(client), outbox_of(client))
        return cls(MemorySink())

    def transition(self, job: Job, event: EventType) -> None:
        fields = increments(job, event)
        if fields:
            self.sink(fields)

    def flush(self) -> None:
        if self._outbox is not None:
            self._outbox.flush()

    def flush_soon(self) -> None:
        if self._outbox is not None:
            self._outbox.flush_soon()
