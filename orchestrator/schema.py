"""The database schema of the job store, and engines for it (SQLite WAL or PostgreSQL).

Alembic migrations (``orchestrator/migrations/``) build exactly this schema; a test
compares the two.
"""

from __future__ import annotations

import sqlite3
import threading
import time
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
)


_SQLITE_BUSY_S = 15.0


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")
    if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


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
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 15, "check_same_thread": False},
            **({"poolclass": _LentPool} if memory else {}),
        )
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)
