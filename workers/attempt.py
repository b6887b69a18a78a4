"""One attempt of one job, whoever pulled it: launch (with launch retries) → follow → watch
(lease, cancel, run-time limit) → artifacts → verdict → end.

A Celery worker runs it over the direct channel, a remote agent over the HTTP channel
(``workers/channels/``); the launcher (``workers/launchers/``) drives the execution. What
follows an attempt's end — a retry, a cancel that wins, the end of the job — is the core's
decision (``orchestrator/lifecycle.py``), not this module's.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from typing import Any

from orchestrator.errors import RunnerLaunchError
from orchestrator.job import Job, JobStatus, StepResult
from orchestrator.protocol import Verdict
from orchestrator.sessions import copy_parent_workspace, workspace_of
from orchestrator.settings import Settings
from workers.channels import Channel, LogBatch, Lost, Unreachable
from workers.directives import apply_directive
from workers.launchers import LaunchContext, Launcher, LauncherSet, Outcome
from workers.launchers.base import masked
from workers.per_process import of_this_process
from workers.verdict import Stop, decide, result_of

log = logging.getLogger(__name__)

_LOG_BATCH = 2000
_LOG_BATCH_BYTES = 1 << 20  # one report stays well under the API's agent body bound
_MAX_BUFFERED = 50_000  # lines kept while the channel is unreachable; the oldest go first
_ROOM_WAIT_S = 5.0  # a full buffer waits this long for the sender before dropping lines
_TIMEOUT_GRACE_S = 5.0
_SENDERS = 4  # flushes in flight at once per process (attempts' output, to the channel)


class _Sender:
    """Sends the buffered logs and progress of every attempt this process runs, when there
    is something to send: a quiet attempt costs no wake-up at all, a busy one at most one
    flush per its channel's ``flush_s`` (so lines still travel in batches), and the first
    report after a quiet spell goes out at once. One per process (:func:`_sender`), with
    a thread per flush in flight up to ``_SENDERS`` (one slow report, an agent's HTTP call
    say, does not hold up the other attempts'); idle threads wait without waking.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[_Reporter, float] = {}  # reporter → when its flush may go
        self._threads = 0
        self._idle = 0

    def wake(self, reporter: _Reporter, at: float) -> None:
        with self._cv:
            if reporter in self._due:
                return
            self._due[reporter] = at
            if self._idle == 0 and self._threads < _SENDERS:
                self._threads += 1
                threading.Thread(target=self._loop, name="attempt-sender", daemon=True).start()
            self._cv.notify()

    def forget(self, reporter: _Reporter) -> None:
        with self._cv:
            self._due.pop(reporter, None)

    def _next(self) -> _Reporter:
        """The reporter whose flush is due first, once it is due (``_cv`` held)."""
        self._idle += 1
        try:
            while True:
                now = time.monotonic()
                soonest = min(self._due, key=self._due.__getitem__, default=None)
                if soonest is not None and self._due[soonest] <= now:
                    del self._due[soonest]
                    return soonest
                self._cv.wait(None if soonest is None else self._due[soonest] - now)
        finally:
            self._idle -= 1

    def _loop(self) -> None:
        while True:
            with self._cv:
                reporter = self._next()
            try:
                reporter._send()
            except Exception:  # (the thread serves every attempt: it must outlive one)
                log.exception("sending the output of job %s failed", reporter.attempt.job.id)


def _sender() -> _Sender:
    """This process's sender."""
    return of_this_process(_Sender)


class _Watchers:
    """Starts an attempt's watcher thread when it first has something to do: its first
    cancel poll, lease renewal or run-time limit, a second or more after the start. An
    attempt that ends before then (most built-in and short jobs) never has one; one that
    runs longer gets its own thread, as before, so a slow call for one attempt (an agent's
    HTTP renewal, say) never holds up another's. Making, starting and joining a thread per
    attempt cost ~0.5 ms of each job's start-to-end on the worker (per-step timings of
    one job at a time).

    One per process (:func:`_watchers`). Its thread wakes for the soonest first duty, and
    a new attempt wakes it only if that attempt's comes sooner than the wake it has
    planned: back-to-back short jobs cost it about one wake-up per ``cancel_poll_s``."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[Attempt, float] = {}
        self._until = math.inf  # (when the thread wakes next by itself; under _cv)
        self._thread: threading.Thread | None = None

    def add(self, attempt: Attempt, at: float) -> None:
        """Start ``attempt``'s watcher at ``at`` (monotonic), unless it is removed first."""
        with self._cv:
            self._due[attempt] = at
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="attempt-watchers", daemon=True
                )
                self._thread.start()
            elif at < self._until:
                self._cv.notify()

    def remove(self, attempt: Attempt) -> bool:
        """Forget ``attempt``; False if its watcher has started already (it is then the
        attempt's to stop and join: :meth:`Attempt._unwatch`)."""
        with self._cv:
            return self._due.pop(attempt, None) is not None

    def _loop(self) -> None:
        with self._cv:
            while True:
                now = time.monotonic()
                for attempt, at in list(self._due.items()):
                    if at <= now:  # (started under the lock: remove() sees one or the other)
                        del self._due[attempt]
                        try:
                            attempt._start_watcher()
                        except Exception:  # (no thread to be had now: try again in a while)
                            log.exception("cannot start the watcher of job %s", attempt.job.id)
                            self._due[attempt] = now + 1.0
                soonest = min(self._due.values(), default=None)
                self._until = math.inf if soonest is None else soonest
                self._cv.wait(None if soonest is None else soonest - now)


