"""The job store: the only arbiter of job state.

Every transition is one ``UPDATE … WHERE id = ? AND status IN (…) [AND attempt = ?]``;
whoever's update matches a row wins, everyone else gets ``None`` back.
"""

from __future__ import annotations

import builtins
import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator.driver import Driver, Transaction
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
    can_transition,
    sources_of,
    task_id_for,
    utcnow,
)
from orchestrator.schema import (
    any_of,
    attempts,
    concurrency_limits,
    job_deps,
    jobs,
    make_engine,
    on_the_row,
    one_job,
)
from orchestrator.sessions import SessionBusy, guard_session_turn, session_turn

_SPEC = TypeAdapter(JobSpec)


def _row_to_job(row: sa.Row[Any], spec: Any = None) -> Job:
    """The job a row holds; ``spec``: its spec as the caller holds it already (a job's
    spec never changes), instead of validating the row's again."""
    return _job_from(row._mapping, spec)


def _job_from(m: Any, spec: Any = None) -> Job:
    """:func:`_row_to_job` of a row as a mapping (a :class:`Driver` row)."""
    job = _job_of(m, spec)
    if m.get("secrets"):
        job.spec.secrets = dict(m["secrets"])  # for the runner only: never serialized
    return job


def _job_of(m: Any, spec: Any = None) -> Job:
    return Job(
        id=m["id"],
        spec=spec if spec is not None else _SPEC.validate_python(m["spec"]),
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


# Built once: a statement built per call costs more than the database spends on it.
_GET_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("job_id"))
_INSERT_JOB = jobs.insert()
_INSERT_DEP = job_deps.insert()
_PING: Any = sa.select(sa.literal_column("1").label("one"))
# PostgreSQL: up to this many jobs go in one multi-row INSERT (one statement, so all or
# none in autocommit: submits gathered into one, api/submits.py); a bigger batch takes a
# transaction.
_INSERT_MANY_MAX = 64


@functools.lru_cache(maxsize=_INSERT_MANY_MAX)
def _insert_jobs_stmt(keys: tuple[str, ...], n: int) -> Any:
    """INSERT of ``n`` rows of ``keys`` in one statement; parameters ``<key>_<row>``."""
    return jobs.insert().values(
        [{k: sa.bindparam(f"{k}_{i}", type_=jobs.c[k].type) for k in keys} for i in range(n)]
    )


def _insert_job(c: sa.Connection, spec: Any, values: dict[str, Any]) -> None:
    if spec.depends_on:
        values["hold"] = _mark_dependencies(c, spec.depends_on)
    c.execute(_INSERT_JOB, values)
    if spec.depends_on:
        c.execute(_INSERT_DEP, [{"job_id": values["id"], "depends_on": d} for d in spec.depends_on])


def _inserted(spec: Any, v: dict[str, Any]) -> Job:
    """The job a fresh row holds, from what was inserted (what reading it back gives)."""
    return Job(
        id=v["id"],
        spec=spec,
        task_id=v["task_id"],
        created_at=v["created_at"],
        match_deadline=v["match_deadline"],
        not_before=v["not_before"],
        progress=Progress(percent=0.0, message=""),
        hold=v["hold"],
        rerun_of=v["rerun_of"],
    )


# Run inside a transition's transaction with the row it won: writes the attempt's row.
_AttemptWrite = Callable[[sa.Connection, sa.Row[Any]], None]


