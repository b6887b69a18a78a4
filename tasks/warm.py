"""Pool children that are ready before their first job.

Without this, each prefork child paid for its first job alone: importing the migration
machinery and the launchers, checking the schema, opening its store and Redis clients
(0.6–1 s per child on 2 cores, so a burst of jobs on freshly started workers waited a
second for nothing, and every added worker added that cost again). Now the schema is
checked once per worker (in a short-lived process, so the migration machinery stays out
of the worker's memory), the launchers are imported *before* the pool forks (shared
pages, not copies), the statements of a claim and an end are compiled once before the
fork by rehearsing them on a job that does not exist (``Lifecycle.rehearse``: nothing
changes), and each child, as it starts, builds its clients, opens the Redis connections
its threads use during an attempt, and rehearses again on its own database connection
(which prepares each statement once per connection), not as its first job arrives.

Memory: what every child needs (the launchers, the database's dialect and driver) is
imported here before the fork, so the children share those pages instead of each holding a
copy; and the main process's objects are frozen out of the garbage collector just before
the fork (:func:`_freeze`), so a child's collections never write to the pages it shares.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from typing import Any

from celery.signals import celeryd_after_setup, worker_init, worker_process_init

from orchestrator.settings import Settings

log = logging.getLogger(__name__)
_schema_ready = False  # set in the main process; forked children inherit it
_rehearsed: Any = None  # the store the main process rehearsed on (children inherit it)
_MIGRATE = (
    "import os; from orchestrator.store import JobStore; "
    "JobStore(os.environ['LAUNCHBAY_DATABASE_URL']).dispose()"
)


@worker_init.connect
def _prepare(**_: Any) -> None:
    """In the worker's main process, before the pool forks."""
    global _schema_ready
    settings = Settings.from_env()
    # The schema is checked (and migrated if need be) once, in a short-lived process: the
    # migration machinery (Alembic, Mako) then never sits in this long-lived process's
    # memory, nor in every child's.
    check = subprocess.run(
        [sys.executable, "-c", _MIGRATE],
        env={**os.environ, "LAUNCHBAY_DATABASE_URL": settings.effective_database_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check.returncode == 0:
        _schema_ready = True
    else:  # each child then checks it on its first job, as before
        log.warning("could not check the schema before forking: %s", check.stderr[-2000:])
    try:
        _import_before_fork(settings)
    except Exception:
        log.warning("could not import what the pool children need before forking", exc_info=True)
    if _schema_ready:
        try:
            _rehearse_before_fork(settings)
        except Exception:  # each child then compiles on its first job
            log.warning("could not rehearse an attempt before forking", exc_info=True)
    _freeze()  # (again: celeryd_after_setup comes before worker_init, and so before this)


def _rehearse_before_fork(settings: Settings) -> None:
    """Compile the statements of an attempt (claim, progress, end) once, here, on the
    store every child then uses (:meth:`Lifecycle.rehearse`: nothing changes): the
    children inherit the compiled statements instead of each compiling its own (5-10 ms
    of CPU and ~7 MB per child). No connection crosses the fork: the store's are closed
    before it, and a child opens its own."""
    global _rehearsed
    from orchestrator.lifecycle import Lifecycle
    from orchestrator.listeners import Listeners
    from orchestrator.store import JobStore
    from workers.channels.direct import START_AT_ONCE

    store = JobStore(settings.effective_database_url, create=False)
    try:
        lifecycle = Lifecycle(settings, store, Listeners(), lambda *_a, **_k: None)
        lifecycle.rehearse(settings.runner_id or "runner-rehearsal", START_AT_ONCE)
    finally:
        store.dispose()  # (its compiled statements stay with the engine)
    _rehearsed = store


def _import_before_fork(settings: Settings) -> None:
    """What every pool child imports anyway: the launchers this worker runs, and the
    database's SQLAlchemy dialect and driver (a child's first engine would import them)."""
    from sqlalchemy.engine import make_url

    from workers.launchers import launcher_class

    for executor in settings.worker_executors:
        launcher_class(executor)
    make_url(settings.effective_database_url).get_dialect().import_dbapi()


@celeryd_after_setup.connect
def _freeze(**_: Any) -> None:
    """In the worker's main process, before the pool forks its children: as the worker is
    set up, and again once :func:`_prepare` (worker_init, which Celery sends after this
    signal) has imported and rehearsed what the children share.

    A forked child shares its parent's pages until it writes to one; CPython's cyclic
    garbage collector writes to every object it examines (in the object's header), so
    each child's first collections copied most of the heap it inherited (about 25 MB per
    child). Frozen objects are never examined: the children keep sharing them. (Garbage
    is collected first, so nothing dead is frozen.)
    """
    gc.collect()
    gc.freeze()


# The threads of a pool child that talk to Redis at once while an attempt runs: the job's
# own, the outbox's, the attempt sender's and a watcher's.
REDIS_THREADS = 4


def _connect_ahead(r: Any, n: int) -> None:
    """Open ``n`` of ``r``'s pooled connections now (each checked by a PING), so none is
    opened during a job: a burst of first jobs on fresh workers otherwise waited for them."""
    pool = r.connection_pool
    held = []
    try:
        for _ in range(n):
            conn = pool.get_connection()
            held.append(conn)
            conn.send_command("PING")
            conn.read_response()
    finally:
        for conn in held:
            pool.release(conn)


@worker_process_init.connect
def _warm(**_: Any) -> None:
    """In each pool child as it starts: build this process's clients now."""
    from orchestrator.store import JobStore
    from tasks.context import worker_context
    from workers.channels.direct import START_AT_ONCE

    try:
        ctx = worker_context()
        if _rehearsed is not None:  # (compiled before the fork; its connections closed)
            ctx.__dict__["store"] = _rehearsed
        elif _schema_ready:  # (the main process migrated it: no need to check again)
            ctx.__dict__["store"] = JobStore(ctx.settings.effective_database_url, create=False)
        channel = ctx.channel  # (builds the dispatcher, events and artifacts with it)
        for executor in ctx.settings.worker_executors:
            ctx.launchers.get(executor)
        _connect_ahead(channel.events.r, REDIS_THREADS)
        # On this process's own database connection too: the statements come compiled
        # from the main process, but each connection prepares its own (and SQLite reads
        # its schema on a connection's first statement): 5-13 ms of a child's first job.
        channel.lifecycle.rehearse(channel.runner_id, START_AT_ONCE)
    except Exception:  # built on the first job instead
        log.warning("could not warm this pool process", exc_info=True)
