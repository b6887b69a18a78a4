"""The database schema of the job store, and engines for it (SQLite WAL or PostgreSQL).

Alembic migrations (``orchestrator/migrations/``) build exactly this schema; a test
compares the two.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite keeps naive UTC)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = sa.MetaData()


def _only_where(condition: str) -> dict[str, Any]:
    """A partial index's condition, for both databases (migration 0008)."""
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("executor", sa.String(20), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("labels", sa.JSON, nullable=False, default=dict),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("runner_id", sa.String(64)),
    sa.Column("task_id", sa.String(100)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("match_deadline", UTCDateTime),
    sa.Column("not_before", UTCDateTime),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("progress_percent", sa.Float, nullable=False, default=0),
    sa.Column("progress_message", sa.Text, nullable=False, default=""),
    sa.Column("result", sa.JSON),
    sa.Column("steps", sa.JSON, nullable=False, default=list),
    sa.Column("artifacts", sa.JSON, nullable=False, default=list),
    sa.Column("resource_usage", sa.JSON),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("cancel_requested_at", UTCDateTime),
    # Attempts that ended through no fault of the job (a lost runner, a hand-back): they
    # spend the loss budget, not max_attempts.
    sa.Column("losses", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("handbacks", sa.Integer, nullable=False, default=0, server_default="0"),
    # A spec's write-only ``secrets`` map: delivered to the job's environment, never part
    # of ``spec`` (so no answer, event or export carries it).
    sa.Column("secrets", sa.JSON),
    # Flow control (issue 14): ``hold`` says why a due job may not be claimed yet
    # (``deps``: waiting on dependencies, ``limit``: its concurrency key is full).
    sa.Column("priority", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("concurrency_key", sa.String(200)),
    sa.Column("hold", sa.String(20)),
    sa.Column("rerun_of", sa.String(64)),
    sa.Column(
        "has_dependents", sa.Boolean, nullable=False, default=False, server_default=sa.false()
    ),
    # Sessions (issue 16): the session a job runs in (``ses_…``); null for most jobs.
    sa.Column("session_id", sa.String(32)),
    # Most jobs have no concurrency key, no hold and no session: these indexes hold only
    # the jobs that do (migration 0008), so a claim or an end, which changes ``status``,
    # writes none of them for most jobs. A query on the column (``= …``) implies the
    # condition, and both databases use the index for it (tests/orchestrator/test_plans.py).
    sa.Index(
        "ix_jobs_key_status",
        "concurrency_key",
        "status",
        **_only_where("concurrency_key IS NOT NULL"),
    ),
    sa.Index("ix_jobs_hold", "hold", **_only_where("hold IS NOT NULL")),
    sa.Index("ix_jobs_session", "session_id", "status", **_only_where("session_id IS NOT NULL")),
    sa.Index("ix_jobs_status_created", "status", "created_at"),
    sa.Index("ix_jobs_created", "created_at"),
)

# One row per attempt, written in the transaction of the transition that claims, starts
# or ends it, so run history outlives the Redis streams.
attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("runner_id", sa.String(64)),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("outcome", sa.String(20)),
    sa.Column("exit_code", sa.BigInteger),
    sa.Column("error", sa.Text),
    # Run records (issue 16): the launcher's handle, what cleanup did, resource usage.
    sa.Column("handle", sa.String(512)),
    sa.Column("cleanup", sa.String(500)),
    sa.Column("resource_usage", sa.JSON),
)

# Sessions (issue 16): runs that share a workspace, one at a time, with the defaults the
# first run set and the session it was forked from.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200)),
    sa.Column("executor", sa.String(20), nullable=False),
    sa.Column("defaults", sa.JSON, nullable=False),
    sa.Column("parent_id", sa.String(32)),
    sa.Column("hostname", sa.String(255)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_sessions_name", "name", "created_at"),
)

# One row per registered agent: the SHA-256 of the secret it was given at registration.
# Every agent call presents ``lba.<agent id>.<secret>``; it acts as that agent only.
agent_keys = sa.Table(
    "agent_keys",
    metadata,
    sa.Column("agent_id", sa.String(64), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Webhooks (issue 15): where to POST which job events, and the log of each delivery.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("description", sa.String(200), nullable=False, server_default=""),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_try_at", UTCDateTime),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_body", sa.Text),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
    sa.Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
)

# Flow control (issue 14): dependencies, keyed concurrency limits, idempotent submits and
# cron schedules (``next_fire_at`` is the compare-and-set that makes each tick fire once).
job_deps = sa.Table(
    "job_deps",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("depends_on", sa.String(64), primary_key=True),
    sa.Index("ix_job_deps_depends_on", "depends_on"),
)

concurrency_limits = sa.Table(
    "concurrency_limits",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("max_running", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_idempotency_keys_expires", "expires_at"),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("cron", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("overlap", sa.String(20), nullable=False),
    sa.Column("catchup", sa.String(20), nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("next_fire_at", UTCDateTime),
    sa.Column("last_fire_at", UTCDateTime),
    sa.Column("last_job_id", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_schedules_next_fire", "next_fire_at"),
)


def any_of(column: Any, values: Iterable[Any]) -> Any:
    """``column IN (values)`` as plain equalities, for statements built once and cached: an
    IN list's parameters are expanded again, its SQL rewritten, at every execution."""
    wanted = [column == getattr(v, "value", v) for v in sorted(values)]
    return sa.or_(*wanted) if wanted else sa.false()  # (none: nothing matches)


def on_the_row(*conds: Any) -> Any:
    """``conds`` as a test of the row another condition finds (a job's primary key), never
    as a way to find rows: ``CASE WHEN conds THEN true ELSE false END``, which no index
    matches (NULL, as in WHERE, is false). Without fresh statistics (a new table, or a
    burst of queued jobs since the last ANALYZE) PostgreSQL's planner rated
    ``ix_jobs_status_created`` as good as the primary key for ``id = … AND status =
    'queued'`` and took it: each claim read every queued job's index entry
    (tests/orchestrator/test_plans.py)."""
    return sa.case((sa.and_(*conds), sa.true()), else_=sa.false())


def one_job(job_id: Any, *conds: Any) -> Any:
    """The job ``job_id`` (a value or a bind parameter) if ``conds`` hold for its row:
    found by its primary key, whatever the planner's statistics say (:func:`on_the_row`)."""
    return sa.and_(jobs.c.id == job_id, on_the_row(*conds)) if conds else jobs.c.id == job_id


_SQLITE_BUSY_S = 15.0


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")
    if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# Statements that write, and so open a write transaction (Python's sqlite3 starts one,
# deferred, just before the first of them). Not ``WITH``: a read can start so too, and
# would hold the write lock until its connection went back (no store statement on SQLite
# is a data-modifying WITH; one would take the lock the usual way, at its first step).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")

# How a writer waits for SQLite's one write lock: tries ``BEGIN IMMEDIATE`` again after
# WRITE_WAIT_FIRST_S, growing by half up to WRITE_WAIT_MAX_S, for up to _SQLITE_BUSY_S.
WRITE_WAIT_FIRST_S = 50e-6
WRITE_WAIT_MAX_S = 1e-3


def _take_write_lock(
    _conn: Any, cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    """Before a transaction's first write, take SQLite's write lock, waiting in steps of
    50 µs to 1 ms.

    The API and every worker process write the same file, and a write transaction holds
    the lock for 0.1–0.5 ms. SQLite's own busy handler sleeps 1, 2, 5, 10… ms between
    tries: measured under a throughput run, an API insert waited 4.9 ms on average for a
    lock held a fraction of that, and a worker's compare-and-set 0.8 ms. Taking the lock
    here (``BEGIN IMMEDIATE``, busy timeout off while trying) is the same lock at the same
    point — the deferred transaction would take it at this very statement — with a finer
    wait. Only where Python's sqlite3 manages transactions (not in autocommit, where no
    one would commit what this opens)."""
    dbapi = cursor.connection
    if (
        dbapi.in_transaction
        or dbapi.isolation_level is None
        or not statement.lstrip()[:6].upper().startswith(_WRITES)
    ):
        return
    begin_immediate(dbapi)


def begin_immediate(dbapi: Any) -> None:
    """``BEGIN IMMEDIATE`` on a sqlite3 connection, waiting for the write lock in steps of
    WRITE_WAIT_FIRST_S to WRITE_WAIT_MAX_S (see :func:`_take_write_lock`)."""
    dbapi.execute("PRAGMA busy_timeout=0")
    try:
        delay, deadline = WRITE_WAIT_FIRST_S, time.monotonic() + _SQLITE_BUSY_S
        while True:
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, WRITE_WAIT_MAX_S)
    finally:
        dbapi.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")


def _switch_to_wal(cur: Any) -> None:
    """Turn a new database file to WAL; several processes may race to do it.

    The switch needs the file to itself, and SQLite answers "database is locked" at
    once, without waiting on busy_timeout, when another connection is switching or
    reading at that moment. WAL is a property of the file, so the first one to succeed
    settles it for everyone: retry until then.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_S
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class _LentPool(sa.pool.StaticPool):
    """One connection, lent to one thread at a time.

    An in-memory database lives in its connection, so every thread must share it; a
    connection used by two threads at once interleaves their transactions ("cannot start
    a transaction within a transaction", commits of the other thread's half-done work).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lent = threading.Lock()
        self._holder: int | None = None

    def _do_get(self) -> Any:
        if self._holder == threading.get_ident():
            raise RuntimeError("nested use of the in-memory database's one connection")
        self._lent.acquire()
        self._holder = threading.get_ident()
        try:
            return super()._do_get()
        except BaseException:
            self._do_return_conn(None)
            raise

    def _do_return_conn(self, record: Any) -> None:
        self._holder = None
        self._lent.release()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        memory = path in ("", ":memory:")
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Created private (SQLite gives its -wal and -shm files the same mode).
            Path(path).touch(mode=0o600, exist_ok=True)
            with contextlib.suppress(OSError):
                Path(path).chmod(0o600)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 15, "check_same_thread": False},
            **({"poolclass": _LentPool} if memory else {"pool_size": POOL_SIZE}),
        )
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        sa.event.listen(engine, "before_cursor_execute", _take_write_lock)
        return engine
    engine = sa.create_engine(url, pool_size=POOL_SIZE)
    sa.event.listen(engine, "checkin", _on_checkin)
    sa.event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    return engine


# A server's connection is pinged when it is checked out after resting in the pool for
# longer than this (SQLAlchemy's ``pool_pre_ping`` pings at every checkout: four round
# trips per job on PostgreSQL). A connection the server dropped meanwhile is replaced
# before use; one it dropped within the last second fails its statement, and SQLAlchemy
# then replaces every connection of the pool (the store's callers retry or answer 503).
PING_IDLE_S = 1.0


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["rested_from"] = time.monotonic()


def _ping_if_idle(dialect: Any, dbapi_connection: Any, record: Any, proxy: Any) -> None:
    rested_from = record.info.get("rested_from")
    if rested_from is None or time.monotonic() - rested_from <= PING_IDLE_S:
        return  # (a new connection, or one in use a moment ago)
    try:
        ok = dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise sa.exc.DisconnectionError(f"ping failed: {exc}") from exc
    if ok is False:
        raise sa.exc.DisconnectionError("ping failed")


# Connections a process keeps to its database. The API serves up to 40 requests at once
# (its thread pool); past SQLAlchemy's default 5, each extra connection was opened for
# one use and closed after it (the pool's overflow): a PostgreSQL connection costs a
# server process's start (with 8 clients submitting, 10% of PostgreSQL's throughput went
# to that), a SQLite one its settings, its schema read and its statements prepared again.
# A process opens only as many as it uses at once (a pool child: one to three).
POOL_SIZE = 20
