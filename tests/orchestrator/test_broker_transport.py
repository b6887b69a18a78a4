"""Celery's transport on Redis (orchestrator/broker.py): kombu's, with one Redis client per
channel for its one-shot operations. kombu 5.7 built a ``redis.Redis`` (~50 µs) for every
publish, delivery record and ack. On a real Valkey: messages still go where they should,
and twenty publishes build no client after the first."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from orchestrator import broker
from orchestrator.celery_app import RUN_JOB, make_celery
from orchestrator.settings import Settings

QUEUE = "lb.test-transport"


@pytest.fixture
def url(valkey_url: str) -> str:
    return valkey_url.rsplit("/", 1)[0] + "/6"


def test_publishes_reuse_one_client_and_arrive(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_celery(Settings(redis_url=url))
    plain = redis.Redis.from_url(url)
    plain.delete(QUEUE)
    made: list[Any] = []
    real_init = redis.Redis.__init__

    def counting(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real_init(self, *args, **kwargs)

    with app.connection_for_write() as conn, app.producer_or_acquire() as producer:
        assert isinstance(conn.default_channel, broker.Channel)
        app.send_task(RUN_JOB, args=["warm", 1], queue=QUEUE, producer=producer)
        monkeypatch.setattr(redis.Redis, "__init__", counting)
        for i in range(20):
            app.send_task(RUN_JOB, args=[f"job-{i}", 1], queue=QUEUE, producer=producer)
        monkeypatch.undo()
    assert made == []  # (kombu's own channel made one per publish)
    assert plain.llen(QUEUE) == 21
    plain.delete(QUEUE)
    plain.close()


def test_a_new_pool_gets_a_new_client(url: str) -> None:
    app = make_celery(Settings(redis_url=url))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        channel._pool = None  # (as kombu does when it drops its pools)
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not again  # (the poller's own)


def test_other_brokers_keep_kombus_transport() -> None:
    app = make_celery(Settings(redis_url="sentinel://127.0.0.1:26379/0"))
    assert app.conf.broker_transport is None