class _AttemptRow:
    """An :data:`_AttemptWrite` that sets ``fields`` on attempt ``number``'s row: in the
    transition's transaction, or (PostgreSQL) in its very statement
    (:func:`_with_attempt_update`)."""

    __slots__ = ("number", "fields")

    def __init__(self, number: int, fields: dict[str, Any]) -> None:
        self.number = number
        self.fields = fields

    def __call__(self, c: sa.Connection, row: sa.Row[Any]) -> None:
        c.execute(*self.update(row.id))

    def update(self, job_id: str) -> tuple[Any, dict[str, Any]]:
        """The statement that writes it, and its parameters."""
        params = {f"v_{k}": v for k, v in self.fields.items()}
        return _attempt_update_stmt(tuple(self.fields)), {
            "p_id": job_id,
            "p_number": self.number,
            **params,
        }

    def params(self) -> dict[str, Any]:
        return {"a_number": self.number, **{f"a_{k}": v for k, v in self.fields.items()}}


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
        # PostgreSQL: one statement that is a whole transaction runs in autocommit (no
        # BEGIN and COMMIT round trips: a read 0.5 → 0.3 ms), and a transition writes its
        # attempt's row in the same statement (a data-modifying CTE): a claim, a start
        # and an end are one round trip each, not four. SQLite: one transaction as before
        # (its statements cost no round trip; SQLite has no DML in a CTE).
        self._folds = self.engine.dialect.name == "postgresql"
        # The statements every job runs (insert, claim, start, renew, end, read by id),
        # run on the driver's connection: the same SQL, without SQLAlchemy's execution
        # layer (orchestrator/driver.py).
        self._driver = Driver(self.engine, autocommit=self._folds)
        if create:
            self.create_schema()

    def create_schema(self) -> None:
        from orchestrator.migrations import upgrade_to_head

        upgrade_to_head(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job:
        with self._driver.read() as tx:
            row = tx.first(_GET_JOB, {"job_id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return _job_from(row)

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
                hits = [r for r in c.execute(q) if labels_match(r._mapping["labels"], labels)]
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

    def ping(self) -> None:
        """One round trip that reads nothing (``/healthz``); raises if the store is down."""
        with self._driver.read() as tx:
            tx.first(_PING, {})

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
        """Insert a queued job and answer it as inserted (no read-back). Flow control
        (issue 14): ``run_at`` becomes its ``not_before``; ``depends_on`` rows are written
        in the same transaction, which also marks each dependency ``has_dependents`` and
        holds the job (``deps``) unless they all succeeded already; an unknown dependency
        is a ParamError."""
        spec = _SPEC.validate_python(spec) if isinstance(spec, dict) else spec
        values = self._new_row(spec, job_id, match_timeout_s, concurrency_key, rerun_of)
        if spec.depends_on:
            with self.engine.begin() as c:
                _insert_job(c, spec, values)
        else:
            with self._driver.write() as tx:
                tx.run(_INSERT_JOB, values)
        return _inserted(spec, values)

    def create_many(
        self, specs: Sequence[Any], *, match_timeout_s: float | None = None
    ) -> builtins.list[Job]:
        """Insert queued jobs in one transaction (all or none), answered in order; the
        rules of :meth:`create` hold for each (a ParamError names the job: ``jobs[i].…``)."""
        rows = [(s, self._new_row(s, None, match_timeout_s, None, None)) for s in specs]
        no_deps = not any(spec.depends_on for spec in specs)
        if no_deps and not self._folds:  # SQLite: one transaction, as below
            with self._driver.write() as tx:
                tx.run_many(_INSERT_JOB, [values for _spec, values in rows])
            return [_inserted(spec, values) for spec, values in rows]
        if no_deps and len(rows) <= _INSERT_MANY_MAX:  # PostgreSQL: one statement (autocommit)
            params = {
                f"{k}_{i}": v for i, (_s, values) in enumerate(rows) for k, v in values.items()
            }
            with self._driver.write() as tx:
                tx.run(_insert_jobs_stmt(tuple(rows[0][1]), len(rows)), params)
            return [_inserted(spec, values) for spec, values in rows]
        with self.engine.begin() as c:
            plain = [values for spec, values in rows if not spec.depends_on]
            if plain:
                c.execute(_INSERT_JOB, plain)
            for i, (spec, values) in enumerate(rows):
                if spec.depends_on:
                    try:
                        _insert_job(c, spec, values)
                    except ParamError as exc:
                        raise ParamError(f"jobs[{i}].{exc.field}", str(exc)) from None
        return [_inserted(spec, values) for spec, values in rows]

    def _new_row(
        self,
        spec: Any,
        job_id: str | None,
        match_timeout_s: float | None,
        concurrency_key: str | None,
        rerun_of: str | None,
    ) -> dict[str, Any]:
        # Every row has the same keys, so one compiled INSERT serves every job.
        now = self.now().astimezone(UTC)  # (as the column reads it back)
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
            "not_before": None,
            "progress_percent": 0.0,
            "progress_message": "",
            "steps": [],
            "artifacts": [],
            "cancel_requested": False,
            "priority": spec.priority,
            "concurrency_key": concurrency_key or spec.concurrency_key,
            "hold": None,
            "rerun_of": rerun_of,
            "session_id": spec.session.id if spec.session else None,
        }
        if spec.run_at is not None and spec.run_at > now:
            values["not_before"] = spec.run_at
            if timeout:  # the wait for a runner starts at run_at
                values["match_deadline"] = spec.run_at + timedelta(seconds=timeout)
        return values

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
        spec: Any = None,
    ) -> Job | None:
        sources = sources_of(target)
        if expect is not None:
            sources = sources & frozenset(expect)
        if target in TERMINAL_STATUSES:
            values.setdefault("finished_at", self.now())
            values.setdefault("lease_expires_at", None)
        if not where and not any(isinstance(v, sa.ClauseElement) for v in values.values()):
            stmt = _cas_stmt(
                target,
                sources,
                tuple(values),
                attempt is not None,
                runner_id is not None,
                require_no_cancel,
            )
            params = {f"v_{k}": v for k, v in values.items()}
            params.update(p_id=job_id, p_attempt=attempt, p_runner=runner_id)
            if record is None or isinstance(record, _AttemptRow):
                if record is not None and self._folds:  # (its attempt's row in the statement)
                    stmt = _with_attempt_update(stmt, tuple(record.fields))
                    params.update(record.params())
                with self._driver.write() as tx:
                    won = tx.first(stmt, params)
                    if won is not None and record is not None and not self._folds:
                        tx.run(*record.update(job_id))
                return _job_from(won, spec) if won is not None else None
            with self.engine.begin() as c:
                row = c.execute(stmt, params).first()
                if row is not None and record is not None:
                    record(c, row)
            return _row_to_job(row, spec) if row is not None else None
        # A value computed in SQL (a counter) or an extra condition: built for this call.
        conds: list[Any] = [jobs.c.status.in_([s.value for s in sources])]
        if attempt is not None:
            conds.append(jobs.c.attempt == attempt)
        if runner_id is not None:
            conds.append(jobs.c.runner_id == runner_id)
        if require_no_cancel:
            conds.append(jobs.c.cancel_requested.is_(False))
        conds.extend(where)
        update = jobs.update().where(one_job(job_id, *conds))
        with self.engine.begin() as c:
            # RETURNING: the winner reads its new row in the same statement.
            row = c.execute(update.values(status=target.value, **values).returning(jobs)).first()
            if row is not None and record is not None:
                record(c, row)
        return _row_to_job(row, spec) if row is not None else None

    def _end_attempt_row(
        self,
        number: int,
        outcome: AttemptOutcome,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        record: dict[str, Any] | None = None,
    ) -> _AttemptRow:
        fields = {
            "ended_at": self.now(),
            "outcome": outcome.value,
            "exit_code": exit_code,
            "error": error,
            **(record or {}),  # handle, cleanup, resource_usage (run records)
        }
        return _AttemptRow(number, fields)

    def claim(
        self,
        job_id: str,
        runner_id: str,
        lease_s: float,
        *,
        attempt: int | None = None,
        start_at_once: frozenset[str] = frozenset(),
    ) -> Job | None:
        """queued → claimed by ``runner_id``, and the attempt's row, in one transaction.

        A job whose executor is in ``start_at_once`` (one its runner launches in-process
        at once, so nothing can fail or wait between claim and start) goes queued →
        running in the same compare-and-set, its attempt row claimed and started."""
        now = self.now()
        params = {
            "p_id": job_id,
            "p_attempt": attempt,
            "v_runner_id": runner_id,
            "v_claimed_at": now,
            "v_lease_expires_at": now + timedelta(seconds=lease_s),
        }
        pinned = attempt is not None
        try:
            # Flow control: a held job is not claimable; a keyed one takes _claim_keyed.
            # Sessions: one run of a session at a time, in order (orchestrator/sessions.py).
            # A job of no session and no key: its claim and its attempt's row, on the
            # driver's connection (PostgreSQL: one statement).
            with self._driver.write() as tx:
                won = self._claim_plain(tx, start_at_once, pinned, params)
            if won is not None:
                return _job_from(won)
            with self.engine.begin() as c:  # (a job of a session: its turn guarded)
                row = c.execute(_claim_stmt(start_at_once, pinned, False), params).first()
                if row is not None:
                    _claimed(c, row, runner_id, now)
            if row is None:  # only a lost claim pays for the look at the key
                row = self._claim_keyed(params, start_at_once)
        except SessionBusy:  # another run of its session won meanwhile (rolled back)
            return None
        return _row_to_job(row) if row is not None else None

    def _claim_plain(
        self, tx: Transaction, start_at_once: frozenset[str], pinned: bool, params: dict[str, Any]
    ) -> dict[str, Any] | None:
        """In ``tx``: the claim of a job of no session and no key, and its attempt's row
        (PostgreSQL: one statement); the claimed row, or ``None``."""
        if self._folds:
            return tx.first(_claim_folded_stmt(start_at_once, pinned), params)
        won = tx.first(_claim_plain_stmt(start_at_once, pinned), params)
        if won is not None:
            tx.run(
                _INSERT_ATTEMPT, _attempt_row(won, params["v_runner_id"], params["v_claimed_at"])
            )
        return won

    def _claim_keyed(
        self, params: dict[str, Any], start_at_once: frozenset[str]
    ) -> sa.Row[Any] | None:
        """Claim a job with a concurrency key: the key's running count is a condition of
        the same compare-and-set, under the key's lock, so no two claims over-admit. A job
        refused for a full key is held (``hold='limit'``) in the same transaction;
        :meth:`release_key` frees it when a slot does."""
        with self.engine.connect() as c:
            key = c.execute(_KEY_OF_CLAIMABLE, {"p_id": params["p_id"]}).scalar()
        if key is None:
            return None
        params = {**params, "p_key": key}
        pinned = params["p_attempt"] is not None
        with self.engine.begin() as c:
            _lock_key(c, key)
            row = c.execute(_claim_stmt(start_at_once, pinned, True), params).first()
            if row is not None:
                _claimed(c, row, params["v_runner_id"], params["v_claimed_at"])
            else:
                c.execute(_hold_for_limit_stmt(pinned), params)
        return row

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
                    .where(one_job(job_id, jobs.c.hold == "limit"))
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
                    one_job(job_id, jobs.c.status == JobStatus.queued.value, jobs.c.hold == "deps")
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
        params: dict[str, Any] = {
            "p_now": self.now(),
            "p_executors": list(executors),
            "p_page": page,
        }
        after = False
        scanned = 0
        while scanned < max_scan:
            with self.engine.connect() as c:
                rows = c.execute(_scan_stmt(after), params).all()
            for job_id, spec, _created, _priority in rows:
                wanted = set(((spec or {}).get("demands") or {}).get("tags") or [])
                if wanted <= have:
                    won = self.claim(job_id, runner_id, lease_s)
                    if won is not None:
                        return won
            if len(rows) < page:
                return None
            scanned += len(rows)
            after = True  # keyset paging: higher priority first, then oldest
            params.update(p_priority=rows[-1][3], p_created=rows[-1][2], p_after=rows[-1][0])
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

        fields: dict[str, Any] = {"started_at": now}
        if handle:
            fields["handle"] = handle[:512]
        return self._cas(
            job_id,
            JobStatus.running,
            attempt=attempt,
            expect=None,
            require_no_cancel=False,
            runner_id=runner_id,
            values={"started_at": now, "lease_expires_at": now + timedelta(seconds=lease_s)},
            record=_AttemptRow(attempt, fields),
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
        same_spec: Any = None,
        **values: Any,
    ) -> Job | None:
        """Terminal CAS from claimed/running. Neither success nor failure wins over an
        accepted cancel (the caller ends it ``cancelled`` instead); a run-time limit that
        fired does. ``record``: the attempt row's run-record fields; ``same_spec``: the
        job's spec as the caller holds it (the answer reuses it)."""
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
            spec=same_spec,
        )

    def rehearse_attempt_rows(
        self,
        runner_id: str,
        record: dict[str, Any],
        start_at_once: frozenset[str] = frozenset(),
    ) -> None:
        """Claim a job that exists only inside one transaction, read the claimed row as a
        job, write its attempt row's claim and end (with ``record``'s run-record fields),
        and roll it all back: nothing changes, but a new process has those statements
        compiled and cached, and the job model's validation warmed, before its first
        attempt (see :meth:`Lifecycle.rehearse`)."""
        end = self._end_attempt_row(0, AttemptOutcome.succeeded, record=record)
        spec = _SPEC.validate_python(_REHEARSAL_SPEC)
        now = self.now()
        params = {
            "p_id": _REHEARSAL_ID,
            "p_attempt": 1,
            "v_runner_id": runner_id,
            "v_claimed_at": now,
            "v_lease_expires_at": now,
        }
        with self._driver.rehearsal() as tx:
            tx.run(_INSERT_JOB, self._new_row(spec, _REHEARSAL_ID, None, None, None))
            won = self._claim_plain(tx, start_at_once, True, params)
            if won is not None:
                _job_from(won)
                if not self._folds:
                    tx.run(*end.update(_REHEARSAL_ID))

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
                    one_job(
                        job_id,
                        jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                        jobs.c.cancel_requested.is_(False),
                    )
                )
                .values(cancel_requested=True, cancel_requested_at=self.now())
            )
        return self.get(job_id) if res.rowcount == 1 else None

    def _update_active(
        self, job_id: str, attempt: int, runner_id: str | None = None, **values: Any
    ) -> bool:
        return self._set_active(job_id, attempt, runner_id, values, cancel_flag=False) is not None

    def _set_active(
        self,
        job_id: str,
        attempt: int,
        runner_id: str | None,
        values: dict[str, Any],
        *,
        cancel_flag: bool,
    ) -> bool | None:
        """Set ``values`` on the live attempt: ``None`` if it is not (or no longer) live,
        else whether its cancel was asked (with ``cancel_flag``; else ``True``)."""
        stmt = _active_update_stmt(tuple(values), runner_id is not None, cancel_flag)
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(p_id=job_id, p_attempt=attempt, p_runner=runner_id)
        with self._driver.write() as tx:
            if not cancel_flag:
                return True if tx.run(stmt, params) == 1 else None
            row = tx.first(stmt, params)
        return None if row is None else bool(row["cancel_requested"])

    def renew_lease(
        self, job_id: str, attempt: int, lease_s: float, *, runner_id: str | None = None
    ) -> bool:
        return self.extend_lease(job_id, attempt, lease_s, runner_id=runner_id) is not None

    def extend_lease(
        self,
        job_id: str,
        attempt: int,
        lease_s: float,
        *,
        runner_id: str | None = None,
        progress: tuple[float, str] | None = None,
    ) -> bool | None:
        """Renew the live attempt's lease (storing ``progress`` with it) in one statement:
        ``None`` if the attempt is no longer live, else whether its cancel was asked."""
        values: dict[str, Any] = {"lease_expires_at": self.now() + timedelta(seconds=lease_s)}
        if progress is not None:
            values.update(progress_percent=float(progress[0]), progress_message=progress[1])
        return self._set_active(job_id, attempt, runner_id, values, cancel_flag=True)

    def active_count(self, runner_id: str) -> int:
        """How many jobs ``runner_id`` holds (claimed or running)."""
        with self.engine.connect() as c:
            return int(c.execute(_ACTIVE_COUNT, {"p_runner": runner_id}).scalar_one())

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
                    one_job(job_id, jobs.c.status.in_([s.value for s in TERMINAL_STATUSES]))
                )
            )
            if gone.rowcount:
                c.execute(attempts.delete().where(attempts.c.job_id == job_id))
                c.execute(job_deps.delete().where(job_deps.c.job_id == job_id))
        return job


