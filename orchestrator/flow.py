"""Flow control (issue 14): dependencies, keyed concurrency limits, idempotent submits,
re-runs and why a queued job waits.

The claim's compare-and-set (``JobStore.claim``) refuses held jobs and counts a key's
running jobs; this module decides when a hold ends and sends the job then. It listens to
every won transition (``FlowListener``), so a job without a key and without dependents
costs nothing here: both are read off the committed row the core hands over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator.errors import JobNotEnded, ParamError
from orchestrator.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    EventType,
    Job,
    JobSpec,
    JobStatus,
)
from orchestrator.listeners import Listener
from orchestrator.runners import RunnerInfo
from orchestrator.schema import concurrency_limits, idempotency_keys, job_deps, jobs

if TYPE_CHECKING:
    from orchestrator.dispatch import Dispatcher

log = logging.getLogger(__name__)

LABEL_KEY_PREFIX = "label:"
_SPEC: TypeAdapter[Any] = TypeAdapter(JobSpec)
_BAD_END = frozenset({JobStatus.failed, JobStatus.cancelled, JobStatus.timed_out})


def resolve_key(spec: Any) -> Any:
    """``spec`` with ``concurrency_key: 'label:NAME'`` replaced by the label's value (a
    missing label is a ParamError naming the field)."""
    if isinstance(spec, dict):
        spec = _SPEC.validate_python(spec)
    key = spec.concurrency_key
    if key is None or not key.startswith(LABEL_KEY_PREFIX):
        return spec
    name = key[len(LABEL_KEY_PREFIX) :]
    value = spec.labels.get(name)
    if not value:
        raise ParamError("concurrency_key", f"takes its key from label {name!r}, which is unset")
    return spec.model_copy(update={"concurrency_key": value[:200]})


@dataclass
class Limit:
    key: str
    max_running: int | None
    running: int
    held: int

    def public(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "max_running": self.max_running,
            "running": self.running,
            "waiting": self.held,
        }


class Flow:
    """The flow operations of one dispatcher (store + broker)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.store = dispatcher.store

    # ------------------------------------------------------------ holds ending

    def release_key(self, key: str) -> int:
        """Send the held jobs of ``key`` that its free slots can take; how many."""
        jobs_ = self.store.release_key(key, self.d.settings.default_match_timeout_s)
        for job in jobs_:
            self._send(job)
        return len(jobs_)

    def resolve(self, job_id: str) -> Job | None:
        """A job held on its dependencies: end it if one ended badly, send it if all
        succeeded, else leave it. Each outcome is a compare-and-set."""
        with self.store.engine.connect() as c:
            rows = c.execute(
                sa.select(job_deps.c.depends_on, jobs.c.status)
                .select_from(job_deps.outerjoin(jobs, jobs.c.id == job_deps.c.depends_on))
                .where(job_deps.c.job_id == job_id)
            ).all()
        bad = [(d, s or "deleted") for d, s in rows if s is None or JobStatus(s) in _BAD_END]
        if bad:
            dep, status = bad[0]
            done = self.store.transition(
                job_id,
                JobStatus.cancelled,
                expect=[JobStatus.queued],
                error=f"not run: dependency {dep} ended {status}",
            )
            if done is not None:
                self.d.announce(done)
            return done
        if rows and all(s == JobStatus.succeeded.value for _d, s in rows):
            job = self.store.unhold_deps(job_id, self.d.settings.default_match_timeout_s)
            if job is not None:
                self._send(job)
            return job
        return None

    def resolve_dependents(self, job_id: str) -> None:
        with self.store.engine.connect() as c:
            waiting = (
                c.execute(
                    sa.select(job_deps.c.job_id)
                    .join(jobs, jobs.c.id == job_deps.c.job_id)
                    .where(
                        job_deps.c.depends_on == job_id,
                        jobs.c.status == JobStatus.queued.value,
                        jobs.c.hold == "deps",
                    )
                )
                .scalars()
                .all()
            )
        for dependent in waiting:
            self.resolve(dependent)

    def sweep(self) -> dict[str, int]:
        """The reconciler's safety net: holds whose end no listener saw (a process that
        died between commit and listener) are looked at again."""
        with self.store.engine.connect() as c:
            keys = (
                c.execute(
                    sa.select(jobs.c.concurrency_key)
                    .where(jobs.c.status == JobStatus.queued.value, jobs.c.hold == "limit")
                    .distinct()
                )
                .scalars()
                .all()
            )
            held = (
                c.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.status == JobStatus.queued.value, jobs.c.hold == "deps"
                    )
                )
                .scalars()
                .all()
            )
            c.execute(
                idempotency_keys.delete().where(idempotency_keys.c.expires_at < self.store.now())
            )
            c.commit()
        released = sum(self.release_key(k) for k in keys if k)
        resolved = sum(1 for j in held if self.resolve(j) is not None)
        return {"released": released, "resolved": resolved}

    def _send(self, job: Job) -> None:
        try:
            self.d.send(job)
        except Exception:  # the reconciler re-sends queued jobs no broker holds
            log.exception("could not send released job %s", job.id)

    # ------------------------------------------------------------ limits

    def limits(self) -> list[Limit]:
        with self.store.engine.connect() as c:
            set_ = dict(
                c.execute(
                    sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)
                ).all()
            )
            running: dict[str, int] = dict(
                c.execute(
                    sa.select(jobs.c.concurrency_key, sa.func.count())
                    .where(
                        jobs.c.concurrency_key.is_not(None),
                        jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                    )
                    .group_by(jobs.c.concurrency_key)
                ).all()
            )
            held: dict[str, int] = dict(
                c.execute(
                    sa.select(jobs.c.concurrency_key, sa.func.count())
                    .where(jobs.c.status == JobStatus.queued.value, jobs.c.hold == "limit")
                    .group_by(jobs.c.concurrency_key)
                ).all()
            )
        keys = sorted(set(set_) | set(running) | set(held))
        return [Limit(k, set_.get(k), int(running.get(k, 0)), int(held.get(k, 0))) for k in keys]

    def limit(self, key: str) -> Limit:
        with self.store.engine.connect() as c:
            max_running = c.execute(
                sa.select(concurrency_limits.c.max_running).where(concurrency_limits.c.key == key)
            ).scalar()
            running = c.execute(
                sa.select(sa.func.count()).where(
                    jobs.c.concurrency_key == key,
                    jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                )
            ).scalar_one()
            held = c.execute(
                sa.select(sa.func.count()).where(
                    jobs.c.concurrency_key == key,
                    jobs.c.status == JobStatus.queued.value,
                    jobs.c.hold == "limit",
                )
            ).scalar_one()
        return Limit(key, max_running, int(running), int(held))

    def set_limit(self, key: str, max_running: int | None) -> Limit:
        """Set (``None``: remove) the limit of ``key``; a raised limit sends held jobs."""
        with self.store.engine.begin() as c:
            c.execute(concurrency_limits.delete().where(concurrency_limits.c.key == key))
            if max_running is not None:
                c.execute(
                    concurrency_limits.insert().values(
                        key=key, max_running=max_running, updated_at=self.store.now()
                    )
                )
        self.release_key(key)
        return self.limit(key)

    # ------------------------------------------------------------ idempotent submit

    def submit_idempotent(self, key: str, body: Any, spec: Any) -> tuple[Job, bool]:
        """Submit once per ``Idempotency-Key``: ``(job, created)`` (orchestrator/idempotency.py)."""
        from orchestrator.idempotency import submit_once

        return submit_once(self.d, key, body, spec)

    # ------------------------------------------------------------ re-runs

    def rerun(self, job_id: str) -> Job:
        """A new job from an ended job's spec, with ``rerun_of``."""
        job = self.store.get(job_id)
        if not job.ended:
            raise JobNotEnded(job_id, job.status)
        return self.d.submit(job.spec, rerun_of=job.id)

    def rerun_many(
        self,
        *,
        statuses: Iterable[str] = (JobStatus.failed.value,),
        executor: str | None = None,
        labels: dict[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Re-queue ended jobs matching a filter (default: failed ones): a new job each."""
        wanted = [s for s in statuses if JobStatus(s) in TERMINAL_STATUSES]
        if not wanted:
            raise ParamError("status", "re-runs take ended statuses (failed, timed_out, …)")
        found, _total = self.store.list(
            statuses=wanted,
            executor=executor,
            labels=labels,
            since=since,
            until=until,
            limit=limit,
        )
        return [self.d.submit(j.spec, rerun_of=j.id) for j in reversed(found)]

    # ------------------------------------------------------------ why it waits

    def waiting(self, job: Job, runners: list[RunnerInfo] | None = None) -> dict[str, Any] | None:
        """Why a queued job waits, machine-readable (``reason``) and as a ``message``."""
        if job.status != JobStatus.queued:
            return None
        now = self.store.now()
        if job.hold == "deps":
            with self.store.engine.connect() as c:
                rows = c.execute(
                    sa.select(job_deps.c.depends_on, jobs.c.status)
                    .select_from(job_deps.outerjoin(jobs, jobs.c.id == job_deps.c.depends_on))
                    .where(job_deps.c.job_id == job.id)
                ).all()
            pending = [d for d, s in rows if s != JobStatus.succeeded.value]
            return {
                "reason": "dependency",
                "waiting_on": pending,
                "message": f"waiting: {len(pending)} of {len(rows)} dependencies not done "
                f"({', '.join(p[:12] for p in pending[:5])})",
            }
        key = job.spec.concurrency_key
        if key is not None:
            lim = self.limit(key)
            if job.hold == "limit" or (
                lim.max_running is not None and lim.running >= lim.max_running
            ):
                return {
                    "reason": "concurrency_limit",
                    "key": key,
                    "running": lim.running,
                    "limit": lim.max_running,
                    "message": f"waiting: {key} {lim.running}/{lim.max_running}",
                }
        if job.not_before is not None and job.not_before > now:
            run_at = job.spec.run_at
            reason = "run_at" if run_at is not None and job.not_before <= run_at else "backoff"
            return {
                "reason": reason,
                "until": job.not_before.isoformat(),
                "message": f"waiting: {reason.replace('_', ' ')} until "
                + job.not_before.isoformat(),
            }
        if runners is None:
            runners = self.d.live_runners.get()
        if not any(not r.draining and _fits(r, job) for r in runners):
            tags = ",".join(job.spec.demands.tags)
            return {
                "reason": "no_runner",
                "executor": job.spec.executor,
                "tags": job.spec.demands.tags,
                "message": f"waiting: no live runner takes {job.spec.executor}"
                + (f" with tags {tags}" if tags else ""),
            }
        return {"reason": "slot", "message": "waiting for a free runner slot"}

    def with_waiting(self, job: Job, runners: list[RunnerInfo] | None = None) -> Job:
        if job.status != JobStatus.queued:
            return job
        return job.model_copy(update={"waiting": self.waiting(job, runners)})


def _fits(runner: Any, job: Job) -> bool:
    from orchestrator.capabilities import satisfies

    return bool(satisfies(runner, job.spec.executor, job.spec.demands))


class FlowListener(Listener):
    """Ends holds: a keyed job leaving its slot sends the key's held jobs; a job with
    dependents ending resolves them. Jobs with neither cost two attribute reads."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def transition(self, job: Job, event: EventType) -> None:
        left_slot = job.status in TERMINAL_STATUSES or event == EventType.requeued
        if job.spec.concurrency_key is not None and left_slot:
            self.flow.release_key(job.spec.concurrency_key)
        if job.has_dependents and job.status in TERMINAL_STATUSES:
            self.flow.resolve_dependents(job.id)
