"""Which Celery queue a job goes to, and which queues a worker consumes.

A queue is named by executor and the sorted demand tags: ``lb.docker`` or
``lb.docker.gpu+ssd``. A worker consumes every queue whose tags are a subset of its own.
A job that demands a host name goes to that host's variant, ``lb.docker.gpu@build-01``,
which only workers on that host consume (issue 16: capabilities).
"""

from __future__ import annotations

from itertools import combinations

QUEUE_PREFIX = "lb"
MAX_WORKER_TAGS = 8  # 2**8 queues per executor is plenty


def queue_name(
    executor: str, tags: list[str] | tuple[str, ...] = (), host: str | None = None
) -> str:
    clean = sorted({t.strip() for t in tags if t.strip()})
    name = f"{QUEUE_PREFIX}.{executor}" + (f".{'+'.join(clean)}" if clean else "")
    return f"{name}@{host.lower()}" if host else name


def route(spec: object) -> str:
    demands = spec.demands  # type: ignore[attr-defined]
    return queue_name(spec.executor, demands.tags, getattr(demands, "hostname", None))  # type: ignore[attr-defined]


def worker_queues(executors: list[str], tags: list[str], host: str | None = None) -> list[str]:
    """The queues a worker consumes: its executors × every subset of its tags, and the
    same again for jobs that demand its ``host``."""
    uniq = sorted(set(tags))
    if len(uniq) > MAX_WORKER_TAGS:
        raise ValueError(f"a worker takes at most {MAX_WORKER_TAGS} tags")
    subsets = [c for n in range(len(uniq) + 1) for c in combinations(uniq, n)]
    hosts: list[str | None] = [None, host] if host else [None]
    return [queue_name(e, list(s), h) for h in hosts for e in executors for s in subsets]