# ---------------------------------------------------------------- the hot statements
#
# An attempt's own writes (claim, start, renew, progress, end) are built once per shape
# and cached: building a statement and its cache key costs more than SQLite spends
# running it. Parameters are ``p_*`` (conditions) and ``v_*`` (values set), names no
# column has, so SQLAlchemy never reads one as an extra SET column.


def _v(keys: Iterable[str]) -> dict[str, Any]:
    return {k: sa.bindparam(f"v_{k}") for k in keys}


@functools.cache
def _claim_stmt(start_at_once: frozenset[str], pinned: bool, keyed: bool) -> Any:
    """queued → claimed (or → running for an executor in ``start_at_once``: the claim and
    the start, both in the transition table, in one write), fenced by the claim's
    conditions: not held, its session's turn, and for a keyed job its key's room (the
    caller holds the key's lock)."""
    assert can_transition(JobStatus.claimed, JobStatus.running)
    conds = [
        any_of(jobs.c.status, sources_of(JobStatus.claimed)),
        jobs.c.hold.is_(None),
        session_turn(),
    ]
    if pinned:
        conds.append(jobs.c.attempt == sa.bindparam("p_attempt"))
    if keyed:
        key = sa.bindparam("p_key", type_=jobs.c.concurrency_key.type)
        conds += [jobs.c.concurrency_key == key, _key_room(key)]
    else:  # a keyed job takes the keyed claim
        conds.append(jobs.c.concurrency_key.is_(None))
    now = sa.bindparam("v_claimed_at", type_=jobs.c.claimed_at.type)
    values: dict[str, Any] = {
        "runner_id": sa.bindparam("v_runner_id"),
        "claimed_at": now,
        "lease_expires_at": sa.bindparam("v_lease_expires_at"),
        "status": JobStatus.claimed.value,
    }
    if start_at_once:
        at_once = any_of(jobs.c.executor, start_at_once)
        values["status"] = sa.case(
            (at_once, JobStatus.running.value), else_=JobStatus.claimed.value
        )
        values["started_at"] = sa.case((at_once, now), else_=sa.null())
    return (
        jobs.update().where(one_job(sa.bindparam("p_id"), *conds)).values(**values).returning(jobs)
    )


