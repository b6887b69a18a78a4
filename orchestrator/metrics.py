"""Prometheus metrics: what the listener counts, and what ``/metrics`` reports.

Why counts live in Redis. Transitions happen in many processes on many hosts: the API
(submit, queued cancels, agents' reports), every prefork child of every worker (claim,
start, end) and beat (lost runners). A ``prometheus_client`` counter in each of those
would need a scrape target per process (or ``PROMETHEUS_MULTIPROC_DIR`` per host, which
still leaves one target per worker pod). Instead :class:`MetricsRecorder`, one listener on
the core's seam, adds each won transition to one Redis hash (``lb:metrics``) with one
pipelined round trip of ``HINCRBY``; every API process reads that hash at scrape time. The
job counters are therefore cluster-wide, exact and the same from every API replica, and
survive any process's restart (they live as long as Redis's data).

Histograms are kept the same way: one field per bucket (not cumulative) plus a sum; the
scrape cumulates them.

Gauges (queued jobs, queue lengths, worker slots) are read at scrape time from the store
and the runner registry: one grouped query per scrape, never a query per job.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from orchestrator.job import ACTIVE_STATUSES, TERMINAL_STATUSES, EventType, Job, JobStatus
from orchestrator.listeners import Listener

log = logging.getLogger(__name__)

METRICS_KEY = "lb:metrics"
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

# kombu's Redis transport keeps one list per priority step: ``name`` for 0, else
# ``name\x06\x16{step}`` (orchestrator/celery_app.py asks for steps 0-9).
_PRIORITIES = range(10)
_PRIORITY_SEP = "\x06\x16"


def queue_keys(name: str) -> list[str]:
    """The Redis lists that hold a Celery queue's messages, one per priority step."""
    return [name if p == 0 else f"{name}{_PRIORITY_SEP}{p}" for p in _PRIORITIES]


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
    """Adds increments to ``lb:metrics`` in one pipelined round trip."""

    def add(fields: dict[str, float]) -> None:
        pipe = client.pipeline(transaction=False)
        for key, n in fields.items():
            if key.endswith("|sum"):
                pipe.hincrbyfloat(METRICS_KEY, key, n)
            else:
                pipe.hincrby(METRICS_KEY, key, int(n))
        pipe.execute()

    return add


class MemorySink:
    """The hash in process memory, for the in-memory core (``orchestrator.testing``)."""

    def __init__(self) -> None:
        self.fields: dict[str, float] = {}

    def __call__(self, fields: dict[str, float]) -> None:
        for key, n in fields.items():
            self.fields[key] = self.fields.get(key, 0) + n


class MetricsRecorder(Listener):
    """The metrics listener: a few counter increments per transition, nothing else."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    @classmethod
    def for_client(cls, client: Any) -> MetricsRecorder:
        """Into Redis when ``client`` is one; else into memory (the in-memory core)."""
        return cls(redis_sink(client) if hasattr(client, "pipeline") else MemorySink())

    def transition(self, job: Job, event: EventType) -> None:
        fields = increments(job, event)
        if fields:
            self.sink(fields)


# ---------------------------------------------------------------- scrape side


def _hist(name: str, doc: str, raw: dict[str, float], prefix: str) -> HistogramMetricFamily | None:
    """Cumulative buckets per executor from the hash's non-cumulative fields."""
    per: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        parts = key.split("|")
        if len(parts) == 3 and parts[0] == prefix:
            per.setdefault(parts[1], {})[parts[2]] = value
    fam = HistogramMetricFamily(name, doc, labels=["executor"])
    for ex, fields in sorted(per.items()):
        acc = 0.0
        buckets = []
        for i, bound in enumerate([*BUCKETS, math.inf]):
            acc += fields.get(f"b{i}", 0)
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), acc))
        fam.add_metric([ex], buckets, fields.get("sum", 0.0))
    return fam


