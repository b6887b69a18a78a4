"""The Celery app that workers and beat run: ``celery -A tasks.app worker``."""

from __future__ import annotations

import os

from orchestrator.celery_app import make_celery
from orchestrator.hardening import harden_process
from orchestrator.runners import new_runner_id
from orchestrator.settings import Settings

# Every worker host gets one runner id; forked pool children inherit it.
os.environ.setdefault("LAUNCHBAY_RUNNER_ID", new_runner_id())
# Every Celery process of Launchbay (worker, its pool children, beat, Flower) imports this
# module and holds the broker's and the store's credentials: none is readable or
# traceable by a job of the same user (orchestrator/hardening.py).
harden_process()

app = make_celery(Settings.from_env(), include=["tasks.jobs", "tasks.maintenance"])

from tasks import lifecycle, warm  # noqa: E402,F401  (connect worker signals)


def _guard_kombu_restore_on_closed_connection() -> None:
    """kombu 5.7's Redis transport restores a channel's unacked messages while closing it;
    when the broker connection dropped, the connection is already gone and this raises
    ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which the worker
    treats as unrecoverable and exits (seen in tests/test_chaos.py on a Valkey restart).
    Those messages are restored anyway after the visibility timeout, so the worker logs
    and goes on reconnecting instead."""
    import logging

    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "_launchbay_guarded", False):
        return

    def restore_unacked(self, client=None):  # type: ignore[no-untyped-def]
        try:
            return original(self, client)
        except AttributeError as exc:
            logging.getLogger(__name__).warning(
                "could not give back unacked messages while the broker connection closed "
                "(%s); they come back after the visibility timeout",
                exc,
            )
            return None

    restore_unacked._launchbay_guarded = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


_guard_kombu_restore_on_closed_connection()
