"""Worker lifecycle: register in the runner registry and heartbeat while alive."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from orchestrator.events import connect
from orchestrator.routing import worker_queues
from orchestrator.runners import RunnerInfo, RunnerRegistry
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
_stop = threading.Event()
_info: RunnerInfo | None = None


@worker_ready.connect
def _register(sender: Any = None, **_: Any) -> None:
    global _info
    settings = Settings.from_env()
    registry = RunnerRegistry(
        connect(settings.effective_redis_url), ttl_s=settings.runner_heartbeat_s * 3
    )
    concurrency = (
        getattr(getattr(sender, "controller", None), "concurrency", None)
        or settings.worker_concurrency
    )
    _info = RunnerInfo(
        id=os.environ["LAUNCHBAY_RUNNER_ID"],
        kind="celery",
        executors=settings.worker_executors,
        tags=settings.worker_tags,
        capacity=int(concurrency),
        queues=worker_queues(settings.worker_executors, settings.worker_tags),
    )

    def beat() -> None:
        while True:
            try:
                registry.heartbeat(_info)  # type: ignore[arg-type]
            except Exception:
                log.warning("runner heartbeat failed", exc_info=True)
            if _stop.wait(settings.runner_heartbeat_s):
                break
        with contextlib.suppress(Exception):  # the TTL removes it anyway
            registry.remove(_info.id)  # type: ignore[union-attr]

    threading.Thread(target=beat, name="runner-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _unregister(**_: Any) -> None:
    _stop.set()
