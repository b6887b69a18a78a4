"""The direct channel: a Celery worker's attempt talks to the store and Redis itself."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import redis

from orchestrator.artifacts import ArtifactStore
from orchestrator.dispatch import Dispatcher
from orchestrator.events import cancel_key, drain_key
from orchestrator.job import Job
from orchestrator.lifecycle import NotHeld, Renewal
from orchestrator.protocol import Verdict
from orchestrator.store import STORE_DOWN
from workers.attempt import Attempt
from workers.channels import LogBatch, Lost, Unreachable
from workers.launchers import LauncherSet

log = logging.getLogger(__name__)
T = TypeVar("T")

# Executors whose launch is in-process and immediate (a built-in job's launch hands a
# function to a thread: it cannot fail for a transient reason, retry or wait), so the
# claim starts them too: queued → running in one write. Process, docker and kubernetes
# launches can fail and be retried, or take a while (a fork, an image pull, a pod), and
# a job must not say it runs before it does: they keep claim → start.
START_AT_ONCE = frozenset({"builtin"})

_STORE_RETRY_S = (0.5, 1, 2, 5)
_STORE_RETRY_FOR_S = 3600.0


def _until_stored(what: str, job: Job, fn: Callable[[], T]) -> T:
    """Call ``fn`` until the store takes it: an attempt's end (or hand-back, or artifact)
    must not be lost to a store that is down for a while. Gives up after an hour (the
    lease has long expired by then: the reconciler owns the job)."""
    deadline = time.monotonic() + _STORE_RETRY_FOR_S
    for n in itertools.count():
        try:
            return fn()
        except STORE_DOWN as exc:
            if time.monotonic() > deadline:
                raise
            delay = _STORE_RETRY_S[min(n, len(_STORE_RETRY_S) - 1)]
            log.warning(
                "job %s: store unavailable for %s (%s); retrying in %g s",
                job.id,
                what,
                str(exc).splitlines()[0],
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class DirectChannel:
    # Output goes out when there is some, at most once per flush_s per attempt (batches).
    flush_s = 0.05
    # The one thing a quiet running attempt wakes for (one MGET: cancel flag and drain
    # deadline); a cancel takes at most this long to start stopping the job. The lease
    # renewal (every lease_s / 3) also says whether a cancel was asked.
    cancel_poll_s = 1.0

    def __init__(self, dispatcher: Dispatcher, runner_id: str, artifacts: ArtifactStore) -> None:
        self.lifecycle = dispatcher.lifecycle
        self.events = dispatcher.events
        self.runner_id = runner_id
        self.artifacts = artifacts
        self.renew_s = dispatcher.settings.lease_s / 3
        self._drain_checked_at = -1e9
        self._drain_deadline: float | None = None

    def run(self, job_id: str, attempt: int | None, launchers: LauncherSet) -> str:
        """Claim the attempt a Celery message names and run it; the outcome, or why not."""
        # The claim's announcements go out from the outbox's thread while the job starts:
        # under load, waiting for that round trip delayed every job's start by one wait
        # for the CPU (10-40 ms with 32 slots on 2 cores). Whatever the attempt sends next
        # goes out after them, in order.
        with self.lifecycle.listeners.together(wait=False):
            job = self.lifecycle.claim(job_id, self.runner_id, attempt, start_at_once=START_AT_ONCE)
        if job is None:
            return "skipped (not queued at this attempt, or claimed elsewhere)"
        if job.attempt == 1:  # (each claim is of a new attempt: nobody wrote its log yet)
            self.events.log_is_new(job.id)
        return Attempt(self, launchers, self.lifecycle.settings, job).run()

    def started(self, job: Job, handle: str | None = None) -> Job:
        try:
            return self.lifecycle.start(job.id, self.runner_id, job.attempt, handle)
        except NotHeld as exc:
            raise Lost(str(exc)) from exc
        except STORE_DOWN as exc:
            raise Unreachable(str(exc)) from exc

    def together(self) -> AbstractContextManager[None]:
        # The events staged inside go out with the next log batch (the same script call),
        # else in one call as it ends.
        return self.lifecycle.listeners.together()

    def logs(self, job: Job, lines: LogBatch) -> None:
        try:
            self.events.append_logs(job.id, lines)
        except redis.RedisError as exc:  # kept and sent again when Redis is back
            raise Unreachable(str(exc)) from exc

    def progress(self, job: Job, percent: float, message: str, *, last: bool = False) -> None:
        try:
            self.lifecycle.progress(
                job.id, self.runner_id, job.attempt, percent, message, last=last
            )
        except NotHeld as exc:
            raise Lost(str(exc)) from exc
        except STORE_DOWN as exc:
            raise Unreachable(str(exc)) from exc

    def renew(self, job: Job) -> Renewal:
        return self.lifecycle.renew(job.id, self.runner_id, job.attempt)

    def cancel_requested(self, job: Job) -> bool:
        # One round trip asks both things a running attempt polls for: its cancel flag and
        # this worker's drain deadline (read by hand_back_due right after, without a call).
        try:
            cancel, raw = self.events.r.mget([cancel_key(job.id), drain_key(self.runner_id)])
        except redis.RedisError:  # asked again next tick; the store's flag comes with renew
            return False
        self._drain_checked_at = time.monotonic()
        self._drain_deadline = float(raw) if raw else None
        return cancel is not None

    def hand_back_due(self, job: Job) -> bool:
        now = time.monotonic()
        if now >= self._drain_checked_at + self.cancel_poll_s:
            self._drain_checked_at = now
            try:
                raw = self.events.r.get(drain_key(self.runner_id))
            except redis.RedisError:  # unknown for now: keep what we knew
                return self._drain_due()
            self._drain_deadline = float(raw) if raw else None
        return self._drain_due()

    def _drain_due(self) -> bool:
        return self._drain_deadline is not None and time.time() >= self._drain_deadline

    def hand_back(self, job: Job) -> Job | None:
        try:
            return _until_stored(
                "the hand-back",
                job,
                lambda: self.lifecycle.release(job.id, self.runner_id, job.attempt),
            )
        except NotHeld:
            return None
        finally:
            self.events.forget(job.id)

    def upload_artifact(self, job: Job, name: str, path: Path) -> None:
        saved = self.artifacts.save(job.id, name, path)
        _until_stored(
            "an artifact",
            job,
            lambda: self.lifecycle.add_artifact(job.id, self.runner_id, job.attempt, saved),
        )

    def finish(self, job: Job, verdict: Verdict) -> Job | None:
        try:
            return _until_stored(
                "the end",
                job,
                lambda: self.lifecycle.end(job.id, self.runner_id, job.attempt, verdict, job),
            )
        except NotHeld:
            return None
        finally:
            self.events.forget(job.id)
