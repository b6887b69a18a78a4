"""The baseline: a bare Celery app with a no-op task, on the same Valkey."""

from __future__ import annotations

import os

from celery import Celery

url = os.environ["BENCH_REDIS_URL"]
app = Celery("bench_raw", broker=url, backend=url)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> int:
    return 1


@app.task(name="bench.sleep")
def sleep(seconds: float) -> int:
    import time

    time.sleep(seconds)
    return 1
