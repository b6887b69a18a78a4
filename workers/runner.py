"""The attempt runner: one attempt of one job, from claim to the final compare-and-set.

Used by the Celery ``run_job`` task and by the remote HTTP agent's local execution. The
launcher drives the execution; this class owns everything around it: the claim, the lease,
cancellation, the run-time limit, launch retries, logs and progress, artifacts, retries of
failed attempts and the terminal transition.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.artifacts import ArtifactStore
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import RunnerLaunchError
from orchestrator.job import Job, JobStatus, StepResult
from workers.directives import apply_directive
from workers.launchers import LaunchContext, LauncherSet, Outcome
from workers.verdict import decide, result_of

log = logging.getLogger(__name__)

_LOG_FLUSH_S = 0.05
_LOG_FLUSH_LINES = 500
_CANCEL_POLL_S = 0.2
_PROGRESS_EVERY_S = 0.05


@dataclass
class _Reporter:
    """Collects what the launcher reports; the watcher thread flushes it."""

    runner: AttemptRunner
    job: Job
    lines: list[tuple[str, str | None, str]] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    result_value: Any = None
    has_result: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _last_progress: float = 0.0
    _pending: tuple[float, str] | None = None

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        line = line.rstrip("\r\n")
        apply_directive(line, self)
        with self.lock:
            self.lines.append((stream, step, line))
            full = len(self.lines) >= _LOG_FLUSH_LINES
        if full:
            self._flush_logs()

    def flush(self, *, final: bool = False) -> None:
        """Send buffered log lines, and a coalesced progress update once it is due."""
        self._flush_logs()
        if self._pending is not None and (
            final or time.monotonic() - self._last_progress >= _PROGRESS_EVERY_S
        ):
            self._send_progress()

    def _flush_logs(self) -> None:
        with self.lock:
            batch, self.lines = self.lines, []
        if batch:
            self.runner.events.append_logs(self.job.id, batch)

    def progress(self, percent: float, message: str = "") -> None:
        percent = max(0.0, min(100.0, float(percent)))
        with self.lock:
            self._pending = (percent, message)
        # Floods of progress lines are coalesced: the latest one is kept and sent by the
        # watcher's next flush, so the last word always goes out (100 % at once).
        if percent >= 100 or time.monotonic() - self._last_progress >= _PROGRESS_EVERY_S:
            self._send_progress()

    def _send_progress(self) -> None:
        with self.lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        percent, message = pending
        self._last_progress = time.monotonic()
        self._flush_logs()  # logs before the progress they led to
        self.runner.dispatcher.store.set_progress(self.job.id, self.job.attempt, percent, message)
        self.runner.dispatcher.events.publish(
            self.job.id,
            "progress",
            {"percent": percent, "message": message, "attempt": self.job.attempt},
        )

    def result(self, value: Any) -> None:
        self.result_value, self.has_result = value, True

    def step(self, result: StepResult) -> None:
        self.steps = [s for s in self.steps if s.name != result.name] + [result]
        self.runner.dispatcher.store.update_fields(
            self.job.id,
            self.job.attempt,
            steps=[s.model_dump(mode="json") for s in self.steps],
        )


class AttemptRunner:
    def __init__(
        self,
        dispatcher: Dispatcher,
        launchers: LauncherSet,
        runner_id: str,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.settings = dispatcher.settings
        self.events = dispatcher.events
        self.launchers = launchers
        self.runner_id = runner_id
        self.artifacts = artifacts or ArtifactStore(self.settings.artifacts_dir)

    # ------------------------------------------------------------------ entry

    def run(self, job_id: str, attempt: int | None = None) -> str:
        """Run ``job_id`` if this runner wins its claim. Returns the final status or why not."""
        store = self.dispatcher.store
        job = store.find(job_id)
        if job is None:
            return "missing"
        if job.status != JobStatus.queued or (attempt is not None and job.attempt != attempt):
            return f"skipped ({job.status}, attempt {job.attempt})"
        claimed = store.claim(job_id, self.runner_id, self.settings.lease_s)
        if claimed is None:
            return "skipped (claimed elsewhere)"
        self.dispatcher.announce(claimed)
        try:
            return self._run_claimed(claimed)
        finally:
            self.events.forget(job_id)

    # ------------------------------------------------------------------ the attempt

    def _run_claimed(self, job: Job) -> str:
        spec = job.spec
        workspace = self.settings.workspaces_dir / job.id / f"a{job.attempt}"
        workspace.mkdir(parents=True, exist_ok=True)
        ctx = LaunchContext(
            job_id=job.id,
            attempt=job.attempt,
            runner_id=self.runner_id,
            spec=spec,
            workspace=workspace,
            settings=self.settings,
        )
        reporter = _Reporter(self, job)
        launcher = self.launchers.get(spec.executor)
        state: dict[str, Any] = {
            "handle": None,
            "timed_out": False,
            "lost": False,
            "started_at": None,
        }
        stop_watch = threading.Event()
        stopping = threading.Lock()

        def stop_once(grace: float) -> None:
            if not stopping.acquire(blocking=False):
                return
            handle = state["handle"]
            if handle is not None:
                threading.Thread(target=launcher.stop, args=(handle, grace), daemon=True).start()

        def watch() -> None:
            next_lease = time.monotonic() + self.settings.lease_s / 3
            next_cancel = 0.0
            while not stop_watch.wait(_LOG_FLUSH_S):
                try:
                    reporter.flush()
                    now = time.monotonic()
                    if now >= next_cancel:
                        next_cancel = now + _CANCEL_POLL_S
                        if not ctx.cancel.is_set() and self.events.cancel_flagged(job.id):
                            ctx.cancel.set()
                    if ctx.cancel.is_set():
                        stop_once(spec.grace_s)
                    t0 = state["started_at"]
                    if (
                        spec.timeout_s
                        and t0
                        and now - t0 > spec.timeout_s
                        and not state["timed_out"]
                    ):
                        state["timed_out"] = True
                        ctx.cancel.set()
                        stop_once(min(spec.grace_s, 5.0))
                    if now >= next_lease:
                        next_lease = now + self.settings.lease_s / 3
                        if not self.dispatcher.store.renew_lease(
                            job.id, job.attempt, self.settings.lease_s
                        ):
                            # Someone else owns this job now (reconciler): stand down.
                            state["lost"] = True
                            ctx.cancel.set()
                            stop_once(spec.grace_s)
                except Exception:  # keep watching; a Redis blip must not orphan the job
                    log.exception("watcher error for job %s", job.id)

        watcher = threading.Thread(target=watch, name=f"watch-{job.id}", daemon=True)
        watcher.start()
        outcome: Outcome | None = None
        launch_error: str | None = None
        try:
            try:
                state["handle"] = self._launch(launcher, ctx)
            except RunnerLaunchError as exc:
                launch_error = str(exc)
            if state["handle"] is not None:
                state["started_at"] = time.monotonic()
                running = self.dispatcher.store.start(job.id, job.attempt, self.settings.lease_s)
                if running is not None:
                    self.dispatcher.announce(running)
                    job = running
                else:
                    ctx.cancel.set()
                    stop_once(0)
                if ctx.cancel.is_set():
                    stop_once(spec.grace_s)
                try:
                    outcome = launcher.follow(ctx, state["handle"], reporter)
                except Exception as exc:
                    log.exception("launcher %s failed following job %s", launcher.name, job.id)
                    outcome = Outcome(exit_code=None, error=f"{type(exc).__name__}: {exc}")
        finally:
            stop_watch.set()
            watcher.join(timeout=5)
            reporter.flush(final=True)
        return self._finish(job, launcher, ctx, state, outcome, launch_error, reporter)

    def _launch(self, launcher: Any, ctx: LaunchContext) -> str | None:
        tries = self.settings.launch_retries
        for n in range(1, tries + 1):
            if ctx.cancel.is_set() or self.events.cancel_flagged(ctx.job_id):
                ctx.cancel.set()
                return None
            try:
                return launcher.start(ctx)  # type: ignore[no-any-return]
            except RunnerLaunchError as exc:
                exc.attempt = n
                if not exc.transient or n == tries:
                    raise RunnerLaunchError(
                        launcher.name, n, exc.cause, transient=exc.transient
                    ) from exc
                log.warning(
                    "transient launch error for %s (try %d/%d): %s", ctx.job_id, n, tries, exc
                )
            except Exception as exc:
                raise RunnerLaunchError(launcher.name, n, exc) from exc
            if ctx.cancel.wait(self.settings.launch_backoff_s * 2 ** (n - 1)):
                return None
        return None

    def _finish(
        self,
        job: Job,
        launcher: Any,
        ctx: LaunchContext,
        state: dict[str, Any],
        outcome: Outcome | None,
        launch_error: str | None,
        reporter: _Reporter,
    ) -> str:
        store = self.dispatcher.store
        handle = state["handle"]
        fields: dict[str, Any] = {}
        if handle is not None:
            try:
                collected = [
                    self.artifacts.save(job.id, name, path)
                    for name, path in launcher.collect_artifacts(ctx, handle)
                ]
                if collected:
                    fields["artifacts"] = [a.model_dump(mode="json") for a in collected]
            except Exception as exc:
                log.exception("artifact collection failed for %s", job.id)
                launch_error = launch_error or f"artifact collection failed: {exc}"
        if reporter.steps:
            fields["steps"] = [s.model_dump(mode="json") for s in reporter.steps]
        result = result_of(outcome, reporter.has_result, reporter.result_value)
        if result is not None:
            fields["result"] = result
        if outcome and outcome.resource_usage:
            fields["resource_usage"] = outcome.resource_usage

        status: JobStatus | None = None
        code: int | None = None
        error: str | None = None
        if not state["lost"]:  # someone else owns the job now: leave it to them
            v = decide(
                outcome,
                launch_error,
                timed_out=state["timed_out"],
                timeout_s=job.spec.timeout_s,
                cancelled=ctx.cancel.is_set(),
            )
            status, code, error = v.status, v.exit_code, v.error

        final = "lost"
        if status is not None:
            # A launch error was already retried by _launch; only a job's own failure
            # earns another attempt.
            now = self.dispatcher.end_attempt(
                job,
                status,
                exit_code=code,
                error=error,
                fields=fields,
                may_retry=launch_error is None,
            )
            if now is None:
                final = store.get(job.id).status.value
            elif now.status == JobStatus.queued:
                final = "requeued"
            else:
                final = now.status.value
        self._cleanup(launcher, ctx, handle, final)
        return final

    def _cleanup(self, launcher: Any, ctx: LaunchContext, handle: str | None, final: str) -> None:
        policy = ctx.spec.cleanup
        if policy == "never" or (policy == "on_success" and final != JobStatus.succeeded):
            return
        try:
            launcher.cleanup(ctx, handle)
        except Exception:
            log.exception("cleanup failed for job %s", ctx.job_id)
        shutil.rmtree(ctx.workspace, ignore_errors=True)
