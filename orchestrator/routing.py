"""Which Celery queue a job goes to, and which queues a worker consumes.

A queue is named by executor and the sorted demand tags: ``lb.docker`` or
``lb.docker.gpu+ssd``. A worker consumes every queue whose tags are a subset of its own.
"""

from __future__ import annotations

from itertools import combinations

QUEUE_PREFIX = "lb"
MAX_WORKER_TAGS = 8  # 2**8 queues per executor is plenty


def queue_name(executor: str, tags: list[str] | tuple[str, ...] = ()) -> str:
    clean = sorted({t.strip() for t in tags if t.strip()})
    return f"{QUEUE_PREFIX}.{executor}" + (f".{'+'.join(clean)}" if clean else "")


def route(spec: object) -> str:
    return queue_name(spec.executor, spec.demands.tags)  # type: ignore[attr-defined]


def worker_queues(executors: list[str], tags: list[str]) -> list[str]:
    uniq = sorted(set(tags))
    if len(uniq) > MAX_WORKER_TAGS:
        raise ValueError(f"a worker takes at most {MAX_WORKER_TAGS} tags")
    subsets = [c for n in range(len(uniq) + 1) for c in combinations(uniq, n)]
    return [queue_name(e, list(s)) for e in executors for s in subsets]
