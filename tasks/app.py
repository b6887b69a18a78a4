"""The Celery app that workers, beat and Flower load, and the worker program
(:func:`run_worker`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from celery.signals import after_setup_logger

from orchestrator.celery_app import make_celery
from orchestrator.hardening import harden_process
from orchestrator.runners import new_runner_id
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from celery.apps.worker import Worker

# Every worker host gets one runner id; forked pool children inherit it.
os.environ.setdefault("LAUNCHBAY_RUNNER_ID", new_runner_id())
# Every Celery process of Launchbay (worker, its pool children, beat, Flower) imports this
# module and holds the broker's and the store's credentials: none is readable or
# traceable by a job of the same user (orchestrator/hardening.py).
harden_process()

app = make_celery(Settings.from_env(), include=["tasks.jobs", "tasks.maintenance"])

from tasks import lifecycle, warm  # noqa: E402,F401  (connect worker signals)

# Celery's own line per task received and per task done: Launchbay logs each attempt's
# start and end (workers/attempt.py) with its job, attempt and outcome, so at INFO a job
# wrote four lines, two of them saying again what the other two say (measured: 0.17 ms
# of the worker's CPU per job). Their warnings and errors still show.
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def _one_line_per_step(**_: object) -> None:
    for name in _PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_worker(argv: Sequence[str] | None = None) -> Worker:
    """The worker that ``argv`` asks for, built up to its pool's fork (nothing started).

    ``argv`` takes the options of ``celery worker`` that Launchbay starts it with
    (orchestrator/services.py): ``worker -Q QUEUES -c N -P POOL -n NAME -l LEVEL
    [--without-mingle] [--without-gossip]``.
    """
    import argparse

    from celery.platforms import maybe_drop_privileges
    from celery.utils.nodenames import default_nodename, host_format

    ap = argparse.ArgumentParser(prog="launchbay-worker")
    ap.add_argument("command", choices=["worker"])
    ap.add_argument("-Q", "--queues", default="")
    ap.add_argument("-c", "--concurrency", type=int)
    ap.add_argument("-P", "--pool", choices=("prefork", "solo", "threads"))
    ap.add_argument("-n", "--hostname")
    ap.add_argument("-l", "--loglevel", default="WARNING")
    ap.add_argument("--without-mingle", action="store_true")
    ap.add_argument("--without-gossip", action="store_true")
    args = ap.parse_args(argv)
    maybe_drop_privileges()  # (as ``celery worker`` does: refuses a setuid-root start)
    return app.Worker(
        hostname=host_format(default_nodename(args.hostname)),
        queues=[q for q in args.queues.split(",") if q] or None,
        concurrency=args.concurrency,
        pool=args.pool,
        loglevel=args.loglevel,
        without_mingle=args.without_mingle,
        without_gossip=args.without_gossip,
        optimization="default",
    )


def run_worker(argv: Sequence[str] | None = None) -> NoReturn:
    """Run a worker until it stops, then exit with its exit code (see :func:`build_worker`).

    Not through the ``celery`` program: its command group imports every installed
    ``celery.commands`` plugin before it loads an app (Flower with Tornado and
    prometheus_client, click-repl with prompt_toolkit, Pygments), about 15 MB that a
    worker never uses, held by its main process and inherited by every pool child.
    """
    worker = build_worker(argv)
    worker.start()
    sys.exit(worker.exitcode)