def _watchers() -> _Watchers:
    """This process's watcher starter."""
    return of_this_process(_Watchers)


class _Reporter:
    """What the launcher reports (any thread); the process's sender sends it on when there
    is something to send (:class:`_Sender`), and the attempt flushes the rest at its end.

    Progress is coalesced (the latest report wins) but keeps its place in the log: it
    goes out after the lines printed before it and before the lines printed after it.
    """

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.lines: LogBatch = []
        self.dropped = 0
        self.steps: list[StepResult] = []
        self.result_value: Any = None
        self.has_result = False
        # (percent, message, how many buffered lines come before it)
        self._progress: tuple[float, str, int] | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        # Back-pressure: while the channel takes lines, a full buffer makes the launcher's
        # reader wait (and so the job's writes), instead of dropping the oldest lines.
        # Lines are dropped only while the channel is unreachable or nobody sends them.
        self._room = threading.Condition(self._lock)
        self._stalled = False
        # Set while the attempt's watcher runs: then each report wakes the sender, once
        # until it is flushed (``_queued``).
        self._sender: _Sender | None = None
        self._queued = False
        self._flushed_at = -1e9
        self.flush_s: float = getattr(attempt.channel, "flush_s", 0.05)

    # the launcher's side (workers/launchers/base.py: Reporter)

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        line = line.rstrip("\r\n")
        apply_directive(line, self)
        with self._lock:
            while len(self.lines) >= _MAX_BUFFERED and not self._stalled:
                if not self._room.wait(_ROOM_WAIT_S):
                    self._stalled = True  # nobody is sending: drop from here on
            self.lines.append((stream if stream in ("stdout", "stderr") else "stdout", step, line))
            excess = len(self.lines) - _MAX_BUFFERED
            if excess > 0:
                self._take(excess)
                self.dropped += excess
            sender = self._wake()
        if sender is not None:
            sender.wake(self, self._flushed_at + self.flush_s)

    def progress(self, percent: float, message: str = "") -> None:
        with self._lock:
            self._progress = (max(0.0, min(100.0, float(percent))), message[:2000], len(self.lines))
            sender = self._wake()
        if sender is not None:
            sender.wake(self, self._flushed_at + self.flush_s)

    def result(self, value: Any) -> None:
        self.result_value, self.has_result = value, True

    def step(self, result: StepResult) -> None:
        with self._lock:
            self.steps = [s for s in self.steps if s.name != result.name] + [result]

    # the sender's side

    def _wake(self) -> _Sender | None:
        """The sender to wake for a new report, if it is not woken already (lock held)."""
        if self._sender is None or self._queued:
            return None
        self._queued = True
        return self._sender

    def _attach(self, sender: _Sender | None) -> None:
        """Start (``sender``) or stop (``None``) waking ``sender`` for new reports."""
        with self._lock:
            old, self._sender = self._sender, sender
            self._queued = False
            due = self._wake() if (self.lines or self._progress) else None
        if old is not None and sender is None:
            old.forget(self)
        if due is not None:
            due.wake(self, self._flushed_at + self.flush_s)

    def _send(self) -> None:
        """The sender's flush: what cannot be sent now is tried again after ``flush_s``."""
        with self._lock:
            self._queued = False
            if self._sender is None:  # the watcher is done: the attempt flushes the rest
                return
        attempt = self.attempt
        if attempt.lost:
            return
        self._flushed_at = time.monotonic()
        try:
            self.flush()
        except Lost:
            attempt.lose()
            attempt._stop_once()
        except Exception:  # tried again below; a blip must not orphan the job's output
            log.exception("sending the output of job %s failed", attempt.job.id)
        with self._lock:
            sender = self._wake() if (self.lines or self._progress) else None
        if sender is not None:
            sender.wake(self, time.monotonic() + self.flush_s)

    # the flushing side (the sender, and the attempt at its end)

    def _take(self, n: int) -> LogBatch:
        """Remove the first ``n`` buffered lines (lock held), keeping progress in place."""
        batch = self.lines[:n]
        del self.lines[:n]
        if batch:
            self._room.notify_all()
        if self._progress is not None:
            p, m, at = self._progress
            self._progress = (p, m, max(0, at - len(batch)))
        return batch

    def _batch_size(self, most: int) -> int:
        """How many of the first ``most`` buffered lines fit one report (lock held)."""
        size = 0
        for n, (_stream, _step, line) in enumerate(self.lines[:most]):
            size += len(line) + 64
            if size > _LOG_BATCH_BYTES:
                return max(n, 1)
        return most

    def flush(self, *, last: bool = False) -> None:
        """Send buffered lines and the latest progress in order. What cannot be delivered
        now is kept for the next flush. ``last``: the attempt's last flush, its end follows
        at once (a progress report is stored with the end, not on its own)."""
        channel, job = self.attempt.channel, self.attempt.job
        # (together: a progress report goes out with the lines after it, one delivery)
        with self._flushing, channel.together():
            while True:
                with self._lock:
                    upto = self._progress[2] if self._progress else len(self.lines)
                    batch = self._take(self._batch_size(min(upto, _LOG_BATCH)))
                    if self.dropped and batch:
                        note = f"[{self.dropped} log lines dropped: the server was unreachable]"
                        batch.insert(0, ("system", None, note))
                        self.dropped = 0
                    due = self._progress if self._progress and self._progress[2] == 0 else None
                    if due is not None:
                        self._progress = None
                if batch:
                    try:
                        channel.logs(job, batch)
                    except Unreachable as exc:
                        log.warning("job %s: logs not sent (%s); will retry", job.id, exc)
                        self._put_back(batch, due)
                        return
                    if self._stalled:
                        with self._lock:
                            self._stalled = False
                if due is not None:
                    try:
                        channel.progress(job, due[0], due[1], last=last)
                    except Unreachable:
                        self._put_back([], due)
                        return
                elif not batch:
                    return

    def _put_back(self, batch: LogBatch, progress: tuple[float, str, int] | None) -> None:
        kept = [b for b in batch if b[0] != "system"]
        with self._lock:
            self._stalled = True  # unreachable: keep the newest lines, drop the oldest
            self._room.notify_all()
            self.lines[:0] = kept
            if self._progress is not None:
                p, m, at = self._progress
                self._progress = (p, m, at + len(kept))
            elif progress is not None:
                self._progress = (progress[0], progress[1], len(kept))


