"""One attempt of one job on the agent: launch, follow, watch, report, clean up."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.client import ApiError, ClientError, Conflict, NotFound, ServerUnreachable
from orchestrator.errors import RunnerLaunchError
from orchestrator.job import Job
from workers.agent.reporter import Reporter
from workers.agent.verdict import final_report
from workers.launchers import LaunchContext, Launcher, Outcome

if TYPE_CHECKING:
    from workers.agent.daemon import Agent

log = logging.getLogger("launchbay.agent")

_FLUSH_S = 0.25
_FINAL_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)
_CHUNK = 1 << 16


class Attempt:
    """One attempt of one job on this agent, from the claim to the final report."""

    def __init__(self, agent: Agent, job: Job) -> None:
        self.agent = agent
        self.job = job
        workspace = agent.settings.workspaces_dir / job.id / f"a{job.attempt}"
        self.ctx = LaunchContext(
            job_id=job.id,
            attempt=job.attempt,
            runner_id=agent.id,
            spec=job.spec,
            workspace=workspace,
            settings=agent.settings,
        )
        self.cancel_asked = threading.Event()
        self.lost = threading.Event()
        self.abort_reason: str | None = None
        self.timed_out = False
        self._stopping = threading.Lock()
        self._handle: str | None = None
        self._launcher: Launcher | None = None

    # -------------------------------------------------- signals from outside

    def request_cancel(self) -> None:
        """The server says its cancel was asked."""
        self.cancel_asked.set()
        self.ctx.cancel.set()

    def lose(self) -> None:
        """The job is no longer ours: stop it and report nothing."""
        if not self.lost.is_set():
            log.warning(
                "job %s attempt %d is no longer held by this agent; stopping it",
                self.job.id,
                self.job.attempt,
            )
        self.lost.set()
        self.ctx.cancel.set()

    def abort(self, reason: str) -> None:
        """The agent is shutting down hard."""
        self.abort_reason = reason
        self.ctx.cancel.set()

    # -------------------------------------------------- HTTP

    def post(
        self, what: str, body: dict[str, Any], *, final: bool = False
    ) -> dict[str, Any] | None:
        """POST ``/launcher/jobs/{id}/{what}``; ``None`` when the job is no longer ours."""
        payload = {"launcher_id": self.agent.id, "attempt": self.job.attempt, **body}
        delays: Iterator[float] = iter(_FINAL_RETRY_DELAYS if final else ())
        while True:
            try:
                return self.agent.client.request_json(  # type: ignore[no-any-return]
                    "POST", f"/launcher/jobs/{self.job.id}/{what}", json=payload
                )
            except (Conflict, NotFound) as exc:
                log.warning("job %s: %s refused: %s", self.job.id, what, exc)
                self.lose()
                return None
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning(
                    "job %s: %s failed (%s); retrying in %g s", self.job.id, what, exc, delay
                )
                time.sleep(delay)

    # -------------------------------------------------- the run

    def run(self) -> None:
        """Run the attempt to its final report; never raises."""
        try:
            self._run()
        except Exception as exc:  # the agent must outlive any one job
            log.exception("job %s failed inside the agent", self.job.id)
            if not self.lost.is_set():
                try:
                    self.post(
                        "failed", {"error": f"agent error: {type(exc).__name__}: {exc}"}, final=True
                    )
                except ClientError:
                    log.exception("could not report job %s", self.job.id)

    def _stop_once(self, grace: float) -> None:
        if self._handle is None or self._launcher is None:
            return
        if not self._stopping.acquire(blocking=False):
            return
        threading.Thread(
            target=self._launcher.stop,
            args=(self._handle, grace),
            name=f"stop-{self.job.id}",
            daemon=True,
        ).start()

    def _run(self) -> None:
        spec = self.job.spec
        log.info("job %s attempt %d: %s", self.job.id, self.job.attempt, spec.executor)
        self.ctx.workspace.mkdir(parents=True, exist_ok=True)
        try:
            launcher = self.agent.launchers.get(spec.executor)
        except Exception as exc:
            self.post(
                "failed",
                {"error": f"this agent cannot run {spec.executor} jobs: {exc}"},
                final=True,
            )
            return
        self._launcher = launcher
        reporter = Reporter(self)
        outcome: Outcome | None = None
        launch_error: str | None = None
        done = threading.Event()
        started_at: list[float] = []
        watcher = threading.Thread(
            target=self._watch,
            args=(reporter, done, started_at),
            name=f"watch-{self.job.id}",
            daemon=True,
        )
        watcher.start()
        try:
            try:
                self._handle = self._launch(launcher)
            except RunnerLaunchError as exc:
                launch_error = str(exc)
            if self._handle is not None:
                started_at.append(time.monotonic())
                try:
                    self.post("started", {}, final=True)
                except ClientError as exc:  # it runs anyway; the final report still counts
                    log.error("job %s: could not report started: %s", self.job.id, exc)
                if self.ctx.cancel.is_set():
                    self._stop_once(spec.grace_s)
                try:
                    outcome = launcher.follow(self.ctx, self._handle, reporter)
                except Exception as exc:
                    log.exception("launcher %s failed following job %s", launcher.name, self.job.id)
                    outcome = Outcome(exit_code=None, error=f"{type(exc).__name__}: {exc}")
        finally:
            done.set()
            watcher.join(timeout=10)
            if not self.lost.is_set():
                reporter.flush()
        self._finish(launcher, outcome, launch_error, reporter)

    def _watch(self, reporter: Reporter, done: threading.Event, started_at: list[float]) -> None:
        spec = self.job.spec
        while not done.wait(_FLUSH_S):
            try:
                if not self.lost.is_set():
                    reporter.flush()
                if self.ctx.cancel.is_set():
                    self._stop_once(spec.grace_s)
                if (
                    spec.timeout_s
                    and started_at
                    and not self.timed_out
                    and time.monotonic() - started_at[0] > spec.timeout_s
                ):
                    self.timed_out = True
                    self.ctx.cancel.set()
                    self._stop_once(min(spec.grace_s, 5.0))
            except Exception:  # keep watching; one failed POST must not orphan the job
                log.exception("watcher error for job %s", self.job.id)

    def _launch(self, launcher: Launcher) -> str | None:
        settings = self.agent.settings
        tries = settings.launch_retries
        for n in range(1, tries + 1):
            if self.ctx.cancel.is_set():
                return None
            try:
                return launcher.start(self.ctx)
            except RunnerLaunchError as exc:
                if not exc.transient or n == tries:
                    raise RunnerLaunchError(
                        launcher.name, n, exc.cause, transient=exc.transient
                    ) from exc
                log.warning(
                    "transient launch error for %s (try %d/%d): %s", self.job.id, n, tries, exc
                )
            except Exception as exc:
                raise RunnerLaunchError(launcher.name, n, exc) from exc
            if self.ctx.cancel.wait(settings.launch_backoff_s * 2 ** (n - 1)):
                return None
        return None

    def _finish(
        self,
        launcher: Launcher,
        outcome: Outcome | None,
        launch_error: str | None,
        reporter: Reporter,
    ) -> None:
        final = "lost"
        if not self.lost.is_set():
            if self._handle is not None:
                launch_error = self._upload_artifacts(launcher) or launch_error
            what, body = final_report(
                outcome,
                launch_error,
                reporter,
                timed_out=self.timed_out,
                timeout_s=self.job.spec.timeout_s,
                cancelled=self.cancel_asked.is_set(),
                abort_reason=self.abort_reason,
            )
            try:
                answer = self.post(what, body, final=True)
            except ClientError as exc:
                log.error(
                    "job %s: could not report %s (%s); its lease will expire",
                    self.job.id,
                    what,
                    exc,
                )
                answer = None
            final = str(answer.get("status")) if answer else "unreported"
        log.info("job %s attempt %d ended: %s", self.job.id, self.job.attempt, final)
        self._cleanup(launcher, final)

    def _upload_artifacts(self, launcher: Launcher) -> str | None:
        """Send the files matching the spec's globs; the error text if one failed."""
        try:
            found = launcher.collect_artifacts(self.ctx, self._handle)  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("artifact collection failed for %s", self.job.id)
            return f"artifact collection failed: {exc}"
        for name, path in found:
            try:
                self.agent.client.request(
                    "POST",
                    f"/launcher/jobs/{self.job.id}/artifacts",
                    params={
                        "launcher_id": self.agent.id,
                        "attempt": self.job.attempt,
                        "name": name,
                    },
                    content=_chunks(path),
                    headers={"content-type": "application/octet-stream"},
                    timeout=300,
                )
            except ClientError as exc:
                return f"artifact upload failed for {name!r}: {exc}"
        return None

    def _cleanup(self, launcher: Launcher, final: str) -> None:
        policy = self.job.spec.cleanup
        if policy == "never" or (policy == "on_success" and final != "succeeded"):
            return
        try:
            launcher.cleanup(self.ctx, self._handle)
        except Exception:
            log.exception("cleanup failed for job %s", self.job.id)
        shutil.rmtree(self.ctx.workspace, ignore_errors=True)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
