"""Sessions: runs that share one persistent workspace, one run at a time, in order.

A job starts a session (``spec.session.name``, or an empty ``session``), resumes one
(``resume``: an id or a name) or forks one (``parent_session_id``: a new session whose
workspace starts as a copy of the parent's, which stays untouched). At submit the core
resolves that to ``spec.session.id`` and, for a resume, fills what the job left out from
the session's defaults (the first run's executor fields and workdir).

One run at a time is a condition of the claim's compare-and-set (:func:`session_turn`),
not a lock held by a runner: a job of a session is claimable only while no other job of
it is claimed or running and no older one waits. Where the workspace lives: under the
runner's ``workspaces_dir/sessions/<id>``. Celery workers share it when
``LAUNCHBAY_HOME`` is a shared volume; a session's later runs demand the host its first
run ran on (``demands.hostname``), so a session begun on a remote agent stays on it.
"""

from __future__ import annotations

import builtins
import functools
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from orchestrator.errors import LaunchbayError, ParamError
from orchestrator.job import ACTIVE_STATUSES, TERMINAL_STATUSES, EventType, Job, JobStatus, utcnow
from orchestrator.listeners import Listener
from orchestrator.schema import any_of, jobs, sessions

log = logging.getLogger(__name__)

# Fields a resumed job takes from its session when it leaves them out: where and how the
# session's runs execute, not what each run does (command, steps, params, name).
_DEFAULTED = (
    "image",
    "workdir",
    "env",
    "labels",
    "demands",
    "resources",
    "network",
    "namespace",
    "template",
    "timeout_s",
    "grace_s",
    "cleanup",
)


class SessionBusy(Exception):
    """A claim found another run of the job's session active: it is rolled back."""


class SessionNotFound(LaunchbayError):
    status_code = 404


class SessionActive(LaunchbayError):
    status_code = 409


class Session(BaseModel):
    """A session as the API returns it."""

    id: str
    name: str | None = None
    executor: str
    defaults: dict[str, Any] = Field(description="What a resumed job takes when it leaves out.")
    parent_session_id: str | None = None
    hostname: str | None = Field(default=None, description="The host its workspace is on.")
    created_at: Any
    runs: builtins.list[Job] | None = Field(default=None, description="Oldest first (get only).")


def new_session_id() -> str:
    return f"ses_{secrets.token_hex(6)}"


def workspace_of(workspaces_dir: Path, session_id: str) -> Path:
    return workspaces_dir / "sessions" / session_id


# ---------------------------------------------------------------- the claim's conditions


@functools.cache
def session_turn() -> Any:
    """A claim condition: the job has no session, or it is its session's turn — no other
    job of the session is claimed or running, and none older is queued. Built once: it
    has no parameters, and making its alias's columns each time costs more than the
    claim's SQL."""
    sibling = jobs.alias("session_sibling")
    busy = sa.exists().where(
        sibling.c.session_id == jobs.c.session_id,
        sibling.c.id != jobs.c.id,
        sa.or_(
            any_of(sibling.c.status, ACTIVE_STATUSES),  # (no IN: see any_of)
            sa.and_(
                sibling.c.status == JobStatus.queued.value,
                sa.tuple_(sibling.c.created_at, sibling.c.id)
                < sa.tuple_(jobs.c.created_at, jobs.c.id),
            ),
        ),
    )
    return sa.or_(jobs.c.session_id.is_(None), sa.not_(busy))


def guard_session_turn(c: sa.Connection, session_id: str, job_id: str) -> None:
    """Inside a claim's transaction, after its update: raise :class:`SessionBusy` if another
    job of the session is active. SQLite runs one writer at a time, so the update's own
    condition settles it; PostgreSQL (read committed) could let two claims of one session
    pass it at once, so each takes the session's lock and looks again."""
    if c.dialect.name != "postgresql":
        return
    c.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"lb:ses:{session_id}"))))
    others = c.execute(
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(
            jobs.c.session_id == session_id,
            jobs.c.id != job_id,
            jobs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
        )
    ).scalar_one()
    if others:
        raise SessionBusy(session_id)


# ---------------------------------------------------------------- the store's part


