"""The Celery app, configured for long-running jobs."""

from __future__ import annotations

from celery import Celery

from orchestrator.broker import PRIORITY_STEPS, TRANSPORT
from orchestrator.settings import Settings

RUN_JOB = "launchbay.run_job"
RECONCILE = "launchbay.reconcile"
RETENTION = "launchbay.retention"
REMOVE_ORPHANS = "launchbay.remove_orphans"
FIRE_SCHEDULES = "launchbay.fire_schedules"


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    url = settings.effective_redis_url
    app = Celery("launchbay", broker=url, include=include or [])
    if url.split("://", 1)[0] in ("redis", "rediss"):
        # kombu's Redis transport, with one Redis client per channel (orchestrator/broker.py)
        app.conf.broker_transport = TRANSPORT
    app.conf.update(
        # A message only delivers a job to a runner; the store says who runs it. It is
        # acked when its task starts (the claim is the task's first step), so a running
        # job holds no message: a worker that dies mid-run is found by its lease. A
        # message a worker took but had not started when it died (SIGKILL; a clean stop
        # gives it back) is re-sent by the reconciler's lost-message sweep: the job is
        # queued in the store and its message is in no queue (Dispatcher.resend_lost,
        # LAUNCHBAY_RESEND_AFTER_S). A copy that turns up later finds the job claimed and
        # does nothing (compare-and-set).
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        # A busy worker takes no message ahead of time, so a job of a higher priority
        # (issue 14) sent while every slot is busy starts before one sent earlier.
        worker_disable_prefetch=not settings.worker_prefetch,
        broker_transport_options={
            # One Redis list per priority (0-9), served highest first (kombu: 0 first).
            "priority_steps": list(PRIORITY_STEPS),
            # No unacked hash and visibility timeout: the sweep above covers what they
            # did (and a broker that lost its data besides), and they cost two Redis
            # round trips per message in the worker's consumer, waited for in line with
            # every delivery: 0.3 ms of worker CPU and 15% of throughput (bench/jobs.py).
            "ack_emulation": False,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="lb.default",
        # Task events cost about 1 ms of worker CPU per job (PERF.md): they flow only while
        # Flower watches (it broadcasts ``enable_events`` every few seconds while it runs).
        # No "task-sent" event: the store, not Flower, tells what is queued.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        beat_schedule={
            "reconcile": {
                "task": RECONCILE,
                "schedule": settings.reconcile_interval_s,
                "options": {"queue": "lb.maintenance", "expires": 60},
            },
            # Cron schedules (orchestrator/schedules.py): any number of beats may send it.
            "fire-schedules": {
                "task": FIRE_SCHEDULES,
                "schedule": settings.schedule_tick_s,
                "options": {"queue": "lb.maintenance", "expires": 60},
            },
            "remove-orphans": {
                "task": REMOVE_ORPHANS,
                "schedule": 60.0,
                "options": {"queue": "lb.maintenance", "expires": 120},
            },
            "retention": {
                "task": RETENTION,
                "schedule": 24 * 3600.0,
                "options": {"queue": "lb.maintenance", "expires": 3600},
            },
        },
    )
    return app
