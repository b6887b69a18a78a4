"""Submit, cancel and reconcile jobs: the one place that talks to both store and broker."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery

from orchestrator.broker import TaskMessages, held_task_ids
from orchestrator.capabilities import LiveRunners, celery_demands, describe
from orchestrator.celery_app import RUN_JOB
from orchestrator.errors import BrokerUnavailable, InvalidTransition, ParamError
from orchestrator.events import Events
from orchestrator.flow import Flow, FlowListener, resolve_key
from orchestrator.job import EventType, Job, JobStatus, task_id_for
from orchestrator.lifecycle import Lifecycle
from orchestrator.listeners import EventPublisher, Listener, Listeners
from orchestrator.metrics import MetricsRecorder
from orchestrator.routing import route
from orchestrator.runners import ADOPT_EVERY_S, RunnerRegistry
from orchestrator.sessions import SessionListener, Sessions
from orchestrator.sessions import prepare as prepare_session
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.tracing import TracingListener, tracing_for

log = logging.getLogger(__name__)
_CANCEL_TRIES = 5


@dataclass
class _Staged:
    """The messages staged in one :meth:`Dispatcher._sending` block."""

    sent: list[Any] = field(default_factory=list)


@dataclass
class Dispatcher:
    """The core as one object: submit, cancel and reconcile here, the attempt operations
    in ``lifecycle``; every won transition goes to ``listeners``."""

    settings: Settings
    store: JobStore
    events: Events
    celery: Celery
    extra_listeners: list[Listener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tracing = tracing_for(self.settings.tracing)
        self.listeners = Listeners(
            [
                EventPublisher(self.events),
                MetricsRecorder.for_client(self.events.r),
                *([TracingListener(self.tracing)] if self.tracing else []),
                *self.extra_listeners,
            ]
        )
        self.lifecycle = Lifecycle(
            self.settings,
            self.store,
            self.listeners,
            send=self.send,
        )
        self.flow = Flow(self)
        self.listeners.add(FlowListener(self.flow))
        # Sessions and capabilities (issue 16): orchestrator/sessions.py, capabilities.py.
        self.sessions = Sessions(self.store.engine, self.settings.workspaces_dir)
        self.listeners.add(SessionListener(self))
        self.runners = RunnerRegistry(self.events.r)
        self.live_runners = LiveRunners(self.runners.live)
        # Task messages pushed through the events outbox when the broker is the events'
        # Redis (orchestrator/broker.py); else Celery's send_task.
        self._messages = (
            TaskMessages.for_app(self.celery, self.events.r) if self.events.sends_messages else None
        )

    def live_runners_by_id(self, runner_id: str) -> Any:
        """One live runner's registration, or ``None``."""
        return self.runners.get(runner_id)

    def announce(self, job: Job, event: EventType | None = None) -> None:
        """Hand a committed change to the listeners (events, metrics, webhooks)."""
        self.listeners.transition(job, event)

    # ---------------------------------------------------------- submit

    def submit(self, spec: Any, *, job_id: str | None = None, rerun_of: str | None = None) -> Job:
        if self.tracing is not None:  # (LAUNCHBAY_TRACING: the job's trace starts here)
            with self.tracing.submit(spec) as stamped:
                return self._submit(stamped, job_id=job_id, rerun_of=rerun_of)
        return self._submit(spec, job_id=job_id, rerun_of=rerun_of)

    def _submit(self, spec: Any, *, job_id: str | None = None, rerun_of: str | None = None) -> Job:
        job = self.store.create(
            resolve_key(prepare_session(self.sessions, spec)),
            job_id=job_id,
            match_timeout_s=self.settings.default_match_timeout_s,
            rerun_of=rerun_of,
        )
        if job.hold == "deps":  # sent when its dependencies succeed (orchestrator/flow.py)
            self.announce(job, EventType.created)
            self.flow.resolve(job.id)
            held = self.store.get(job.id)
            held.warnings = self.live_runners.warnings(held.spec.executor, held.spec.demands)
            return held
        try:
            # The created event is staged before the message, so it leaves with it or
            # before it (another thread's flush may take it first), never after: no
            # runner's claim can precede it in the job's stream. On Redis both, and the
            # counters, leave in one script call.
            with self.listeners.together(), self._sending() as sends:
                self.announce(job, EventType.created)
                self.send(job, producer=sends)
        except Exception as exc:
            raise self._unsent([job], exc) from exc
        job.warnings = self.live_runners.warnings(job.spec.executor, job.spec.demands)
        return job

    def submit_together(self, specs: Sequence[Any]) -> list[Job | Exception]:
        """Submits of separate requests made as one batch (api/submits.py gathers the
        ``POST /jobs`` that arrive while one is being made): one transaction and one Redis
        call for all, each answered as its own :meth:`submit` would be — its job, or the
        error its request gets. A spec the batch refuses (a ParamError, raised before
        anything is written) sends each through :meth:`submit` alone, so the refusal is
        only its own; a store or broker that fails the batch fails each of them, as it
        would have failed each alone. No sessions here (a session's runs take turns)."""
        if len(specs) > 1:
            try:
                return list(self.submit_many(specs))
            except ParamError:
                pass  # (nothing was written: one by one, each with its own answer)
            except Exception as exc:
                return [exc] * len(specs)
        out: list[Job | Exception] = []
        for spec in specs:
            try:
                out.append(self.submit(spec))
            except Exception as exc:
                out.append(exc)
        return out

    def submit_many(self, specs: Sequence[Any]) -> list[Job]:
        """Submit validated specs at once (``POST /jobs/batch``): every flow rule checked
        first, then one transaction inserts them all, their messages go out in one
        pipelined batch, and each gets its ``created`` event; the jobs in order. A refused
        spec is a ParamError naming ``jobs[i].field`` and nothing is accepted; a broker
        that cannot take them fails the batch's jobs (BrokerUnavailable), as one submit."""
        prepared = []
        for i, spec in enumerate(specs):
            try:
                if spec.session is not None:  # (a session's runs take turns: one at a time)
                    raise ParamError("session", "a batch takes no sessions; use POST /jobs")
                if self.tracing is not None:  # (each job's trace starts here)
                    with self.tracing.submit(spec) as stamped:
                        spec = stamped
                prepared.append(resolve_key(spec))
            except ParamError as exc:
                raise ParamError(f"jobs[{i}].{exc.field}", str(exc)) from None
        jobs = self.store.create_many(
            prepared, match_timeout_s=self.settings.default_match_timeout_s
        )
        try:  # (the created events before the messages, as in submit; one round trip)
            with self.listeners.together(), self._sending() as sends:
                for job in jobs:
                    self.announce(job, EventType.created)
                for job in jobs:
                    if job.hold != "deps":
                        self.send(job, producer=sends)
        except Exception as exc:
            raise self._unsent(jobs, exc) from exc
        out = []
        with self.listeners.together():
            for job in jobs:
                if job.hold == "deps":
                    self.flow.resolve(job.id)
                    job = self.store.get(job.id)
                job.warnings = self.live_runners.warnings(job.spec.executor, job.spec.demands)
                out.append(job)
        return out

    def _unsent(self, jobs: Sequence[Job], exc: Exception) -> BrokerUnavailable:
        """Fail the still-queued ``jobs`` the broker did not take (a client told 503 must
        not find them run later); the error to raise."""
        for job in jobs:
            failed = self.store.transition(
                job.id,
                JobStatus.failed,
                expect=[JobStatus.queued],
                error=f"broker unavailable, job not enqueued: {exc}",
            )
            if failed:
                self.announce(failed)
        return BrokerUnavailable(f"the broker cannot take jobs right now: {exc}")

    @contextlib.contextmanager
    def _sending(self) -> Iterator[Any]:
        """Sends made inside (``send(job, producer=…)`` with what this yields) leave
        together at the end, in one round trip, with whatever events were staged by then;
        raises if they did not. On Redis they are staged in the events outbox; on another
        broker (or the in-memory core) they go through one Celery producer."""
        if self._messages is not None:
            sends = _Staged()
            yield sends
            self.events.flush()
            for sent in sends.sent:
                sent.check()
            return
        with self.celery.producer_or_acquire() as producer:
            # kombu 5.7+: the batch's messages go out in one pipelined round trip
            # (older: one by one, on the one producer).
            batch = getattr(producer, "batch", None)
            with batch() if batch is not None else contextlib.nullcontext():
                yield producer

    def send(self, job: Job, *, producer: Any = None) -> None:
        """Send the job's current attempt to its queue: now, or with the others of a
        :meth:`_sending` block (``producer``). A job waiting out a delay (``not_before``
        in the future) is not sent: :meth:`send_due` sends it when due."""
        if job.not_before is not None and job.not_before > self.store.now():
            return
        task_id = task_id_for(job.id, job.attempt)
        expires = None
        if job.match_deadline is not None:
            expires = max(job.match_deadline, self.store.now() + timedelta(seconds=1))
        args = [job.id, job.attempt]
        # Demands no queue name carries: the worker checks them before it claims.
        kwargs = celery_demands(job.spec.demands) or {}
        # Redis serves priority 0 first; a job's priority 9 is the highest.
        priority = 9 - job.spec.priority
        if self._messages is not None:
            key, raw = self._messages.make(
                RUN_JOB,
                task_id,
                args=args,
                kwargs=kwargs,
                queue=route(job.spec),
                priority=priority,
                expires=expires,
            )
            sent = self.events.stage_message(key, raw)
            if isinstance(producer, _Staged):
                producer.sent.append(sent)
            else:
                self.events.flush()
                sent.check()
        else:
            self.celery.send_task(
                RUN_JOB,
                args=args,
                kwargs=kwargs,
                argsrepr=repr(args),  # (plain values: Celery's saferepr costs more)
                kwargsrepr=repr(kwargs),
                task_id=task_id,
                queue=route(job.spec),
                expires=expires,
                priority=priority,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
                producer=producer,
            )
        if job.task_id != task_id:
            self.store.set_task_id(job.id, task_id)

    # ---------------------------------------------------------- cancel

    def cancel(self, job_id: str) -> Job:
        """Cancel a job. Repeating it is harmless; an ended job raises InvalidTransition.

        Each step is a compare-and-set; when the job moves between our read and our write
        (a claim, a retry's re-queue), we look again, a bounded number of times.
        """
        for _ in range(_CANCEL_TRIES):
            job = self.store.get(job_id)
            if job.status == JobStatus.queued:
                done = self.store.transition(
                    job_id,
                    JobStatus.cancelled,
                    attempt=job.attempt,
                    expect=[JobStatus.queued],
                    error="cancelled before it started",
                )
                if done:
                    self._revoke(done)
                    self.announce(done)
                    return done
            elif job.status in (JobStatus.claimed, JobStatus.running):
                if job.cancel_requested:
                    return job  # already asked; the runner is on it
                marked = self.store.request_cancel(job_id)
                if marked:
                    self.events.flag_cancel(job_id)
                    self._revoke(marked)
                    self.announce(marked, EventType.cancel_requested)
                    return marked
            elif job.status == JobStatus.cancelled:
                return job
            else:
                raise InvalidTransition(
                    job_id, job.status, JobStatus.cancelled, "the job has ended"
                )
        raise InvalidTransition(
            job_id, job.status, JobStatus.cancelled, "the job kept changing; try again"
        )

    def _revoke(self, job: Job, *, terminate: bool = False) -> None:
        try:
            self.celery.control.revoke(
                job.task_id or task_id_for(job.id, job.attempt),
                terminate=terminate,
                signal="SIGKILL" if terminate else "SIGTERM",
            )
        except Exception:  # pragma: no cover - the store already says cancelled
            log.exception("revoke failed for job %s", job.id)

    # ---------------------------------------------------------- retries and reconcile

    def resend_lost(self, older_than_s: float = 120) -> int:
        """Re-send queued jobs older than ``older_than_s`` whose message the broker lost.

        A duplicate is harmless (the claim is a compare-and-set), a lost message is not:
        without this the job would wait for its match deadline.
        """
        stale = self.store.queued_older_than(self.store.now() - timedelta(seconds=older_than_s))
        if not stale:
            return 0
        held = held_task_ids(self.events.r, {route(j.spec) for j in stale})
        resent = 0
        for job in stale:
            if (job.task_id or task_id_for(job.id, job.attempt)) not in held:
                self.send(job)
                resent += 1
        return resent

    def send_due(self) -> int:
        """Send the queued jobs whose delay has passed (retry backoffs); how many."""
        due = self.store.take_due()
        for job in due:
            try:
                self.send(job)
            except Exception:  # found again by the lost-message sweep
                log.exception("could not send due job %s", job.id)
        return len(due)

    def reconcile(self) -> dict[str, int]:
        """Beat's periodic sweep: lost runners, unmatched jobs, unanswered cancels, lost
        messages, runners missing from the registry's set."""
        counts = {"requeued": 0, "failed": 0, "unmatched": 0, "force_cancelled": 0}
        counts["sent_due"] = self.send_due()
        counts.update(self.flow.sweep())
        for job in self.store.expired_leases():
            done = self.lifecycle.lose(job)
            if done is not None:
                key = {
                    JobStatus.queued: "requeued",
                    JobStatus.cancelled: "force_cancelled",
                }.get(done.status, "failed")
                counts[key] += 1
        for job in self.store.overdue_queued():
            timeout = job.spec.match_timeout_s or self.settings.default_match_timeout_s
            done = self.store.transition(
                job.id,
                JobStatus.failed,
                attempt=job.attempt,
                expect=[JobStatus.queued],
                error=f"no matching runner available within {timeout:g} s "
                f"(demands: {describe(job.spec.executor, job.spec.demands)})",
            )
            if done:
                self._revoke(done)
                self.announce(done)
                counts["unmatched"] += 1
        wait = self.settings.cancel_fallback_s
        for job in self.store.stuck_cancels(self.store.now() - timedelta(seconds=wait)):
            if (
                job.cancel_requested_at
                and (self.store.now() - job.cancel_requested_at).total_seconds()
                < job.spec.grace_s + wait
            ):
                continue
            self._revoke(job, terminate=True)
            done = self.store.finish(
                job.id,
                job.attempt,
                JobStatus.cancelled,
                error="cancelled (runner did not answer; terminated)",
            )
            if done:
                self.announce(done)
                counts["force_cancelled"] += 1
        # Reading the broker's queues is the costly part of a sweep: one process per
        # half-period does it (the reconcile task may run on any worker).
        window = max(1, int(self.settings.resend_after_s / 2))
        if self.events.r.set("lb:reconcile:resend", "1", nx=True, ex=window):
            counts["resent"] = self.resend_lost(self.settings.resend_after_s)
        if self.events.r.set("lb:reconcile:runners", "1", nx=True, ex=ADOPT_EVERY_S):
            counts["runners_adopted"] = self.runners.adopt_unlisted()
        return counts