class Sessions:
    """Session rows, on the job store's engine."""

    def __init__(self, engine: sa.Engine, workspaces_dir: Path) -> None:
        self.engine = engine
        self.workspaces_dir = workspaces_dir

    def _row(self, m: Any, runs: builtins.list[Job] | None = None) -> Session:
        return Session(
            id=m["id"],
            name=m["name"],
            executor=m["executor"],
            defaults=m["defaults"] or {},
            parent_session_id=m["parent_id"],
            hostname=m["hostname"],
            created_at=m["created_at"],
            runs=runs,
        )

    def find(self, ref: str) -> Session | None:
        """The session with id ``ref``, else the newest named ``ref``."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(sessions).where(sessions.c.id == ref)).first()
            if row is None:
                row = c.execute(
                    sa.select(sessions)
                    .where(sessions.c.name == ref)
                    .order_by(sessions.c.created_at.desc())
                    .limit(1)
                ).first()
        return self._row(row._mapping) if row is not None else None

    def get(self, ref: str) -> Session:
        found = self.find(ref)
        if found is None:
            raise SessionNotFound(f"session {ref} not found")
        return found

    def list(self, *, limit: int = 50, offset: int = 0) -> tuple[builtins.list[Session], int]:
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(sessions)).scalar_one()
            rows = c.execute(
                sa.select(sessions)
                .order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return [self._row(r._mapping) for r in rows], int(total)

    def run_ids(self, session_id: str) -> builtins.list[str]:
        with self.engine.connect() as c:
            return list(
                c.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.session_id == session_id)
                    .order_by(jobs.c.created_at, jobs.c.id)
                ).scalars()
            )

    def next_queued(self, session_id: str) -> str | None:
        """The session's oldest queued run, whose turn it is next."""
        with self.engine.connect() as c:
            return c.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.session_id == session_id, jobs.c.status == JobStatus.queued.value)
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
            ).scalar()

    def create(
        self, executor: str, defaults: dict[str, Any], *, name: str | None, parent: str | None
    ) -> Session:
        sid = new_session_id()
        values = {
            "id": sid,
            "name": name,
            "executor": executor,
            "defaults": defaults,
            "parent_id": parent,
            "created_at": utcnow(),
        }
        with self.engine.begin() as c:
            c.execute(sessions.insert().values(**values))
        return self.get(sid)

    def note_host(self, session_id: str, hostname: str) -> None:
        """Record the host its workspace lives on, the first time a run of it starts."""
        with self.engine.begin() as c:
            c.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.hostname.is_(None))
                .values(hostname=hostname)
            )

    def delete(self, ref: str) -> Session:
        """Remove a session and its workspace (409 while one of its runs is active)."""
        found = self.get(ref)
        with self.engine.begin() as c:
            active = c.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(
                    jobs.c.session_id == found.id,
                    jobs.c.status.in_(
                        [JobStatus.queued.value, *(s.value for s in ACTIVE_STATUSES)]
                    ),
                )
            ).scalar_one()
            if active:
                raise SessionActive(f"session {found.id} has {active} unfinished run(s)")
            c.execute(sessions.delete().where(sessions.c.id == found.id))
        shutil.rmtree(workspace_of(self.workspaces_dir, found.id), ignore_errors=True)
        return found

    # ------------------------------------------------------------ submit

    def resolve(self, spec: Any) -> Any:
        """``spec`` with its session resolved (``session.id`` set, a new session made for a
        start or a fork) and, for a resume, the session's defaults filled in."""
        ref = spec.session
        if ref.resuming:
            session = self.find(ref.id or ref.resume)
            if session is None:
                raise ParamError("session.resume", f"no session {ref.id or ref.resume!r}")
            if session.executor != spec.executor:
                raise ParamError(
                    "executor",
                    f"session {session.id} runs {session.executor} jobs, not {spec.executor}",
                )
            filled = type(spec).model_validate(_fill(spec, session))
            changed = {k: getattr(filled, k) for k in (*_DEFAULTED, "demands") if hasattr(spec, k)}
            changed["session"] = ref.model_copy(update={"id": session.id, "resume": None})
            return spec.model_copy(update=changed)
        parent: Session | None = None
        if ref.parent_session_id:
            parent = self.find(ref.parent_session_id)
            if parent is None:
                raise ParamError(
                    "session.parent_session_id", f"no session {ref.parent_session_id!r}"
                )
        defaults = _defaults_of(spec)
        if parent is not None and parent.hostname and not spec.demands.hostname:
            # The copy is made where the parent's workspace is.
            demands = {**spec.demands.model_dump(), "hostname": parent.hostname}
            spec = spec.model_copy(update={"demands": type(spec.demands).model_validate(demands)})
        session = self.create(
            spec.executor, defaults, name=ref.name, parent=parent.id if parent else None
        )
        return spec.model_copy(update={"session": ref.model_copy(update={"id": session.id})})


