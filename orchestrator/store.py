"""The job store: the only arbiter of job state.

Every transition is one ``UPDATE … WHERE id = ? AND status IN (…) [AND attempt = ?]``;
whoever's update matches a row wins, everyone else gets ``None`` back.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator.errors import JobNotEnded, JobNotFound, ParamError
from orchestrator.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptOutcome,
    AttemptRecord,
    Job,
    JobSpec,
    JobStatus,
    Progress,
    sources_of,
    task_id_for,
    utcnow,
)
from orchestrator.schema import attempts, concurrency_limits, job_deps, jobs, make_engine
from orchestrator.sessions import SessionBusy, guard_session_turn, session_turn

_SPEC = TypeAdapter(JobSpec)


def _row_to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    job = _job_of(m)
    if m.get("secrets"):
        job.spec.secrets = dict(m["secrets"])  # for the runner only: never serialized
    return job


def _job_of(m: Any) -> Job:
    return Job(
        id=m["id"],
        spec=_SPEC.validate_python(m["spec"]),
        status=JobStatus(m["status"]),
        attempt=m["attempt"],
        runner_id=m["runner_id"],
        task_id=m["task_id"],
        created_at=m["created_at"],
        claimed_at=m["claimed_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        lease_expires_at=m["lease_expires_at"],
        match_deadline=m["match_deadline"],
        not_before=m["not_before"],
        exit_code=m["exit_code"],
        error=m["error"],
        progress=Progress(percent=m["progress_percent"], message=m["progress_message"]),
        result=m["result"],
        steps=m["steps"] or [],
        artifacts=m["artifacts"] or [],
        resource_usage=m["resource_usage"],
        cancel_requested=bool(m["cancel_requested"]),
        cancel_requested_at=m["cancel_requested_at"],
        losses=m["losses"] or 0,
        handbacks=m["handbacks"] or 0,
        hold=m["hold"],
        rerun_of=m["rerun_of"],
        has_dependents=bool(m["has_dependents"]),
    )


# Run inside a transition's transaction with the row it won: writes the attempt's row.
_AttemptWrite = Callable[[sa.Connection, sa.Row[Any]], None]


# What a store that cannot be reached (a database restarting, a network partition, a
# SQLite file locked past its busy timeout) raises; callers retry or answer 503.
STORE_DOWN: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """SQLAlchemy-backed job store (SQLite by default, PostgreSQL for many machines)."""

    def __init__(
        self, url: str, *, create: bool = True, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.url = url
        self.now = clock
        self.engine = make_engine(url)
        if create:
            self.create_schema()

    def create_schema(self) -> None:
        from orchestrator.migrations import upgrade_to_head

        upgrade_to_head(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    def find(self, job_id: str) -> Job | None:
        try:
            return self.get(job_id)
        except JobNotFound:
            return None

    def existing_ids(self, ids: Iterable[str], *, batch: int = 500) -> set[str]:
        """Which of ``ids`` have a record."""
        wanted = list(ids)
        found: set[str] = set()
        with self.engine.connect() as c:
            for i in range(0, len(wanted), batch):
                chunk = wanted[i : i + batch]
                found.update(c.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk))).scalars())
        return found

    def list(
        self,
        *,
        statuses: Iterable[str] | None = None,
        executor: str | None = None,
        labels: dict[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        search: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[builtins.list[Job], int]:
        """Jobs newest first, and how many match in all. ``search``: a case-insensitive
        part of the name, or the start of the id."""
        conds: list[Any] = []
        statuses = list(statuses or [])
        if statuses:
            conds.append(jobs.c.status.in_(statuses))
        if executor:
            conds.append(jobs.c.executor == executor)
        if since:
            conds.append(jobs.c.created_at >= since)
        if until:
            conds.append(jobs.c.created_at < until)
        if search:
            conds.append(
                sa.or_(
                    sa.func.lower(jobs.c.name).contains(search.lower(), autoescape=True),
                    jobs.c.id.startswith(search.lower(), autoescape=True),
                )
            )
        q = sa.select(jobs).where(*conds).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        count_q = sa.select(sa.func.count()).select_from(jobs).where(*conds)
        with self.engine.connect() as c:
            if labels:
                # Labels are JSON; filter in Python to stay portable across backends.
                hits = [r for r in c.execute(q) if _labels_match(r._mapping["labels"], labels)]
                return [_row_to_job(r) for r in hits[offset : offset + limit]], len(hits)
            total = c.execute(count_q).scalar_one()
            rows = c.execute(q.limit(limit).offset(offset)).all()
        return [_row_to_job(r) for r in rows], int(total)

    def attempts(self, job_id: str) -> builtins.list[AttemptRecord]:
        """Every attempt of ``job_id`` that a runner claimed, in order."""
        q = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        return [AttemptRecord.model_validate({**r._mapping, "attempt": r.number}) for r in rows]

    def counts_by_status(self) -> dict[str, int]:
        q = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        with self.engine.connect() as c:
            found = {s: int(n) for s, n in c.execute(q)}
        return {s.value: found.get(s.value, 0) for s in JobStatus}

    def active_by_runner(self) -> dict[str, int]:
        q = (
            sa.select(jobs.c.runner_id, sa.func.count())
            .where(jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]))
            .group_by(jobs.c.runner_id)
        )
        with self.engine.connect() as c:
            return {r: int(n) for r, n in c.execute(q) if r}

    def _select_ids(self, *conds: Any) -> builtins.list[Job]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).where(*conds).order_by(jobs.c.created_at)).all()
        return [_row_to_job(r) for r in rows]

    def expired_leases(self, now: datetime | None = None) -> builtins.list[Job]:
        now = now or self.now()
        return self._select_ids(
            jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
            jobs.c.lease_expires_at < now,
        )

    def overdue_queued(self, now: datetime | None = None) -> builtins.list[Job]:
        """Queued jobs whose match deadline has passed. A held job (waiting on its
        dependencies or a full concurrency key) waits for no runner: its deadline starts
        when the hold ends."""
        now = now or self.now()
        return self._select_ids(
            jobs.c.status == JobStatus.queued.value,
            jobs.c.match_deadline < now,
            jobs.c.hold.is_(None),
        )

    def queued_older_than(self, when: datetime) -> builtins.list[Job]:
        """Queued jobs created before ``when`` that are due (not waiting out a delay)."""
        return self._select_ids(
            jobs.c.status == JobStatus.queued.value,
            jobs.c.created_at < when,
            sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= self.now()),
            jobs.c.hold.is_(None),  # a held job is sent when its hold ends
        )

    def take_due(self, limit: int = 500) -> builtins.list[Job]:
        """Queued jobs whose delay (``not_before``) has passed, each handed to exactly one
        caller: the delay is cleared in the same statement, so two reconcilers racing
        never both send a job. The caller sends them; one it fails to send is found by
        the lost-message sweep."""
        now = self.now()
        due = (
            sa.select(jobs.c.id)
            .where(jobs.c.status == JobStatus.queued.value, jobs.c.not_before <= now)
            .order_by(jobs.c.not_before)
            .limit(limit)
            .scalar_subquery()
        )
        with self.engine.begin() as c:
            rows = c.execute(
                jobs.update()
                .where(
                    jobs.c.id.in_(due),
                    jobs.c.status == JobStatus.queued.value,
                    jobs.c.not_before <= now,
                )
                .values(not_before=None)
                .returning(jobs)
            ).all()
        return [_row_to_job(r) for r in rows]

    def stuck_cancels(self, before: datetime) -> builtins.list[Job]:
        """Active jobs whose cancel was asked before ``before`` and never answered."""
        return self._select_ids(
            jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
            jobs.c.cancel_requested.is_(True),
            jobs.c.cancel_requested_at < before,
        )

    def ended_before(self, when: datetime) -> builtins.list[Job]:
        return self._select_ids(
            jobs.c.status.in_([s.value for s in TERMINAL_STATUSES]),
            sa.func.coalesce(jobs.c.finished_at, jobs.c.created_at) < when,
        )

    # ------------------------------------------------------------ writes

    def create(
        self,
        spec: Any,
        *,
        job_id: str | None = None,
        match_timeout_s: float | None = None,
        concurrency_key: str | None = None,
        rerun_of: str | None = None,
    ) -> Job:
        """Insert a queued job. Flow control (issue 14): ``run_at`` becomes its
        ``not_before``; ``depends_on`` rows are written in the same transaction, which also
        marks each dependency ``has_dependents`` and holds the job (``deps``) unless they
        all succeeded already; an unknown dependency is a ParamError."""
        spec = _SPEC.validate_python(spec) if isinstance(spec, dict) else spec
        now = self.now()
        timeout = spec.match_timeout_s or match_timeout_s
        job_id = job_id or new_job_id()
        values = {
            "id": job_id,
            "spec": spec.model_dump(mode="json"),  # (without its write-only secrets)
            "secrets": spec.secrets or None,
            "executor": spec.executor,
            "name": spec.name,
            "labels": spec.labels,
            "status": JobStatus.queued.value,
            "attempt": 1,
            "task_id": task_id_for(job_id, 1),
            "created_at": now,
            "match_deadline": now + timedelta(seconds=timeout) if timeout else None,
            "progress_percent": 0.0,
            "progress_message": "",
            "steps": [],
            "artifacts": [],
            "cancel_requested": False,
            "priority": spec.priority,
            "concurrency_key": concurrency_key or spec.concurrency_key,
            "rerun_of": rerun_of,
            "session_id": spec.session.id if spec.session else None,
        }
        if spec.run_at is not None and spec.run_at > now:
            values["not_before"] = spec.run_at
            if timeout:  # the wait for a runner starts at run_at
                values["match_deadline"] = spec.run_at + timedelta(seconds=timeout)
        with self.engine.begin() as c:
            if spec.depends_on:
                values["hold"] = _mark_dependencies(c, spec.depends_on)
            c.execute(jobs.insert().values(**values))
            if spec.depends_on:
                rows = [{"job_id": job_id, "depends_on": d} for d in spec.depends_on]
                c.execute(job_deps.insert(), rows)
        return self.get(values["id"])

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        attempt: int | None = None,
        expect: Iterable[JobStatus] | None = None,
        require_no_cancel: bool = False,
        **values: Any,
    ) -> Job | None:
        """Compare-and-set ``job_id`` to ``target``; the new job, or ``None`` if another won.

        The allowed sources come from the transition table; ``expect`` narrows them and
        ``attempt`` pins the attempt the caller believes is current.
        """
        return self._cas(
            job_id,
            target,
            attempt=attempt,
            expect=expect,
            require_no_cancel=require_no_cancel,
            values=values,
        )

    def _cas(
        self,
        job_id: str,
        target: JobStatus,
        *,
        attempt: int | None,
        expect: Iterable[JobStatus] | None,
        require_no_cancel: bool,
        values: dict[str, Any],
        runner_id: str | None = None,
        record: _AttemptWrite | None = None,
        where: Iterable[Any] = (),
    ) -> Job | None:
        sources = sources_of(target)
        if expect is not None:
            sources = sources & frozenset(expect)
        conds = [jobs.c.id == job_id, jobs.c.status.in_([s.value for s in sources])]
        if attempt is not None:
            conds.append(jobs.c.attempt == attempt)
        if runner_id is not None:
            conds.append(jobs.c.runner_id == runner_id)
        if require_no_cancel:
            conds.append(jobs.c.cancel_requested.is_(False))
        conds.extend(where)
        if target in TERMINAL_STATUSES:
            values.setdefault("finished_at", self.now())
            values.setdefault("lease_expires_at", None)
        with self.engine.begin() as c:
            # RETURNING: the winner reads its new row in the same statement.
            row = c.execute(
                jobs.update().where(*conds).values(status=target.value, **values).returning(jobs)
            ).first()
            if row is not None and record is not None:
                record(c, row)
        return _row_to_job(row) if row is not None else None

    def _end_attempt_row(
        self,
        number: int,
        outcome: AttemptOutcome,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        record: dict[str, Any] | None = None,
    ) -> _AttemptWrite:
        def write(c: sa.Connection, row: sa.Row[Any]) -> None:
            c.execute(
                attempts.update()
                .where(attempts.c.job_id == row.id, attempts.c.number == number)
                .values(
                    ended_at=self.now(),
                    outcome=outcome.value,
                    exit_code=exit_code,
                    error=error,
                    **(record or {}),  # handle, cleanup, resource_usage (run records)
                )
            )

        return write

    def claim(
        self, job_id: str, runner_id: str, lease_s: float, *, attempt: int | None = None
    ) -> Job | None:
        """queued → claimed by ``runner_id``, and the attempt's row, in one transaction."""
        now = self.now()

        def record(c: sa.Connection, row: sa.Row[Any]) -> None:
            if row.session_id is not None:
                guard_session_turn(c, row.session_id, row.id)  # raises: rolled back
            c.execute(
                attempts.insert().values(
                    job_id=row.id, number=row.attempt, runner_id=runner_id, claimed_at=now
                )
            )

        values = {
            "runner_id": runner_id,
            "claimed_at": now,
            "lease_expires_at": now + timedelta(seconds=lease_s),
        }
        try:
            won = self._cas(
                job_id,
                JobStatus.claimed,
                attempt=attempt,
                expect=None,
                require_no_cancel=False,
                values=dict(values),
                record=record,
                # Flow control: a held job is not claimable; a keyed one takes _claim_keyed.
                # Sessions: one run of a session at a time, in order (orchestrator/sessions.py).
                where=[jobs.c.hold.is_(None), jobs.c.concurrency_key.is_(None), session_turn()],
            )
            if won is None:  # only a lost claim pays for the look at the key
                won = self._claim_keyed(job_id, attempt, values, record)
        except SessionBusy:  # another run of its session won meanwhile (rolled back)
            return None
        return won

    def _claim_keyed(
        self, job_id: str, attempt: int | None, values: dict[str, Any], record: _AttemptWrite
    ) -> Job | None:
        """Claim a job with a concurrency key: the key's running count is a condition of
        the same compare-and-set, under the key's lock, so no two claims over-admit. A job
        refused for a full key is held (``hold='limit'``) in the same transaction;
        :meth:`release_key` frees it when a slot does."""
        with self.engine.connect() as c:
            key = c.execute(
                sa.select(jobs.c.concurrency_key).where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.queued.value,
                    jobs.c.hold.is_(None),
                )
            ).scalar()
        if key is None:
            return None
        conds = [
            jobs.c.id == job_id,
            jobs.c.status == JobStatus.queued.value,
            jobs.c.hold.is_(None),
            jobs.c.concurrency_key == key,
            session_turn(),
        ]
        if attempt is not None:
            conds.append(jobs.c.attempt == attempt)
        room = _key_room(key)
        with self.engine.begin() as c:
            _lock_key(c, key)
            row = c.execute(
                jobs.update()
                .where(*conds, room)
                .values(status=JobStatus.claimed.value, **values)
                .returning(jobs)
            ).first()
            if row is not None:
                record(c, row)
            else:
                c.execute(jobs.update().where(*conds, sa.not_(room)).values(hold="limit"))
        return _row_to_job(row) if row is not None else None

    def release_key(self, key: str, match_timeout_s: float | None = None) -> builtins.list[Job]:
        """Un-hold as many of ``key``'s held jobs as it has free slots, highest priority
        first; the caller sends them (one that loses its claim is held again). Each one's
        wait for a runner starts now (its own ``match_timeout_s``, else the one given)."""
        with self.engine.begin() as c:
            _lock_key(c, key)
            limit = c.execute(
                sa.select(concurrency_limits.c.max_running).where(concurrency_limits.c.key == key)
            ).scalar()
            running = c.execute(_running_count(key)).scalar_one()
            free = 10_000 if limit is None else int(limit) - int(running)
            if free <= 0:
                return []
            held = c.execute(
                sa.select(jobs.c.id, jobs.c.spec)
                .where(
                    jobs.c.concurrency_key == key,
                    jobs.c.status == JobStatus.queued.value,
                    jobs.c.hold == "limit",
                )
                .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
                .limit(free)
            ).all()
            rows = []
            for job_id, spec in held:
                row = c.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.hold == "limit")
                    .values(hold=None, match_deadline=self._deadline(spec, match_timeout_s))
                    .returning(jobs)
                ).first()
                if row is not None:
                    rows.append(row)
        return [_row_to_job(r) for r in rows]

    def unhold_deps(self, job_id: str, match_timeout_s: float | None = None) -> Job | None:
        """A job held on its dependencies becomes claimable (its wait for a runner starts
        now); ``None`` if it was not held so (ended, or released by someone else)."""
        with self.engine.begin() as c:
            spec = c.execute(sa.select(jobs.c.spec).where(jobs.c.id == job_id)).scalar()
            row = c.execute(
                jobs.update()
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.queued.value,
                    jobs.c.hold == "deps",
                )
                .values(hold=None, match_deadline=self._deadline(spec, match_timeout_s))
                .returning(jobs)
            ).first()
        return _row_to_job(row) if row is not None else None

    def _deadline(self, spec: Any, default_s: float | None) -> datetime | None:
        timeout = ((spec or {}).get("match_timeout_s")) or default_s
        return self.now() + timedelta(seconds=timeout) if timeout else None

    def claim_next(
        self,
        runner_id: str,
        executors: Iterable[str],
        tags: Iterable[str],
        lease_s: float,
        *,
        page: int = 200,
        max_scan: int = 2000,
    ) -> Job | None:
        """Claim the oldest queued job this runner can take, or ``None``.

        A job fits when its executor is one of ``executors`` and its demand tags are a subset
        of ``tags`` (the same rule as Celery routing). Tags live in the JSON spec, so they are
        matched here, page by page; each fit is tried with the ordinary ``claim`` CAS, so a
        Celery worker or another agent racing for the same job loses cleanly.
        """
        have = set(tags)
        now = self.now()
        conds = [
            jobs.c.status == JobStatus.queued.value,
            jobs.c.executor.in_(list(executors)),
            sa.or_(jobs.c.match_deadline.is_(None), jobs.c.match_deadline >= now),
            sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
            jobs.c.hold.is_(None),
        ]
        after: tuple[int, datetime, str] | None = None
        scanned = 0
        while scanned < max_scan:
            q = sa.select(jobs.c.id, jobs.c.spec, jobs.c.created_at, jobs.c.priority).where(*conds)
            if after is not None:  # keyset paging: higher priority first, then oldest
                q = q.where(
                    sa.or_(
                        jobs.c.priority < after[0],
                        sa.and_(
                            jobs.c.priority == after[0],
                            sa.tuple_(jobs.c.created_at, jobs.c.id) > sa.tuple_(*after[1:]),
                        ),
                    )
                )
            order = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
            with self.engine.connect() as c:
                rows = c.execute(q.order_by(*order).limit(page)).all()
            for job_id, spec, _created, _priority in rows:
                wanted = set(((spec or {}).get("demands") or {}).get("tags") or [])
                if wanted <= have:
                    won = self.claim(job_id, runner_id, lease_s)
                    if won is not None:
                        return won
            if len(rows) < page:
                return None
            scanned += len(rows)
            after = (rows[-1][3], rows[-1][2], rows[-1][0])
        return None

    def start(
        self,
        job_id: str,
        attempt: int,
        lease_s: float,
        *,
        runner_id: str | None = None,
        handle: str | None = None,
    ) -> Job | None:
        """claimed → running; the attempt's row gets its start time and launch handle."""
        now = self.now()

        def record(c: sa.Connection, row: sa.Row[Any]) -> None:
            c.execute(
                attempts.update()
                .where(attempts.c.job_id == row.id, attempts.c.number == attempt)
                .values(started_at=now, **({"handle": handle[:512]} if handle else {}))
            )

        return self._cas(
            job_id,
            JobStatus.running,
            attempt=attempt,
            expect=None,
            require_no_cancel=False,
            runner_id=runner_id,
            values={"started_at": now, "lease_expires_at": now + timedelta(seconds=lease_s)},
            record=record,
        )

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        runner_id: str | None = None,
        record: dict[str, Any] | None = None,
        **values: Any,
    ) -> Job | None:
        """Terminal CAS from claimed/running. Neither success nor failure wins over an
        accepted cancel (the caller ends it ``cancelled`` instead); a run-time limit that
        fired does. ``record``: the attempt row's run-record fields."""
        return self._cas(
            job_id,
            status,
            attempt=attempt,
            expect=ACTIVE_STATUSES,
            require_no_cancel=status in (JobStatus.succeeded, JobStatus.failed),
            runner_id=runner_id,
            values={"exit_code": exit_code, "error": error, **values},
            record=self._end_attempt_row(
                attempt,
                AttemptOutcome(status.value),
                exit_code=exit_code,
                error=error,
                record=record,
            ),
        )

    def requeue(
        self,
        job_id: str,
        attempt: int,
        *,
        reason: str,
        outcome: AttemptOutcome = AttemptOutcome.retried,
        exit_code: int | None = None,
        match_timeout_s: float | None = None,
        delay_s: float | None = None,
        runner_id: str | None = None,
        record: dict[str, Any] | None = None,
        **values: Any,
    ) -> Job | None:
        """Active → queued with the next attempt; the ended attempt's row says why.

        ``outcome`` is ``retried`` (the job's own failure: spends ``max_attempts``),
        ``lost`` (spends the loss budget) or ``handed_back`` (spends nothing).
        ``delay_s`` is a retry's backoff: the job is ``not_before`` now + delay, which the
        pull path (:meth:`claim_next`) honours; the Celery message carries the same delay as
        its countdown.
        """
        now = self.now()
        counters: dict[str, Any] = {}
        if outcome == AttemptOutcome.lost:
            counters["losses"] = jobs.c.losses + 1
        elif outcome == AttemptOutcome.handed_back:
            counters["handbacks"] = jobs.c.handbacks + 1
        return self._cas(
            job_id,
            JobStatus.queued,
            attempt=attempt,
            expect=ACTIVE_STATUSES,
            require_no_cancel=True,
            runner_id=runner_id,
            values={
                **values,
                **counters,
                "attempt": attempt + 1,
                "task_id": task_id_for(job_id, attempt + 1),
                "runner_id": None,
                "claimed_at": None,
                "started_at": None,
                "lease_expires_at": None,
                "error": reason,
                "exit_code": None,
                "progress_percent": 0.0,
                "progress_message": "",
                "match_deadline": (
                    now + timedelta(seconds=(match_timeout_s + (delay_s or 0)))
                    if match_timeout_s
                    else None
                ),
                "not_before": now + timedelta(seconds=delay_s) if delay_s else None,
            },
            record=self._end_attempt_row(
                attempt, outcome, exit_code=exit_code, error=reason, record=record
            ),
        )

    def request_cancel(self, job_id: str) -> Job | None:
        """Mark an active job's cancel as asked; ``None`` if it is not active."""
        with self.engine.begin() as c:
            res = c.execute(
                jobs.update()
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                    jobs.c.cancel_requested.is_(False),
                )
                .values(cancel_requested=True, cancel_requested_at=self.now())
            )
        return self.get(job_id) if res.rowcount == 1 else None

    def _update_active(
        self, job_id: str, attempt: int, runner_id: str | None = None, **values: Any
    ) -> bool:
        conds = [
            jobs.c.id == job_id,
            jobs.c.attempt == attempt,
            jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
        ]
        if runner_id is not None:
            conds.append(jobs.c.runner_id == runner_id)
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(*conds).values(**values))
        return res.rowcount == 1

    def renew_lease(
        self, job_id: str, attempt: int, lease_s: float, *, runner_id: str | None = None
    ) -> bool:
        return self._update_active(
            job_id,
            attempt,
            runner_id,
            lease_expires_at=self.now() + timedelta(seconds=lease_s),
        )

    def set_progress(
        self,
        job_id: str,
        attempt: int,
        percent: float,
        message: str,
        *,
        runner_id: str | None = None,
    ) -> bool:
        return self._update_active(
            job_id,
            attempt,
            runner_id,
            progress_percent=float(percent),
            progress_message=message,
        )

    def update_fields(
        self, job_id: str, attempt: int, *, runner_id: str | None = None, **values: Any
    ) -> bool:
        """Set non-status fields (result, steps, artifacts…) of the live attempt."""
        if not values:  # an UPDATE with an empty SET is a syntax error
            job = self.find(job_id)
            return (
                job is not None
                and job.attempt == attempt
                and job.status in ACTIVE_STATUSES
                and (runner_id is None or job.runner_id == runner_id)
            )
        return self._update_active(job_id, attempt, runner_id, **values)

    def set_task_id(self, job_id: str, task_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == job_id).values(task_id=task_id))

    def delete(self, job_id: str) -> Job:
        """Remove an ended job's record; raises if it has not ended."""
        job = self.get(job_id)
        if not job.ended:
            raise JobNotEnded(job_id, job.status)
        with self.engine.begin() as c:
            gone = c.execute(
                jobs.delete().where(
                    jobs.c.id == job_id,
                    jobs.c.status.in_([s.value for s in TERMINAL_STATUSES]),
                )
            )
            if gone.rowcount:
                c.execute(attempts.delete().where(attempts.c.job_id == job_id))
                c.execute(job_deps.delete().where(job_deps.c.job_id == job_id))
        return job