def cluster_families(
    raw: dict[str, float],
    *,
    active: list[tuple[str, str, int]],
    queues: dict[str, int],
    runners: list[Any],
    busy: dict[str, int],
) -> Iterator[Any]:
    """Every cluster-wide family from what the scrape read (pure: tested without I/O)."""
    counters = {
        "submitted": CounterMetricFamily(
            "launchbay_jobs_submitted", "Jobs submitted.", labels=["executor"]
        ),
        "ended": CounterMetricFamily(
            "launchbay_jobs_ended", "Jobs that ended, by outcome.", labels=["executor", "status"]
        ),
        "requeued": CounterMetricFamily(
            "launchbay_jobs_requeued",
            "Attempts re-queued, by why: retried (the job failed and may try again), lost "
            "(its runner went away), handed_back (a draining runner gave it back); "
            "lost_final: a lost runner that ended the job (loss budget spent).",
            labels=["executor", "reason"],
        ),
        "launch_failures": CounterMetricFamily(
            "launchbay_launch_failures",
            "Attempts whose launcher could not start the job (after its launch retries).",
            labels=["executor"],
        ),
    }
    for key, value in sorted(raw.items()):
        parts = key.split("|")
        fam = counters.get(parts[0])
        if fam is None or parts[-1] == "sum" or parts[-1].startswith("b"):
            continue
        fam.add_metric(parts[1:], value)
    yield from counters.values()
    yield _hist(
        "launchbay_job_queue_wait_seconds",
        "From submit (or a retry's due time) to a runner's claim.",
        raw,
        "queue_wait",
    )
    yield _hist(
        "launchbay_job_run_seconds",
        "From start to end of the attempt that ended the job.",
        raw,
        "run",
    )
    jobs = GaugeMetricFamily(
        "launchbay_jobs", "Jobs queued or running now, by status.", labels=["executor", "status"]
    )
    for ex, status, n in sorted(active):
        jobs.add_metric([ex, status], n)
    yield jobs
    depth = GaugeMetricFamily(
        "launchbay_queue_messages",
        "Messages waiting in each broker queue (what KEDA scales on).",
        labels=["queue"],
    )
    for queue, n in sorted(queues.items()):
        depth.add_metric([queue], n)
    yield depth
    slots = GaugeMetricFamily(
        "launchbay_worker_slots",
        "Slots of each live runner (worker or agent).",
        labels=["runner", "kind", "host"],
    )
    busy_slots = GaugeMetricFamily(
        "launchbay_worker_busy_slots",
        "Slots of each live runner holding a job now.",
        labels=["runner", "kind", "host"],
    )
    draining = GaugeMetricFamily(
        "launchbay_worker_draining", "1 while a runner drains.", labels=["runner", "kind", "host"]
    )
    for r in runners:
        who = [r.id, r.kind, r.hostname]
        slots.add_metric(who, r.capacity)
        busy_slots.add_metric(who, busy.get(r.id, 0))
        draining.add_metric(who, 1 if r.draining else 0)
    yield slots
    yield busy_slots
    yield draining


class ClusterCollector(Collector):
    """Reads the cluster-wide numbers at scrape time: the ``lb:metrics`` hash, queued and
    running jobs (one grouped query), broker queue lengths and the runner registry."""

    def __init__(self, client: Any, engine: sa.Engine, runners: Any) -> None:
        self.r = client
        self.engine = engine
        self.runners = runners

    def collect(self) -> Iterator[Any]:
        from orchestrator.schema import jobs

        raw = {k: float(v) for k, v in (self.r.hgetall(METRICS_KEY) or {}).items()}
        q = (
            sa.select(jobs.c.executor, jobs.c.status, jobs.c.runner_id, sa.func.count())
            .where(jobs.c.status.in_([JobStatus.queued.value, *(s.value for s in ACTIVE_STATUSES)]))
            .group_by(jobs.c.executor, jobs.c.status, jobs.c.runner_id)
        )
        per: dict[tuple[str, str], int] = {}
        busy: dict[str, int] = {}
        with self.engine.connect() as c:
            for ex, status, runner, n in c.execute(q):
                per[(ex, status)] = per.get((ex, status), 0) + int(n)
                if runner and status != JobStatus.queued.value:
                    busy[runner] = busy.get(runner, 0) + int(n)
        live = self.runners.live()
        names = sorted({name for r in live for name in r.queues})
        lengths: dict[str, int] = {}
        if names:
            pipe = self.r.pipeline(transaction=False)
            for name in names:
                for key in queue_keys(name):
                    pipe.llen(key)
            counts = iter(pipe.execute())
            lengths = {name: sum(int(next(counts)) for _ in _PRIORITIES) for name in names}
        yield from cluster_families(
            raw,
            active=[(ex, st, n) for (ex, st), n in per.items()],
            queues=lengths,
            runners=live,
            busy=busy,
        )