@functools.cache
def _hold_for_limit_stmt(pinned: bool) -> Any:
    """A keyed claim refused for a full key holds the job (``hold='limit'``)."""
    key = sa.bindparam("p_key", type_=jobs.c.concurrency_key.type)
    conds = [
        jobs.c.status == JobStatus.queued.value,
        jobs.c.hold.is_(None),
        jobs.c.concurrency_key == key,
        session_turn(),
        sa.not_(_key_room(key)),
    ]
    if pinned:
        conds.append(jobs.c.attempt == sa.bindparam("p_attempt"))
    return jobs.update().where(one_job(sa.bindparam("p_id"), *conds)).values(hold="limit")


_KEY_OF_CLAIMABLE = sa.select(jobs.c.concurrency_key).where(
    one_job(sa.bindparam("p_id"), jobs.c.status == JobStatus.queued.value, jobs.c.hold.is_(None))
)


@functools.lru_cache(maxsize=256)
def _cas_stmt(
    target: JobStatus,
    sources: frozenset[JobStatus],
    keys: tuple[str, ...],
    pinned: bool,
    by_runner: bool,
    no_cancel: bool,
) -> Any:
    """A transition's compare-and-set: status in ``sources`` [, attempt, runner, no cancel
    asked] → ``target``, setting ``keys``; RETURNING the new row."""
    conds = [any_of(jobs.c.status, sources)]
    if pinned:
        conds.append(jobs.c.attempt == sa.bindparam("p_attempt"))
    if by_runner:
        conds.append(jobs.c.runner_id == sa.bindparam("p_runner"))
    if no_cancel:
        conds.append(jobs.c.cancel_requested.is_(False))
    update = jobs.update().where(one_job(sa.bindparam("p_id"), *conds))
    return update.values(status=target.value, **_v(keys)).returning(jobs)