def _running_count(key: str) -> Any:
    running = jobs.alias("running_jobs")
    return (
        sa.select(sa.func.count())
        .select_from(running)
        .where(
            running.c.concurrency_key == key,
            running.c.status.in_([s.value for s in ACTIVE_STATUSES]),
        )
    )


def _key_room(key: str) -> Any:
    """A condition: ``key`` has fewer running jobs than its limit (no limit: always)."""
    limit = (
        sa.select(concurrency_limits.c.max_running)
        .where(concurrency_limits.c.key == key)
        .scalar_subquery()
    )
    return sa.or_(limit.is_(None), _running_count(key).scalar_subquery() < limit)


def _lock_key(c: sa.Connection, key: str) -> None:
    """Serialise the claims and releases of one concurrency key until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock, so the count read by the next statement
    includes every committed claim. SQLite has one writer at a time; a first statement
    that writes takes that lock before anything is read (a transaction that read first
    could not write later without failing on a stale snapshot)."""
    if c.dialect.name == "postgresql":
        c.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"lb:key:{key}"))))
    else:
        c.execute(
            concurrency_limits.update()
            .where(concurrency_limits.c.key == key)
            .values(max_running=concurrency_limits.c.max_running)
        )


def _mark_dependencies(c: sa.Connection, deps: builtins.list[str]) -> str | None:
    """Mark ``deps`` as having dependents (their rows locked till commit, so none ends
    unseen); ``'deps'`` unless all of them succeeded already."""
    found: dict[str, str] = dict(
        c.execute(
            jobs.update()
            .where(jobs.c.id.in_(deps))
            .values(has_dependents=True)
            .returning(jobs.c.id, jobs.c.status)
        ).all()
    )
    missing = [d for d in deps if d not in found]
    if missing:
        raise ParamError("depends_on", f"unknown job id(s): {', '.join(missing[:10])}")
    return None if all(s == JobStatus.succeeded.value for s in found.values()) else "deps"


def _labels_match(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    have = have or {}
    return all(have.get(k) == v for k, v in want.items())
