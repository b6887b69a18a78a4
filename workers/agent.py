"""The remote HTTP agent: runs jobs on a host that cannot reach Redis or the database.

    python -m workers.agent --url http://api:8000 --executors builtin,process --tags gpu

It registers with the launcher API, long-polls for jobs it can run, and drives each one with
the same launchers a Celery worker uses (``workers/launchers``). What ``AttemptRunner`` does
against the store and Redis, the agent does over HTTP: ``started``, batched ``logs``,
``progress``, ``completed``/``failed``, artifact uploads, and a heartbeat that renews its
leases and brings cancels back. The server's store decides every transition; a 409 means the
job is no longer this agent's (its lease expired and it was re-queued) and the agent stops it
without reporting.

Signals: the first SIGTERM/SIGINT drains (no new jobs, running ones finish); a second one
stops the running jobs, reports them failed (re-queued when attempts remain) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from orchestrator.client import (
    ApiError,
    ClientError,
    Conflict,
    LaunchbayClient,
    NotFound,
    ServerUnreachable,
    Unauthorized,
)
from orchestrator.errors import RunnerLaunchError
from orchestrator.job import EXECUTORS, Job, StepResult
from orchestrator.settings import Settings
from workers.launchers import LaunchContext, Launcher, LauncherSet, Outcome

log = logging.getLogger("launchbay.agent")

PROGRESS_PREFIX = "::progress "  # the same stdout protocol AttemptRunner parses
RESULT_PREFIX = "::result "
_FLUSH_S = 0.25
_LOG_BATCH = 2000
_MAX_BUFFERED = 50_000
_FINAL_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)
_CHUNK = 1 << 16


# ---------------------------------------------------------------- reporting


class _Reporter:
    """The launcher's Reporter: buffers logs and progress; the attempt's watcher flushes."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.lines: list[dict[str, Any]] = []
        self.dropped = 0
        self.steps: list[StepResult] = []
        self.result_value: Any = None
        self.has_result = False
        self._progress: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        line = line.rstrip("\r\n")
        if line.startswith(PROGRESS_PREFIX):
            parts = line[len(PROGRESS_PREFIX) :].strip().split(" ", 1)
            with contextlib.suppress(ValueError):
                self.progress(float(parts[0]), parts[1] if len(parts) > 1 else "")
        elif line.startswith(RESULT_PREFIX):
            with contextlib.suppress(ValueError):
                self.result(json.loads(line[len(RESULT_PREFIX) :]))
        with self._lock:
            self.lines.append(
                {
                    "stream": stream if stream in ("stdout", "stderr") else "stdout",
                    "step": step,
                    "line": line,
                }
            )
            if len(self.lines) > _MAX_BUFFERED:  # server unreachable for long: keep the tail
                self.dropped += len(self.lines) - _MAX_BUFFERED
                del self.lines[: len(self.lines) - _MAX_BUFFERED]

    def progress(self, percent: float, message: str = "") -> None:
        with self._lock:
            self._progress = (max(0.0, min(100.0, float(percent))), message[:2000])

    def result(self, value: Any) -> None:
        self.result_value, self.has_result = value, True

    def step(self, result: StepResult) -> None:
        with self._lock:
            self.steps = [s for s in self.steps if s.name != result.name] + [result]

    def flush(self) -> None:
        """Send buffered lines, then the latest progress (logs before what they led to)."""
        with self._flushing:
            while True:
                with self._lock:
                    batch = self.lines[:_LOG_BATCH]
                    del self.lines[:_LOG_BATCH]
                    if self.dropped and batch:
                        batch.insert(
                            0,
                            {
                                "stream": "system",
                                "step": None,
                                "line": f"[agent dropped {self.dropped} log lines while the "
                                f"server was unreachable]",
                            },
                        )
                        self.dropped = 0
                if not batch:
                    break
                if not self._send("logs", {"lines": batch}):
                    with self._lock:  # keep them for the next flush
                        self.lines[:0] = [b for b in batch if b["stream"] != "system"]
                    return
            with self._lock:
                pending, self._progress = self._progress, None
            if pending is not None and not self._send(
                "progress", {"percent": pending[0], "message": pending[1]}
            ):
                with self._lock:
                    self._progress = self._progress or pending

    def _send(self, what: str, body: dict[str, Any]) -> bool:
        """False when it should be retried later; True when sent (or pointless to retry)."""
        try:
            answer = self.attempt.post(what, body)
        except (ServerUnreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status < 500:
                log.error("job %s: the server refused %s: %s", self.attempt.job.id, what, exc)
                return True
            log.warning(
                "job %s: could not send %s (%s); will retry", self.attempt.job.id, what, exc
            )
            return False
        if answer is not None and answer.get("cancel"):
            self.attempt.request_cancel()
        return True


# ---------------------------------------------------------------- one attempt


class _Attempt:
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
        reporter = _Reporter(self)
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

    def _watch(self, reporter: _Reporter, done: threading.Event, started_at: list[float]) -> None:
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
        reporter: _Reporter,
    ) -> None:
        final = "lost"
        if not self.lost.is_set():
            if self._handle is not None:
                launch_error = self._upload_artifacts(launcher) or launch_error
            body: dict[str, Any] = {}
            if reporter.steps:
                body["steps"] = [s.model_dump(mode="json") for s in reporter.steps]
            result = outcome.result if outcome is not None else None
            if reporter.has_result:
                result = reporter.result_value
            if result is not None:
                body["result"] = result
            code = outcome.exit_code if outcome is not None else None
            if self.timed_out:
                what, body = (
                    "failed",
                    {
                        **body,
                        "timed_out": True,
                        "exit_code": code,
                        "error": f"timed out after {self.job.spec.timeout_s:g} s",
                    },
                )
            elif self.cancel_asked.is_set():
                what, body = "failed", {**body, "error": "cancelled"}
            elif self.abort_reason:
                what, body = "failed", {**body, "error": self.abort_reason}
            elif launch_error:
                what, body = "failed", {**body, "error": launch_error}
            elif outcome is not None and outcome.ok:
                what = "completed"
                body = {**body, "exit_code": 0}
                if outcome.resource_usage:
                    body["resource_usage"] = outcome.resource_usage
            else:
                what, body = (
                    "failed",
                    {
                        **body,
                        "exit_code": code,
                        "error": (
                            (outcome.error if outcome else None) or f"exited with code {code}"
                        ),
                    },
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


# ---------------------------------------------------------------- the agent


class Agent:
    """Registers, polls while it has free slots, runs jobs, heartbeats until told to stop."""

    def __init__(
        self,
        client: LaunchbayClient,
        settings: Settings,
        *,
        executors: list[str],
        tags: list[str],
        capacity: int = 1,
        hostname: str | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.launchers = LauncherSet(settings)
        self.executors, self.tags, self.capacity = executors, tags, capacity
        self.hostname = hostname or socket.gethostname()
        self.id: str = ""
        self.poll_timeout_s = 30.0
        self.heartbeat_s = 5.0
        self.draining = threading.Event()  # no new jobs
        self.forced = threading.Event()  # stop running jobs too
        self._slots = threading.BoundedSemaphore(capacity)
        self._attempts: dict[str, _Attempt] = {}
        self._cond = threading.Condition()
        self._closing = threading.Event()  # unregistering: never register again

    # -------------------------------------------------- registration

    def register(self) -> None:
        """Register (again, under the same id once it has one)."""
        body: dict[str, Any] = {
            "executors": self.executors,
            "tags": self.tags,
            "capacity": self.capacity,
            "hostname": self.hostname,
            "pid": os.getpid(),
        }
        if self.id:
            body["launcher_id"] = self.id
        got = self.client.request_json("POST", "/launcher/register", json=body)
        first = not self.id
        self.id = got["launcher_id"]
        self.poll_timeout_s = float(got["poll_timeout_s"])
        self.heartbeat_s = float(got["heartbeat_interval_s"])
        if first:
            log.info(
                "registered as %s at %s (executors %s, tags %s, capacity %d)",
                self.id,
                self.client.url,
                ",".join(self.executors),
                ",".join(self.tags) or "-",
                self.capacity,
            )
        else:
            log.warning("registration had expired; registered again as %s", self.id)

    def _register_until_ok(self) -> bool:
        delay = 0.5
        while not self.draining.is_set():
            try:
                self.register()
                return True
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                log.warning("cannot register yet (%s); retrying in %g s", exc, delay)
                self.draining.wait(delay)
                delay = min(delay * 2, 10)
        return False

    # -------------------------------------------------- main loop

    def run(self) -> int:
        """Run until drained; returns the exit status."""
        if not self._register_until_ok():
            return 0
        heart_stop = threading.Event()
        threading.Thread(
            target=self._heartbeat, args=(heart_stop,), name="heartbeat", daemon=True
        ).start()
        poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        poller.start()
        self.draining.wait()
        log.info("draining: no new jobs; waiting for %d running", len(self._attempts))
        with self._cond:
            while self._attempts:
                if self.forced.is_set():
                    for a in list(self._attempts.values()):
                        if a.abort_reason is None:
                            a.abort(f"agent {self.id} stopped while running the job")
                self._cond.wait(0.5)
        heart_stop.set()
        self._closing.set()
        try:
            self.client.request(
                "POST", "/launcher/unregister", json={"launcher_id": self.id}, timeout=5
            )
        except ClientError as exc:
            log.warning("could not unregister: %s", exc)
        poller.join(timeout=self.poll_timeout_s + 5)
        log.info("stopped")
        return 0

    def drain(self) -> None:
        self.draining.set()

    def force(self) -> None:
        self.forced.set()
        self.draining.set()
        with self._cond:
            self._cond.notify_all()

    def _poll_loop(self) -> None:
        backoff = 0.5
        while not self.draining.is_set():
            if not self._slots.acquire(timeout=0.5):
                continue
            job: Job | None = None
            try:
                job = self._poll_once()
                backoff = 0.5
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, NotFound):
                    self._try_register()
                else:
                    log.warning("poll failed (%s); retrying in %g s", exc, backoff)
                    self.draining.wait(backoff)
                    backoff = min(backoff * 2, 10)
            except Exception:
                log.exception("poll failed")
                self.draining.wait(backoff)
            if job is None:
                self._slots.release()
                continue
            if self.draining.is_set():
                self._give_back(job)
                self._slots.release()
                continue
            self._start(job)

    def _poll_once(self) -> Job | None:
        wait = self.poll_timeout_s
        resp = self.client.request(
            "GET",
            "/launcher/jobs",
            params={"launcher_id": self.id, "wait": wait},
            timeout=wait + 15,
        )
        if resp.status_code == 204:
            return None
        return Job.model_validate(resp.json()["job"])

    def _start(self, job: Job) -> None:
        attempt = _Attempt(self, job)
        with self._cond:
            self._attempts[job.id] = attempt

        def run() -> None:
            try:
                attempt.run()
            finally:
                with self._cond:
                    if self._attempts.get(job.id) is attempt:
                        del self._attempts[job.id]
                    self._cond.notify_all()
                self._slots.release()

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()

    def _give_back(self, job: Job) -> None:
        try:
            self.client.request(
                "POST",
                f"/launcher/jobs/{job.id}/release",
                json={"launcher_id": self.id, "attempt": job.attempt},
            )
            log.info("gave job %s back: draining", job.id)
        except ClientError as exc:
            log.warning("could not give job %s back (%s); its lease will expire", job.id, exc)

    def _try_register(self) -> None:
        if self._closing.is_set():
            return
        try:
            self.register()
        except ClientError as exc:
            log.warning("re-registration failed: %s", exc)
            self.draining.wait(1)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            with self._cond:
                attempts = dict(self._attempts)
            try:
                got = self.client.request_json(
                    "POST",
                    "/launcher/heartbeat",
                    json={"launcher_id": self.id, "jobs": list(attempts)},
                    timeout=10,
                )
            except NotFound:
                self._try_register()
                continue
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for job_id in got.get("cancel", []):
                if job_id in attempts and not attempts[job_id].cancel_asked.is_set():
                    log.info("job %s: cancel asked; stopping it", job_id)
                    attempts[job_id].request_cancel()
            for job_id in got.get("lost", []):
                if job_id in attempts:
                    attempts[job_id].lose()


# ---------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"launchbay agent: {message}\n")


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m workers.agent",
        description="Run Launchbay jobs on this host, pulled over HTTP.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("LAUNCHBAY_URL", "http://127.0.0.1:8000"),
        help="API root [LAUNCHBAY_URL]",
    )
    p.add_argument(
        "--token", default=os.environ.get("LAUNCHBAY_TOKEN"), help="bearer token [LAUNCHBAY_TOKEN]"
    )
    p.add_argument(
        "--executors",
        default="builtin,process",
        help="comma list of builtin,process,docker,kubernetes",
    )
    p.add_argument("--tags", default="", help="comma list of runner tags")
    p.add_argument("--capacity", type=int, default=1, help="jobs run at once")
    p.add_argument("--hostname", default=None, help="name shown in the workers list")
    p.add_argument("--home", default=None, help="state folder for workspaces [LAUNCHBAY_HOME]")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    executors = _csv(args.executors)
    unknown = [e for e in executors if e not in EXECUTORS]
    if not executors or unknown:
        parser.error(
            f"--executors: unknown {','.join(unknown) or '(none given)'}; "
            f"choose from {','.join(EXECUTORS)}"
        )
    if args.capacity < 1:
        parser.error("--capacity must be at least 1")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s agent %(levelname)s %(message)s"
    )
    settings = Settings.from_env()
    if args.home:
        settings = settings.model_copy(update={"home": Path(args.home)})
    settings.ensure_dirs()
    client = LaunchbayClient(args.url, args.token)
    agent = Agent(
        client,
        settings,
        executors=executors,
        tags=_csv(args.tags),
        capacity=args.capacity,
        hostname=args.hostname,
    )

    def on_signal(_signum: int, _frame: object) -> None:
        if agent.draining.is_set():
            agent.force()
        else:
            agent.drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    except (Unauthorized, ApiError) as exc:
        print(f"launchbay agent: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
