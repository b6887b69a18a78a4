"""The Celery app, configured for long-running jobs."""

from __future__ import annotations

from celery import Celery

from orchestrator.settings import Settings

RUN_JOB = "launchbay.run_job"
RECONCILE = "launchbay.reconcile"
RETENTION = "launchbay.retention"
REMOVE_ORPHANS = "launchbay.remove_orphans"


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    app = Celery("launchbay", broker=settings.effective_redis_url, include=include or [])
    app.conf.update(
        # A job is acked when it ends, and goes back to the queue if its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis re-delivers unacked messages after the visibility timeout; our store's
        # lease reconciler handles lost runners, so make re-delivery of live jobs rare.
        # A redelivered message finds its job claimed and does nothing (compare-and-set).
        broker_transport_options={"visibility_timeout": 12 * 3600},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="lb.default",
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        beat_schedule={
            "reconcile": {
                "task": RECONCILE,
                "schedule": settings.reconcile_interval_s,
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
