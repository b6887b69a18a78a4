"""A pool child is ready before its first job (tasks/warm.py): its Redis connections are
open, and its own database connection has run an attempt's statements already.

Measured (issue 17): fresh workers' first jobs cost each child 13 ms more CPU than later
ones (8 workers × 4 slots: 0.4 s of CPU in the first wave of a burst, on 2 cores): SQLite
prepares each statement per connection and reads its schema on a connection's first
statement, and each thread that talks to Redis during an attempt opened its connection
then. A real worker's pre-fork steps and a real fork, in a fresh interpreter, on a real
Valkey; the child reports what it holds."""

from __future__ import annotations

import os
from typing import Any

import pytest

from orchestrator.services import settings_env
from orchestrator.settings import Settings
from tests.support import run_probe

_PROBE = """
import json, os, sys
import redis
from sqlalchemy import event
from tasks import warm
from tasks.app import app  # noqa: F401  (as a worker loads it)

warm._prepare()  # the worker's main process, before the pool forks
out_r, out_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(out_r)
    seen = []
    # The store the children inherit: every statement a connection of this child runs.
    @event.listens_for(warm._rehearsed.engine, "before_cursor_execute")
    def _seen(_conn, cursor, statement, *_a):  # (the driver's statements: no Connection)
        seen.append((id(cursor.connection), " ".join(statement.split()[:3])))
    probe = redis.Redis.from_url(os.environ["LAUNCHBAY_REDIS_URL"], decode_responses=True)
    before = {c["id"] for c in probe.client_list()}
    warm._warm()  # worker_process_init, in the child
    after = [c for c in probe.client_list() if c["id"] not in before and c["cmd"] != "client|list"]
    from tasks.context import worker_context
    ctx = worker_context()
    with ctx.store.engine.connect() as c:  # what the first job's claim checks out
        first = id(c.connection.dbapi_connection)
    ctx.channel.events.r.ping()  # (a pooled connection: no new one)
    again = [c for c in probe.client_list() if c["id"] not in before and c["cmd"] != "client|list"]
    os.write(out_w, json.dumps({
        "redis_opened": len(after),
        "redis_after_use": len(again),
        "on_first": [s for conn, s in seen if conn == first],
        "connections": len({conn for conn, _ in seen}),
    }).encode())
    os._exit(0)
os.close(out_w)
os.waitpid(pid, 0)
print(os.read(out_r, 1 << 20).decode())
"""


@pytest.fixture(scope="module")
def warmed(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("warm")
    settings = Settings(
        home=home,
        redis_url=valkey_url.rsplit("/", 1)[0] + "/5",
        worker_executors=["builtin"],
    )
    env = {
        **os.environ,
        **settings_env(settings),
        "LAUNCHBAY_RUNNER_ID": "runner-warm",
        "PYTHONWARNINGS": "ignore",
    }
    return run_probe(_PROBE, env=env)


def test_a_child_opens_its_redis_connections_before_its_first_job(
    warmed: dict[str, Any],
) -> None:
    from tasks.warm import REDIS_THREADS

    assert warmed["redis_opened"] == REDIS_THREADS
    assert warmed["redis_after_use"] == REDIS_THREADS  # (used, not opened again)


def test_a_child_rehearses_an_attempt_on_the_connection_its_first_claim_uses(
    warmed: dict[str, Any],
) -> None:
    ran = warmed["on_first"]
    assert any(s.startswith("UPDATE jobs SET") for s in ran), ran  # the claim
    assert any(s.startswith("INSERT INTO attempts") for s in ran), ran  # its attempt row
    assert warmed["connections"] == 1  # (one connection: the one the pool lends next)
