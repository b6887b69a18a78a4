"""The Celery app that workers and beat run: ``celery -A tasks.app worker``."""

from __future__ import annotations

import os

from orchestrator.celery_app import make_celery
from orchestrator.runners import new_runner_id
from orchestrator.settings import Settings

# Every worker host gets one runner id; forked pool children inherit it.
os.environ.setdefault("LAUNCHBAY_RUNNER_ID", new_runner_id())

app = make_celery(Settings.from_env(), include=["tasks.jobs", "tasks.maintenance"])

from tasks import lifecycle  # noqa: E402,F401  (connects worker signals)
