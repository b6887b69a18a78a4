"""Every transition of an attempt, owned by the core.

Claim, claim-next, start, renew, release, end and lose are operations here, each one
compare-and-set in the store (``orchestrator/store.py``), which writes the attempt's row in
the same transaction. A Celery worker (through ``workers/channels/direct.py``) and a remote
agent (through the ``/launcher`` routes) call the same operations, so a rule about
attempts — who holds one, when a failure earns another attempt, what wins a race between
a cancel, a run-time limit and a success, what a lost runner costs — is written once, here.
Every won transition is handed to the listeners after commit.

Ownership of an attempt is ``(runner_id, attempt)``: a re-queue always bumps the attempt,
so a runner that lost its job finds every later report refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import JobNotFound, LaunchbayError
from orchestrator.job import (
    ACTIVE_STATUSES,
    Artifact,
    AttemptOutcome,
    EventType,
    Job,
    JobStatus,
)
from orchestrator.listeners import Listeners
from orchestrator.progress import ProgressGate
from orchestrator.protocol import Verdict
from orchestrator.runners import RunnerInfo
from orchestrator.settings import Settings
from orchestrator.store import JobStore

log = logging.getLogger(__name__)

# Sends a re-queued job's message (a job still waiting out a delay is sent when due).
Sender = Callable[[Job], None]


class NotHeld(LaunchbayError):
    """A report about an attempt the runner does not (or no longer) hold."""

    status_code = 409


@dataclass(frozen=True)
class Renewal:
    """What a lease renewal learnt: whether the runner still holds the attempt, and
    whether its cancel was asked."""

    held: bool
    cancel: bool = False


class Lifecycle:
    """The attempt operations. Thread-safe: all state is in the store."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        listeners: Listeners,
        send: Sender,
    ) -> None:
        self.settings = settings
        self.store = store
        self.listeners = listeners
        self._send = send
        self._progress = ProgressGate(settings.progress_store_s, renew_s=settings.lease_s / 3)

    # ------------------------------------------------------------ ownership

    def held(self, job_id: str, runner_id: str, attempt: int) -> Job:
        """The job, if ``runner_id`` holds this attempt of it and it is active; else
        :class:`NotHeld` (``JobNotFound`` for an unknown id)."""
        job = self.store.get(job_id)
        if job.runner_id != runner_id or job.attempt != attempt:
            raise NotHeld(
                f"job {job_id} attempt {attempt} is not held by runner {runner_id} (it is "
                f"attempt {job.attempt}, runner {job.runner_id or 'none'}, {job.status})"
            )
        if job.status not in ACTIVE_STATUSES:
            raise NotHeld(f"job {job_id} is {job.status}; it takes no more reports")
        return job

    # ------------------------------------------------------------ claim and start

    def claim(
        self,
        job_id: str,
        runner_id: str,
        attempt: int | None = None,
        *,
        start_at_once: frozenset[str] = frozenset(),
    ) -> Job | None:
        """queued → claimed for ``runner_id``; ``None`` when someone else won, the job moved
        on, or ``attempt`` is not the current one (a stale message).

        A job whose executor is in ``start_at_once`` (launched in-process at once by the
        caller: nothing can fail or wait between its claim and its start) goes queued →
        running in the same write. The listeners still see both steps, ``claimed`` (the
        job as claimed) then ``started``: clients, metrics (queue wait) and traces rely on
        each."""
        job = self.store.claim(
            job_id, runner_id, self.settings.lease_s, attempt=attempt, start_at_once=start_at_once
        )
        if job is None:
            return None
        self._progress.vouch((job.id, job.attempt), runner_id)
        # The claim wrote the job's row: its first progress report is held back as if it
        # had been stored now (a short job's reports then go with its end: one write).
        self._progress.written((job.id, job.attempt))
        if job.status == JobStatus.running:
            # Claimed and started in one write: both announced, in one Redis call.
            claimed = job.model_copy(update={"status": JobStatus.claimed, "started_at": None})
            with self.listeners.together():
                self.listeners.transition(claimed, EventType.claimed)
                self.listeners.transition(job)
        else:
            self.listeners.transition(job)
        return job

    def rehearse(self, runner_id: str, start_at_once: frozenset[str]) -> None:
        """Claim and end an attempt of a job that does not exist, as a runner would: nothing
        changes and nothing is announced, but the statements of a claim, a progress write
        and an end (with and without a held-back report) are compiled and cached now. A
        worker's main process runs this before its pool forks (tasks/warm.py), so every
        child starts with them compiled: otherwise each compiled them during its first job
        (5-10 ms of CPU), and a burst of jobs on fresh workers (32 slots at once on 2
        cores) waited for each other's compiling."""
        job_id = "-rehearsal-"
        for attempt in (1, None):  # (a message names its attempt; claim_next does not)
            self.claim(job_id, runner_id, attempt, start_at_once=start_at_once)
        verdict = Verdict(
            status=JobStatus.succeeded,
            exit_code=0,
            result=0,
            resource_usage={"cpu_s": 0.0},
            handle="-",
            cleanup="removed",
        )
        self.store.set_progress(job_id, 1, 0.0, "", runner_id=runner_id)
        for held_back in (True, False):
            if held_back:  # (the first report is written at once, the next held back)
                self._progress.admit((job_id, 1), 0, "")
                self._progress.admit((job_id, 1), 0, "")
            with contextlib.suppress(JobNotFound):  # (as it does not exist)
                self.end(job_id, runner_id, 1, verdict)
        self.store.rehearse_attempt_rows(runner_id, verdict.record(), start_at_once)

    def claim_next(
        self, runner: RunnerInfo, registered: Callable[[str], object] | None = None
    ) -> Job | None:
        """Claim the oldest queued job ``runner`` can run, if it has a free slot.

        With ``registered`` (the runner registry's lookup), the claim is kept only if the
        runner is still registered after it: an unregister that finished before the job
        was submitted always wins, and the job goes straight back to the queue without
        spending an attempt."""
        if self.store.active_count(runner.id) >= runner.capacity:
            return None
        job = self.store.claim_next(runner.id, runner.executors, runner.tags, self.settings.lease_s)
        if job is None:
            return None
        self.listeners.transition(job)
        if registered is not None and registered(runner.id) is None:
            self.release(job.id, runner.id, job.attempt)
            return None
        self._progress.vouch((job.id, job.attempt), runner.id)
        return job

    def start(self, job_id: str, runner_id: str, attempt: int, handle: str | None = None) -> Job:
        """claimed → running, by the runner that holds the attempt; ``handle`` (pid,
        container id, Job name) goes into the attempt's run record."""
        running = self.store.start(
            job_id, attempt, self.settings.lease_s, runner_id=runner_id, handle=handle
        )
        if running is None:
            self.held(job_id, runner_id, attempt)  # raises with the reason
            raise NotHeld(f"job {job_id} attempt {attempt} has already started")
        self.listeners.transition(running)
        return running

    # ------------------------------------------------------------ while it runs

    def renew(self, job_id: str, runner_id: str, attempt: int) -> Renewal:
        """Extend the attempt's lease; says whether it is still held and cancel asked.
        One write: a report held back by the progress gate is stored with the renewal."""
        pending = self._progress.take((job_id, attempt))
        cancel = self.store.extend_lease(
            job_id, attempt, self.settings.lease_s, runner_id=runner_id, progress=pending
        )
        if cancel is None:
            self._progress.settle((job_id, attempt))  # (forgets it: no longer ours)
            return Renewal(held=False)
        return Renewal(held=True, cancel=cancel)

    def renew_all(self, runner_id: str, job_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Renew the leases of the jobs a runner says it runs: ``(cancel, lost)``."""
        cancel: list[str] = []
        lost: list[str] = []
        for job_id in dict.fromkeys(job_ids):
            job = self.store.find(job_id)
            held = job is not None and job.runner_id == runner_id
            if not (held and job and self.renew(job_id, runner_id, job.attempt).held):
                lost.append(job_id)
            elif job and job.cancel_requested:
                cancel.append(job_id)
        return cancel, lost

    def progress(
        self,
        job_id: str,
        runner_id: str,
        attempt: int,
        percent: float,
        message: str,
        *,
        last: bool = False,
    ) -> None:
        """Store the attempt's progress (at a bounded rate: orchestrator/progress.py) and
        hand it to the listeners. Only from the attempt's holder: checked against the store
        once per attempt in this process (none when it was claimed here), then with each
        store write and lease renewal. ``last``: the attempt's end follows at once (its
        last output), and stores this report with it: one write, not two."""
        key = (job_id, attempt)
        if not self._progress.vouched(key, runner_id):
            self.held(job_id, runner_id, attempt)  # (raises NotHeld)
            self._progress.vouch(key, runner_id)
        if last:
            self._progress.hold(key, percent, message)
        elif self._progress.admit(key, percent, message) and not (
            self.store.set_progress(job_id, attempt, percent, message, runner_id=runner_id)
        ):
            self.held(job_id, runner_id, attempt)
        self.listeners.progress(job_id, attempt, percent, message)

    def add_artifact(self, job_id: str, runner_id: str, attempt: int, saved: Artifact) -> None:
        """List a stored artifact on the attempt's job (one of that name replaced)."""
        job = self.held(job_id, runner_id, attempt)
        kept = [a for a in job.artifacts if a.name != saved.name] + [saved]
        if not self.store.update_fields(
            job_id,
            attempt,
            runner_id=runner_id,
            artifacts=[a.model_dump(mode="json") for a in kept],
        ):
            self.held(job_id, runner_id, attempt)

    # ------------------------------------------------------------ the end

    def end(
        self,
        job_id: str,
        runner_id: str,
        attempt: int,
        verdict: Verdict,
        job: Job | None = None,
    ) -> Job:
        """End the attempt with the runner's verdict; the job as it now stands.

        The rules, for every channel:
        - a cancel accepted before the end wins over success and failure (a run-time
          limit that fired first still ends ``timed_out``);
        - a failure that ``may_retry`` is re-queued while the job's own attempts
          (lost and handed-back ones do not count) are fewer than ``max_attempts``,
          after ``retry_backoff_s · 2^(n-1)``;
        - anything else ends the job, with one compare-and-set.

        ``job``: the runner's copy of the attempt, if it has one. Its spec and attempt
        counters do not change while the attempt is held, so the end reads nothing first;
        the compare-and-set still decides whether it is held and whether a cancel won.
        """
        if job is None or (job.id, job.attempt) != (job_id, attempt):
            job = None
        status, error = verdict.job_status, verdict.error
        retry = status == JobStatus.failed and verdict.may_retry
        if job is None and (retry or status == JobStatus.timed_out):
            job = self.held(job_id, runner_id, attempt)
        if job is not None and job.cancel_requested and status != JobStatus.timed_out:
            status, error = JobStatus.cancelled, "cancelled"
        elif status == JobStatus.timed_out and job is not None and job.spec.timeout_s:
            error = f"timed out after {job.spec.timeout_s:g} s"
        fields = {**self._progress.settle((job_id, attempt)), **verdict.fields()}
        record = verdict.record()
        if (
            status == JobStatus.failed
            and retry
            and job is not None
            and job.own_attempts < job.spec.max_attempts
        ):
            backoff = job.spec.retry_backoff_s * 2 ** (job.own_attempts - 1)
            again = self._requeue(
                job,
                f"attempt {job.attempt} failed: {error}",
                AttemptOutcome.retried,
                exit_code=verdict.exit_code,
                delay_s=backoff,
                runner_id=runner_id,
                record=record,
                **fields,
            )
            if again is not None:
                return again
            self.held(job_id, runner_id, attempt)  # still held: a cancel landed meanwhile
            status, error = JobStatus.cancelled, "cancelled"
        spec = job.spec if job is not None else None  # (the end's answer reuses it)
        ended = dict(fields)
        if status == JobStatus.succeeded:
            ended["progress_percent"] = 100.0  # done is 100 %, whatever it last printed
        done = self.store.finish(
            job_id,
            attempt,
            status,
            exit_code=verdict.exit_code,
            error=error,
            runner_id=runner_id,
            record=record,
            same_spec=spec,
            **ended,
        )
        if done is None and status in (JobStatus.succeeded, JobStatus.failed):
            # A cancel accepted before our write wins over the verdict.
            done = self.store.finish(
                job_id,
                attempt,
                JobStatus.cancelled,
                exit_code=verdict.exit_code,
                error="cancelled",
                runner_id=runner_id,
                record=record,
                same_spec=spec,
                **fields,
            )
        if done is None:
            self.held(job_id, runner_id, attempt)
            raise NotHeld(f"job {job_id} attempt {attempt} was ended by someone else")
        self.listeners.transition(done)
        return done

    def release(self, job_id: str, runner_id: str, attempt: int) -> Job:
        """Hand back an attempt the runner will not finish (it is draining, or will not
        start it): queued again at once, spending neither ``max_attempts`` nor the loss
        budget. A cancel asked meanwhile is honoured instead."""
        job = self.held(job_id, runner_id, attempt)
        self._progress.settle((job_id, attempt))  # (a report held back goes with it)
        again = self._requeue(
            job,
            f"handed back by {runner_id} "
            + ("before it started" if job.status == JobStatus.claimed else "while it ran"),
            AttemptOutcome.handed_back,
            runner_id=runner_id,
        )
        if again is not None:
            return again
        return self.end(
            job_id, runner_id, attempt, Verdict(status=JobStatus.cancelled, error="cancelled")
        )

    def lose(self, job: Job) -> Job | None:
        """The reconciler found ``job``'s lease expired: its runner is gone.

        A lost runner is the platform's failure: the job is re-queued without spending
        ``max_attempts``, up to its loss budget (``max_lost``; 0 for jobs that must never
        run twice), then failed. An asked cancel is honoured instead.
        """
        who = f"runner {job.runner_id} lost (lease expired) on attempt {job.attempt}"
        if job.cancel_requested:
            done = self.store.finish(
                job.id, job.attempt, JobStatus.cancelled, error="cancelled (runner lost)"
            )
        else:
            budget = job.spec.max_lost if job.spec.max_lost is not None else self.settings.max_lost
            if job.losses < budget:
                return self._requeue(
                    job,
                    f"{who}; re-queued (loss {job.losses + 1} of {budget})",
                    AttemptOutcome.lost,
                )
            done = self.store.finish(
                job.id,
                job.attempt,
                JobStatus.failed,
                error=f"{who}; its loss budget ({budget}) is spent",
            ) or self.store.finish(  # a cancel accepted meanwhile wins
                job.id, job.attempt, JobStatus.cancelled, error="cancelled (runner lost)"
            )
            if done is not None:
                log.warning("job %s ended %s: %s", job.id, done.status, done.error)
        if done is not None:
            self.listeners.transition(done)
        return done

    # ------------------------------------------------------------ helpers

    def _requeue(
        self,
        job: Job,
        reason: str,
        outcome: AttemptOutcome,
        *,
        exit_code: int | None = None,
        delay_s: float | None = None,
        runner_id: str | None = None,
        record: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job | None:
        again = self.store.requeue(
            job.id,
            job.attempt,
            reason=reason,
            outcome=outcome,
            exit_code=exit_code,
            match_timeout_s=job.spec.match_timeout_s or self.settings.default_match_timeout_s,
            delay_s=delay_s,
            runner_id=runner_id,
            record=record,
            **fields,
        )
        if again is None:
            return None
        self.listeners.transition(again, EventType.requeued)
        if again.not_before is None:
            # A delayed job waits in the store, not as an ETA message in one worker's
            # memory: the reconciler sends it when it is due (Dispatcher.send_due).
            try:
                self._send(again)
            except Exception:  # the reconciler re-sends queued jobs no broker holds
                log.exception("could not send job %s attempt %d", again.id, again.attempt)
        return again