@functools.lru_cache(maxsize=64)
def _active_update_stmt(keys: tuple[str, ...], by_runner: bool, cancel_flag: bool) -> Any:
    """Set fields of a live attempt (attempt pinned, still claimed or running [, runner]);
    with ``cancel_flag``, RETURNING whether its cancel was asked."""
    conds = [jobs.c.attempt == sa.bindparam("p_attempt"), any_of(jobs.c.status, ACTIVE_STATUSES)]
    if by_runner:
        conds.append(jobs.c.runner_id == sa.bindparam("p_runner"))
    stmt = jobs.update().where(one_job(sa.bindparam("p_id"), *conds)).values(**_v(keys))
    return stmt.returning(jobs.c.cancel_requested) if cancel_flag else stmt


_INSERT_ATTEMPT = attempts.insert()


@functools.lru_cache(maxsize=256)
def _with_attempt_update(stmt: Any, keys: tuple[str, ...]) -> Any:
    """PostgreSQL: ``stmt`` (an UPDATE of jobs RETURNING the row) and the update of its
    attempt's row (``a_number``; ``a_<key>`` values) as one statement, the row as
    ``stmt`` returns it: ``WITH won AS (UPDATE jobs … RETURNING …), a AS (UPDATE
    attempts … WHERE job_id = :p_id AND number = :a_number AND EXISTS (SELECT … FROM
    won)) SELECT * FROM won``. The row is found by its own key, written only if the CAS
    won (joined on the CTE's id instead, the planner scanned all of ``attempts``)."""
    won = stmt.cte("won")
    row = (
        attempts.update()
        .where(
            attempts.c.job_id == sa.bindparam("p_id"),
            attempts.c.number == sa.bindparam("a_number"),
            sa.exists(sa.select(won.c.id)),
        )
        .values(**{k: sa.bindparam(f"a_{k}", type_=attempts.c[k].type) for k in keys})
    )
    return sa.select(won).add_cte(row.cte("attempt_row"))