def prepare(sessions: Sessions, spec: Any) -> Any:
    """``spec`` (a model or a dict) ready to store: unchanged without a session, else with
    its session resolved by :meth:`Sessions.resolve`."""
    if isinstance(spec, dict):
        if spec.get("session") is None:
            return spec
        from pydantic import TypeAdapter

        from orchestrator.job import JobSpec

        spec = TypeAdapter(JobSpec).validate_python(spec)
    if getattr(spec, "session", None) is None:
        return spec
    return sessions.resolve(spec)


def _defaults_of(spec: Any) -> dict[str, Any]:
    dumped = spec.model_dump(mode="json")
    return {k: dumped[k] for k in _DEFAULTED if k in dumped}


def _fill(spec: Any, session: Session) -> dict[str, Any]:
    """The spec's fields, with what it left out taken from ``session``'s defaults (and the
    host its workspace is on, unless the job demands a host itself)."""
    given = spec.model_fields_set
    out = spec.model_dump(mode="json", exclude_unset=False)
    for key, value in session.defaults.items():
        if key in out and key not in given and not (key == "image" and out.get("image")):
            out[key] = value
    if session.hostname and not (out.get("demands") or {}).get("hostname"):
        out["demands"] = {**(out.get("demands") or {}), "hostname": session.hostname}
    return out


def copy_parent_workspace(workspaces_dir: Path, session_id: str, parent_id: str | None) -> Path:
    """The session's workspace, made on first use; a fork's starts as a copy of its
    parent's (symlinks copied as links; the parent is only read)."""
    ws = workspace_of(workspaces_dir, session_id)
    if ws.exists():
        return ws
    parent = workspace_of(workspaces_dir, parent_id) if parent_id else None
    tmp = ws.with_name(f".{ws.name}.copy-{secrets.token_hex(4)}")
    if parent is not None and parent.is_dir():
        shutil.copytree(parent, tmp, symlinks=True)
        _same_owners(parent, tmp)
    else:
        tmp.mkdir(parents=True)
    try:
        tmp.rename(ws)
    except OSError:  # made meanwhile by another attempt: theirs stands
        shutil.rmtree(tmp, ignore_errors=True)
    return ws


class SessionListener(Listener):
    """After a run of a session ends (or is re-queued), send the session's next queued
    run: its message may have been taken and dropped while the session was busy. When a
    session's run starts, note the host its workspace is on."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher

    def transition(self, job: Job, event: EventType) -> None:
        sid = job.session_id
        if sid is None:
            return
        d = self.dispatcher
        if job.status == JobStatus.running and job.runner_id:
            info = d.live_runners_by_id(job.runner_id)
            if info is not None and info.hostname:
                d.sessions.note_host(sid, info.hostname)
            return
        if job.status not in TERMINAL_STATUSES:
            return
        nxt_id = d.sessions.next_queued(sid)
        nxt = d.store.find(nxt_id) if nxt_id else None
        if nxt is not None and nxt.status == JobStatus.queued:
            try:
                d.send(nxt)
            except Exception:  # the lost-message sweep sends it later
                log.exception("could not send session %s's next run %s", sid, nxt.id)


def _same_owners(src: Path, dest: Path) -> None:
    """Give the copy the owners of the original: a job that runs as an unprivileged user
    (LAUNCHBAY_JOB_USER) must be able to change the files its session's runs wrote."""
    import contextlib
    import os

    for path in [src, *src.rglob("*")]:
        with contextlib.suppress(OSError):
            st = path.lstat()
            os.lchown(dest / path.relative_to(src), st.st_uid, st.st_gid)
