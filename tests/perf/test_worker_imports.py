"""A worker's memory is mostly what its main process imported before the pool forked: every
prefork child starts as a copy of it (issue 13, PERF.md). So the worker, built from the
argv that orchestrator/services.py starts it with up to its pool's fork (tasks/app.py:
build_worker, which runs the pre-fork hooks of tasks/warm.py), must not hold what a worker
does not use at start: the API's stack, the Docker and Kubernetes clients, the migration
machinery, the cron parser, Celery's command-line plugins. Each of those is imported where
it is used, if ever."""

from __future__ import annotations

import os
from typing import Any

import pytest

from orchestrator.services import free_port, worker_argv
from orchestrator.settings import Settings
from tests.support import run_probe

# Top-level packages (or exact modules) a worker must not have imported before it forks.
ABSENT = (
    "api",  # Launchbay's API
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "docker",  # workers/launchers/docker.py imports it when a docker job runs
    "requests",
    "kubernetes",
    "urllib3",
    "alembic",  # the schema check runs in a short-lived process (tasks/warm.py)
    "mako",
    "cronsim",  # schedules fire in beat's maintenance task, imported there
    "tenacity",  # webhook delivery is the API's
    "opentelemetry.sdk.trace",  # only with LAUNCHBAY_TRACING (orchestrator/tracing.py)
    "flower",  # Celery's command group imports every CLI plugin; the worker skips it
    "tornado",
    "prompt_toolkit",
    "click_repl",
    "httpx",  # only the url_fetch job type needs it (workers/builtin.py imports it there)
    "rich",  # (httpx imports rich and pygments)
    "pygments",
    "prometheus_client",  # the scrape side is orchestrator/metrics_scrape.py, the API's
)
_PROBE = """
import gc, json, sys
from celery.signals import celeryd_after_setup
from tasks.app import app, build_worker
worker = build_worker(sys.argv[1:])
celeryd_after_setup.send(sender=worker.hostname, instance=worker, conf=app.conf)
print(json.dumps({
    "modules": sorted(sys.modules),
    "hostname": worker.hostname,
    "concurrency": worker.concurrency,
    "pool": worker.pool_cls.__module__,
    "queues": sorted(app.amqp.queues.consume_from),
    "frozen": gc.get_freeze_count(),
}))
"""


@pytest.fixture(scope="module")
def before_fork(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The worker's main process as the pool would fork it, in a fresh interpreter (no
    broker is reached: building a worker connects to nothing)."""
    home = tmp_path_factory.mktemp("worker-imports")
    settings = Settings(
        home=home,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        worker_concurrency=3,
        worker_executors=["builtin", "process"],
    )
    argv = worker_argv(settings, "runner-imports")
    env = {
        **os.environ,
        "LAUNCHBAY_HOME": str(home),
        "LAUNCHBAY_REDIS_URL": settings.effective_redis_url,
        "LAUNCHBAY_WORKER_EXECUTORS": "builtin,process",
        "LAUNCHBAY_RUNNER_ID": "runner-imports",
        "PYTHONWARNINGS": "ignore",
    }
    return run_probe(_PROBE, *argv[argv.index("worker") :], env=env)


def _present(modules: list[str], name: str) -> list[str]:
    return [m for m in modules if m == name or m.startswith(name + ".")]


# (ids not bare names: a test whose keywords include "docker" is taken for a Docker test)
@pytest.mark.parametrize("name", ABSENT, ids=lambda n: f"no {n}")
def test_the_worker_does_not_import_before_forking(before_fork: dict[str, Any], name: str) -> None:
    assert _present(before_fork["modules"], name) == []


def test_what_every_child_needs_is_imported_before_the_fork(before_fork: dict[str, Any]) -> None:
    """Imported in the main process, the children share these pages; imported by each
    child after the fork, each holds a copy."""
    modules = set(before_fork["modules"])
    for name in (
        "tasks.jobs",  # the task, and with it the store, the dispatcher and the channel
        "orchestrator.store",
        "workers.launchers.builtin",  # the launchers of the worker's executors
        "workers.launchers.process",
        "sqlalchemy.dialects.sqlite.pysqlite",  # the database's dialect and driver
    ):
        assert name in modules, name


def test_the_heap_is_frozen_out_of_the_collector_before_the_fork(
    before_fork: dict[str, Any],
) -> None:
    # (so the children's garbage collections write to no page they share)
    assert before_fork["frozen"] > 10_000


def test_the_worker_is_the_one_the_service_argv_asks_for(before_fork: dict[str, Any]) -> None:
    assert before_fork["hostname"].startswith("runner-imports@")
    assert "%h" not in before_fork["hostname"]
    assert before_fork["concurrency"] == 3
    assert before_fork["pool"] == "celery.concurrency.prefork"
    assert "lb.maintenance" in before_fork["queues"]
    assert any(q.startswith("lb.builtin") for q in before_fork["queues"])