@functools.cache
def _claim_plain_stmt(start_at_once: frozenset[str], pinned: bool) -> Any:
    """The claim of a job of no session and no concurrency key: the ones that need no
    other statement in the claim's transaction than their attempt's row."""
    return _claim_stmt(start_at_once, pinned, False).where(on_the_row(jobs.c.session_id.is_(None)))


@functools.cache
def _claim_folded_stmt(start_at_once: frozenset[str], pinned: bool) -> Any:
    """PostgreSQL: :func:`_claim_plain_stmt` and its attempt's row (started too when the
    claim started the job), in one statement."""
    won = _claim_plain_stmt(start_at_once, pinned).cte("won")
    now = sa.bindparam("v_claimed_at", type_=jobs.c.claimed_at.type)
    row = attempts.insert().from_select(
        ["job_id", "number", "runner_id", "claimed_at", "started_at"],
        sa.select(
            won.c.id,
            won.c.attempt,
            sa.bindparam("v_runner_id", type_=attempts.c.runner_id.type),
            now,
            sa.case((won.c.status == JobStatus.running.value, now), else_=sa.null()),
        ),
    )
    return sa.select(won).add_cte(row.cte("attempt_row"))


# What the rehearsal claims (inside a transaction it rolls back): a built-in job, of an
# id no job has (job ids are hex).
_REHEARSAL_ID = "-rehearsal-"
_REHEARSAL_SPEC = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}


