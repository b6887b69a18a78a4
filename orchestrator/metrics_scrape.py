"""The scrape side of Launchbay's metrics: the cluster-wide families ``/metrics`` reports,
read from what :mod:`orchestrator.metrics` counted (the ``lb:metrics`` hash), the store
and the runner registry. Only the API imports it (workers count; they are not scraped)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from orchestrator.broker import PRIORITY_STEPS, queue_keys
from orchestrator.job import ACTIVE_STATUSES, JobStatus
from orchestrator.metrics import BUCKETS, METRICS_KEY


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
            lengths = {name: sum(int(next(counts)) for _ in PRIORITY_STEPS) for name in names}
        yield from cluster_families(
            raw,
            active=[(ex, st, n) for (ex, st), n in per.items()],
            queues=lengths,
            runners=live,
            busy=busy,
        )