class Attempt:
    """One attempt of ``job``, already claimed by ``channel.runner_id``."""

    def __init__(
        self, channel: Channel, launchers: LauncherSet, settings: Settings, job: Job
    ) -> None:
        self.channel = channel
        self.launchers = launchers
        self.settings = settings
        self.job = job
        self.ctx = LaunchContext(
            job_id=job.id,
            attempt=job.attempt,
            runner_id=channel.runner_id,
            spec=job.spec,
            workspace=(
                workspace_of(settings.workspaces_dir, job.session_id)
                if job.session_id
                else settings.workspaces_dir / job.id / f"a{job.attempt}"
            ),
            settings=settings,
        )
        self.stop_reason: Stop | None = None
        self._reason_lock = threading.Lock()
        self._stopping = threading.Lock()
        self._handle: str | None = None
        self._launcher: Launcher | None = None
        self._started_at: float | None = None
        # The watcher (renewal, cancel poll, run-time limit): started by _Watchers when
        # first due, stopped by _unwatch at the end.
        self._watch_args: tuple[_Reporter, threading.Event, float] | None = None
        self._watcher: threading.Thread | None = None

    # -------------------------------------------------- signals (any thread)

    def cancel(self) -> None:
        """The attempt's cancel was asked: stop what it launched."""
        self._stop(Stop.cancel)

    def lose(self) -> None:
        """The attempt is no longer ours: stop it and report nothing."""
        if self._stop(Stop.lost):
            log.warning("job %s attempt %d is no longer held; stopping it", *self._key())

    def hand_back(self) -> None:
        """The runner is going away: stop the job and give it back to the queue."""
        self._stop(Stop.handback)

    @property
    def lost(self) -> bool:
        return self.stop_reason == Stop.lost

    def _stop(self, reason: Stop) -> bool:
        with self._reason_lock:
            if self.stop_reason is not None:
                return False
            self.stop_reason = reason
        self.ctx.cancel.set()
        return True

    def _key(self) -> tuple[str, int]:
        return self.job.id, self.job.attempt

    # -------------------------------------------------- the run

    def run(self) -> str:
        """Run the attempt to its end; returns the job's status after it (or ``requeued``,
        ``lost``, ``unreported``). Never raises: the runner outlives any one job."""
        try:
            return self._run()
        except Exception as exc:
            log.exception("job %s attempt %d failed inside the runner", *self._key())
            if self.lost:
                return "lost"
            error = f"runner error: {type(exc).__name__}: {exc}"
            return self._end(Verdict(status=JobStatus.failed, error=error, may_retry=False))

    def _run(self) -> str:
        spec = self.job.spec
        log.info("job %s attempt %d: %s", self.job.id, self.job.attempt, spec.executor)
        try:
            launcher = self.launchers.get(spec.executor)
        except Exception as exc:
            error = f"this runner cannot run {spec.executor} jobs: {exc}"
            return self._end(Verdict(status=JobStatus.failed, error=error, may_retry=False))
        if self.job.session_id and spec.session is not None:
            # A session's runs share one workspace; a fork's starts as its parent's copy.
            copy_parent_workspace(
                self.settings.workspaces_dir, self.job.session_id, spec.session.parent_session_id
            )
        elif launcher.uses_workspace:
            self.ctx.workspace.mkdir(parents=True, exist_ok=True)
        self._launcher = launcher
        reporter = _Reporter(self)
        outcome: Outcome | None = None
        launch_error: RunnerLaunchError | None = None
        done = threading.Event()
        self._watch(reporter, done)
        try:
            try:
                self._handle = self._launch(launcher)
            except RunnerLaunchError as exc:
                launch_error = exc
            if self._handle is not None:
                self._started_at = time.monotonic()
                try:
                    # A job its claim started (a built-in) is running already; its
                    # handle goes into the run record with the end.
                    if self.job.status != JobStatus.running:
                        self.job = self.channel.started(self.job, self._handle)
                except Lost:
                    self.lose()
                except Unreachable as exc:  # it runs anyway; the end still counts
                    log.error("job %s: could not report started: %s", self.job.id, exc)
                if self.stop_reason is not None:
                    self._stop_once(spec.grace_s)
                try:
                    outcome = launcher.follow(self.ctx, self._handle, masked(reporter, spec))
                except Exception as exc:
                    log.exception("launcher %s failed following job %s", launcher.name, self.job.id)
                    outcome = Outcome(exit_code=None, error=f"{type(exc).__name__}: {exc}")
        except BaseException:
            self._unwatch(reporter, done)
            self._flush_last(reporter)
            raise
        self._unwatch(reporter, done)
        # The last output and the end go out together where the channel can: the final
        # progress report's event with the end's, in one delivery.
        with self.channel.together():
            self._flush_last(reporter)
            return self._conclude(launcher, reporter, outcome, launch_error)

    def _flush_last(self, reporter: _Reporter) -> None:
        if not self.lost:
            try:
                reporter.flush(last=True)
            except Lost:
                self.lose()

    def _conclude(
        self,
        launcher: Launcher,
        reporter: _Reporter,
        outcome: Outcome | None,
        launch_error: RunnerLaunchError | None,
    ) -> str:
        """After the run: hand back, or keep artifacts, clean up and end the attempt."""
        if self.lost:
            self._cleanup(launcher, "lost")
            return "lost"
        if self.stop_reason == Stop.handback:
            # Whatever the job left is dropped with its workspace: the next attempt
            # starts afresh, like one after a lost runner.
            back = self.channel.hand_back(self.job)
            final = "handed_back" if back is not None else "lost"
            log.info("job %s attempt %d: %s", self.job.id, self.job.attempt, final)
            self._cleanup(launcher, final)
            return final
        artifact_error = self._artifacts(launcher) if self._handle is not None else None
        verdict = decide(
            outcome,
            stop=self.stop_reason,
            launch_error=launch_error,
            result=result_of(outcome, reporter.has_result, reporter.result_value),
            steps=reporter.steps,
        )
        if artifact_error and verdict.status == JobStatus.succeeded:
            # The job ran, but what it was asked to keep is not kept: running it again
            # would repeat its effects for a storage fault.
            verdict = verdict.model_copy(
                update={"status": JobStatus.failed, "error": artifact_error, "may_retry": False}
            )
        # Cleanup comes before the end, so the run record says what became of it.
        cleaned = self._cleanup(launcher, verdict.status)
        verdict = verdict.model_copy(
            update={
                "handle": self._handle,
                "cleanup": cleaned,
                "resource_usage": self._usage(outcome),
            }
        )
        return self._end(verdict)

    def _usage(self, outcome: Outcome | None) -> dict[str, Any] | None:
        """What the attempt used: the launcher's figures, and the wall time it ran as this
        runner measured it (for every executor)."""
        if self._started_at is None:
            return outcome.resource_usage if outcome is not None else None
        usage = dict((outcome.resource_usage if outcome is not None else None) or {})
        usage.setdefault("wall_s", round(time.monotonic() - self._started_at, 3))
        return usage

    def _end(self, verdict: Verdict) -> str:
        now = self.channel.finish(self.job, verdict)
        final = "unreported" if now is None else now.status.value
        if now is not None and now.status == JobStatus.queued:
            final = "requeued"
        log.info("job %s attempt %d ended: %s", self.job.id, self.job.attempt, final)
        return final

    # -------------------------------------------------- launch, watch, stop

    def _launch(self, launcher: Launcher) -> str | None:
        tries = self.settings.launch_retries
        for n in range(1, tries + 1):
            if self.stop_reason is not None:
                return None
            # Before a retry, a cancel asked meanwhile. (Not before the first try: it
            # follows the claim, which found no cancel asked, by a fraction of a
            # millisecond; a cancel asked since is the watcher's, as one asked just after
            # the launch is. A Redis round trip on every attempt's critical path.)
            if n > 1 and self.channel.cancel_requested(self.job):
                self.cancel()
                return None
            if self.channel.hand_back_due(self.job):
                self.hand_back()
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
            if self.ctx.cancel.wait(self.settings.launch_backoff_s * 2 ** (n - 1)):
                return None
        return None

    def _poll_s(self) -> float:
        # (Never more often than the channel's flush period, the old tick: a local check,
        # as the agent's, gains nothing from more.)
        return max(self.channel.cancel_poll_s, self.channel.flush_s)

    def _watch(self, reporter: _Reporter, done: threading.Event) -> None:
        """From now until :meth:`_unwatch`: the process's sender sends the attempt's output
        as it comes, and its watcher starts when its first duty is due (:class:`_Watchers`)."""
        t0 = time.monotonic()
        self._watch_args = (reporter, done, t0)
        reporter._attach(_sender())
        first = min(self._poll_s(), self.channel.renew_s, self.job.spec.timeout_s or math.inf)
        _watchers().add(self, t0 + first)

    def _start_watcher(self) -> None:
        assert self._watch_args is not None
        self._watcher = threading.Thread(
            target=self._watching, args=self._watch_args, name=f"watch-{self.job.id}", daemon=True
        )
        self._watcher.start()

    def _unwatch(self, reporter: _Reporter, done: threading.Event) -> None:
        """Stop watching: after this, the watcher does nothing more for this attempt."""
        done.set()
        if not _watchers().remove(self) and self._watcher is not None:
            self._watcher.join(timeout=10)
        reporter._attach(None)

    def _watching(self, reporter: _Reporter, done: threading.Event, t0: float) -> None:
        """Renew the lease, poll for a cancel or a drain, enforce the run-time limit (the
        watcher's thread, from its first duty on). Wakes only when one of those is due
        (not on a fixed tick): an idle running job costs about one wake-up per
        ``cancel_poll_s``."""
        spec, ch = self.job.spec, self.channel
        poll_s = self._poll_s()
        next_renew = t0 + ch.renew_s
        next_cancel = t0 + poll_s
        wait = 0.0  # (the first duty is due now)
        while not done.wait(wait):
            try:
                now = time.monotonic()
                if now >= next_cancel:
                    next_cancel = now + poll_s
                    if ch.cancel_requested(self.job):
                        self.cancel()
                    elif ch.hand_back_due(self.job):
                        self.hand_back()
                if now >= next_renew:
                    next_renew = now + ch.renew_s
                    renewal = ch.renew(self.job)
                    if not renewal.held:
                        self.lose()
                    elif renewal.cancel:
                        self.cancel()
                started = self._started_at
                if spec.timeout_s and started and now - started > spec.timeout_s:
                    self._stop(Stop.timeout)
                self._stop_once()
            except Lost:
                self.lose()
                self._stop_once()
            except Exception:  # keep watching; a Redis or HTTP blip must not orphan the job
                log.exception("watcher error for job %s", self.job.id)
            due = min(next_cancel, next_renew)
            started = self._started_at
            if spec.timeout_s and started:
                due = min(due, started + spec.timeout_s + 0.001)
            wait = max(0.0, due - time.monotonic())

    def _stop_once(self, grace: float | None = None) -> None:
        """Stop what was launched, once, if a stop was asked (``grace``: the spec's, or
        at most ``_TIMEOUT_GRACE_S`` for the run-time limit)."""
        reason = self.stop_reason
        if reason is None or self._handle is None or self._launcher is None:
            return
        if grace is None:
            grace = self.job.spec.grace_s
            if reason == Stop.timeout:
                grace = min(grace, _TIMEOUT_GRACE_S)
        if not self._stopping.acquire(blocking=False):
            return
        threading.Thread(
            target=self._launcher.stop,
            args=(self._handle, grace),
            name=f"stop-{self.job.id}",
            daemon=True,
        ).start()

    # -------------------------------------------------- after the run

    def _artifacts(self, launcher: Launcher) -> str | None:
        """Keep the files matching the spec's globs; the error text if one failed."""
        try:
            found = launcher.collect_artifacts(self.ctx, self._handle)  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("artifact collection failed for %s", self.job.id)
            return f"artifact collection failed: {exc}"
        failed: list[str] = []
        for name, path in found:
            try:
                self.channel.upload_artifact(self.job, name, path)
            except Lost:
                self.lose()
                return None
            except Exception as exc:
                if _name_refused(exc):
                    # A name no artifact may have (too long for the store, say): the job
                    # is not at fault, and the other artifacts are still kept.
                    self._say(f"artifact {name[:100]!r} not kept: {exc}")
                    continue
                log.exception("artifact %r of %s not kept", name, self.job.id)
                failed.append(f"artifact {name!r} not kept: {exc}")
        return "; ".join(failed) if failed else None

    def _say(self, line: str) -> None:
        """One system line in the job's log (best effort)."""
        try:
            self.channel.logs(self.job, [("system", None, line)])
        except Exception:
            log.warning("job %s: %s", self.job.id, line)

    def _cleanup(self, launcher: Launcher, final: str) -> str:
        """Apply the spec's cleanup policy; what became of the attempt's leftovers."""
        policy = self.job.spec.cleanup
        if policy == "never" or (policy == "on_success" and final != JobStatus.succeeded):
            return f"kept (cleanup: {policy})"
        status = "removed"
        try:
            launcher.cleanup(self.ctx, self._handle)
        except Exception as exc:
            log.exception("cleanup failed for job %s", self.job.id)
            status = f"failed: {type(exc).__name__}: {exc}"[:500]
        if self.job.session_id:
            return f"{status} (the session's workspace is kept)"
        if launcher.uses_workspace:
            shutil.rmtree(self.ctx.workspace, ignore_errors=True)
        return status


def _name_refused(exc: Exception) -> bool:
    """Whether an upload failed for the artifact's name (a 4xx of its own), not storage."""
    from orchestrator.errors import ParamError, UnsafePath

    return isinstance(exc, ParamError | UnsafePath) or getattr(exc, "status", None) in (400, 422)