def _claimed(c: sa.Connection, row: sa.Row[Any], runner_id: str, now: datetime) -> None:
    """In the claim's transaction: its session's guard, then the attempt's row."""
    if row.session_id is not None:
        guard_session_turn(c, row.session_id, row.id)  # raises: rolled back
    c.execute(_INSERT_ATTEMPT, _attempt_row(row._mapping, runner_id, now))


def _attempt_row(won: Any, runner_id: str, now: datetime) -> dict[str, Any]:
    """A claimed job's (a mapping) attempt row; started too when the claim started it."""
    return {
        "job_id": won["id"],
        "number": won["attempt"],
        "runner_id": runner_id,
        "claimed_at": now,
        "started_at": now if won["status"] == JobStatus.running.value else None,
    }


@functools.lru_cache(maxsize=64)
def _attempt_update_stmt(keys: tuple[str, ...]) -> Any:
    """Set fields of one attempt's row."""
    return (
        attempts.update()
        .where(
            attempts.c.job_id == sa.bindparam("p_id"),
            attempts.c.number == sa.bindparam("p_number"),
        )
        .values(**_v(keys))
    )


@functools.cache
def _scan_stmt(after: bool) -> Any:
    """A page of the queued jobs a runner's executors may claim (``claim_next``)."""
    now = sa.bindparam("p_now", type_=jobs.c.match_deadline.type)
    q = sa.select(jobs.c.id, jobs.c.spec, jobs.c.created_at, jobs.c.priority).where(
        jobs.c.status == JobStatus.queued.value,
        jobs.c.executor.in_(sa.bindparam("p_executors", expanding=True)),
        sa.or_(jobs.c.match_deadline.is_(None), jobs.c.match_deadline >= now),
        sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
        jobs.c.hold.is_(None),
    )
    if after:
        priority = sa.bindparam("p_priority", type_=jobs.c.priority.type)
        created = sa.bindparam("p_created", type_=jobs.c.created_at.type)
        last = sa.bindparam("p_after", type_=jobs.c.id.type)
        q = q.where(
            sa.or_(
                jobs.c.priority < priority,
                sa.and_(
                    jobs.c.priority == priority,
                    sa.tuple_(jobs.c.created_at, jobs.c.id) > sa.tuple_(created, last),
                ),
            )
        )
    order = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
    return q.order_by(*order).limit(sa.bindparam("p_page", type_=sa.Integer()))


_ACTIVE_COUNT = (
    sa.select(sa.func.count())
    .select_from(jobs)
    .where(jobs.c.runner_id == sa.bindparam("p_runner"), any_of(jobs.c.status, ACTIVE_STATUSES))
)


def _running_count(key: Any) -> Any:
    """How many of ``key``'s jobs (a value or a bound parameter) are claimed or running."""
    running = jobs.alias("running_jobs")
    return (
        sa.select(sa.func.count())
        .select_from(running)
        .where(
            running.c.concurrency_key == key,
            any_of(running.c.status, ACTIVE_STATUSES),
        )
    )


def _key_room(key: Any) -> Any:
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
        c.execute(_PG_KEY_LOCK, {"p_lock": f"lb:key:{key}"})
    else:
        c.execute(_SQLITE_KEY_LOCK, {"p_key": key})


_PG_KEY_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.bindparam("p_lock"))))
_SQLITE_KEY_LOCK = (
    concurrency_limits.update()
    .where(concurrency_limits.c.key == sa.bindparam("p_key"))
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


def labels_match(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    """Whether a job's labels ``have`` carry every pair of ``want``."""
    have = have or {}
    return all(have.get(k) == v for k, v in want.items())
