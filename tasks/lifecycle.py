"""Worker lifecycle: register in the runner registry and heartbeat while alive; sweep this
host's leftover job processes at start and every ``process_sweep_s``."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from orchestrator.events import connect, drain_key
from orchestrator.routing import worker_queues
from orchestrator.runners import RunnerInfo, RunnerRegistry
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
_stop = threading.Event()
_info: RunnerInfo | None = None


def sweep_host_processes(settings: Settings) -> int:
    """Kill this host's processes of process jobs whose attempt is over; return how many.

    A worker that is SIGKILLed takes its steps' leaders with it (parent-death signal), but
    a process that left their group (``setsid``, a daemonising fork) lives on. Beat's orphan
    task cannot find it, as it runs on any one host, so every worker sweeps its own. A job
    this store does not know belongs to another installation on the host: left alone.
    """
    from orchestrator.store import JobStore
    from workers.launchers import launcher_class

    host_swept = [e for e in settings.worker_executors if launcher_class(e).orphan_sweep == "host"]
    if not host_swept:
        return 0
    store = JobStore(settings.effective_database_url, create=False)
    try:

        def is_live(job_id: str, attempt: int) -> bool:
            job = store.find(job_id)
            return job is None or (not job.ended and job.attempt == attempt)

        killed = 0
        for executor in host_swept:
            launcher = launcher_class(executor)(settings)
            handles = launcher.orphans(is_live)
            for handle in handles:
                launcher.remove(handle)
            killed += len(handles)
    finally:
        store.dispose()  # no connection kept across the pool's later forks
    if killed:
        log.warning("killed %d leftover process(es) of ended job attempts", killed)
    return killed


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
        project_dirs=settings.worker_project_dirs,
        capabilities=settings.worker_capabilities,
        capacity=int(concurrency),
        queues=worker_queues(settings.worker_executors, settings.worker_tags, socket.gethostname()),
    )

    def beat() -> None:
        next_sweep = 0.0
        while True:
            try:
                registry.heartbeat(_info)  # type: ignore[arg-type]
            except Exception:
                log.warning("runner heartbeat failed", exc_info=True)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + settings.process_sweep_s
                try:
                    sweep_host_processes(settings)
                except Exception:
                    log.warning("process sweep failed", exc_info=True)
            if _stop.wait(settings.runner_heartbeat_s):
                break
        with contextlib.suppress(Exception):  # the TTL removes it anyway
            registry.remove(_info.id)  # type: ignore[union-attr]

    threading.Thread(target=beat, name="runner-heartbeat", daemon=True).start()


@worker_shutting_down.connect
def _drain(**_: Any) -> None:
    """SIGTERM (warm shutdown): Celery stops taking messages and gives back the ones it
    had prefetched; the running attempts get ``drain_s`` to finish, then hand their jobs
    back (``workers/attempt.py`` reads the deadline through its channel)."""
    settings = Settings.from_env()
    runner_id = os.environ.get("LAUNCHBAY_RUNNER_ID")
    if not runner_id:
        return
    try:
        r = connect(settings.effective_redis_url)
        deadline = time.time() + settings.drain_s
        r.set(drain_key(runner_id), f"{deadline:.3f}", ex=int(settings.drain_s + 3600))
        if _info is not None:
            _info.draining = True
        log.warning(
            "draining: running jobs get %g s to finish, then go back to the queue",
            settings.drain_s,
        )
    except Exception:  # without Redis the leases hand the jobs back, later
        log.warning("could not announce the drain", exc_info=True)


@worker_shutdown.connect
def _unregister(**_: Any) -> None:
    _stop.set()
