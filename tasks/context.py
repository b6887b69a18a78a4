"""Per-process worker state, built lazily after the prefork pool has forked."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from orchestrator.artifacts import ArtifactStore
from orchestrator.capabilities import worker_meets
from orchestrator.celery_app import RUN_JOB
from orchestrator.dispatch import Dispatcher
from orchestrator.events import Events, connect
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from workers.channels.direct import DirectChannel
from workers.launchers import LauncherSet

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.settings.effective_database_url)

    @cached_property
    def events(self) -> Events:
        return Events(
            connect(self.settings.effective_redis_url),
            logs_dir=self.settings.logs_dir,
            log_buffer_lines=self.settings.log_buffer_lines,
        )

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from tasks.app import app

        return Dispatcher(self.settings, self.store, self.events, app)

    @cached_property
    def launchers(self) -> LauncherSet:
        return LauncherSet(self.settings)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts_dir)

    @cached_property
    def channel(self) -> DirectChannel:
        runner_id = self.settings.runner_id or os.environ["LAUNCHBAY_RUNNER_ID"]
        return DirectChannel(self.dispatcher, runner_id, self.artifacts)

    def run(self, job_id: str, attempt: int | None) -> str:
        """Claim the attempt a message names and run it; the outcome, or why not."""
        try:
            return self.channel.run(job_id, attempt, self.launchers)
        finally:
            # Nothing staged outlives the task (a prefork child may be recycled after it);
            # a no-op without a round trip when every change was flushed already.
            try:
                self.events.flush()
            except Exception:  # Redis down: the store holds the truth (logged as usual)
                log.exception("job %s: events not published at the task's end", job_id)

    def meets(self, demands: dict[str, Any]) -> bool:
        """Whether this worker meets the demands a message carries (capabilities)."""
        s = self.settings
        return worker_meets(s.worker_project_dirs, s.worker_capabilities, demands)

    def pass_on(
        self, request: Any, job_id: str, attempt: int | None, demands: dict[str, Any]
    ) -> str:
        """Send the message back to its queue for another worker (bounded by its expiry,
        the job's match deadline, after which the reconciler fails the job)."""
        from tasks.app import app

        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
        app.send_task(
            RUN_JOB,
            args=[job_id, attempt],
            kwargs={"demands": demands},
            task_id=getattr(request, "id", None),
            queue=queue,
            countdown=1,
            expires=getattr(request, "expires", None),
        )
        return "passed on (this worker does not meet its demands)"


_ctx: tuple[int, WorkerContext] | None = None


def worker_context() -> WorkerContext:
    """This process's context; rebuilt in a forked child so no connection is shared."""
    global _ctx
    if _ctx is None or _ctx[0] != os.getpid():
        settings = Settings.from_env()
        settings.ensure_dirs()
        _ctx = (os.getpid(), WorkerContext(settings))
    return _ctx[1]
