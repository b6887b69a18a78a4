"""The webhook reader on real Valkey: with no active webhook it reads nothing from the
firehose, and a webhook made later gets only the events that follow it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator.events import FIREHOSE_STREAM, Events
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.webhook_delivery import (
    GROUP,
    HOOKS_VERSION,
    Deliverer,
    ensure_group,
    hooks_changed,
    skip_to_end,
)
from orchestrator.webhooks import Delivery, Webhook, WebhookSpec, WebhookStore
from tests.observability.test_webhooks import Receiver
from tests.support import wait_until


class CountingRedis(redis.Redis):
    """A client that counts the firehose entries XREADGROUP hands its caller."""

    reads = 0

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        got = super().xreadgroup(*args, **kwargs)
        self.reads += sum(len(entries) for _stream, entries in got or [])
        return got


@pytest.fixture
def r(settings: Settings) -> Iterator[CountingRedis]:
    client = CountingRedis.from_url(settings.effective_redis_url, decode_responses=True)
    assert isinstance(client, CountingRedis)
    client.delete(FIREHOSE_STREAM, HOOKS_VERSION)
    yield client
    client.delete(FIREHOSE_STREAM, HOOKS_VERSION)
    client.close()


@pytest.fixture
def hooks(store: JobStore) -> WebhookStore:
    return WebhookStore(store.engine)


@pytest.fixture
def deliverer(
    settings: Settings, r: CountingRedis, hooks: WebhookStore, store: JobStore
) -> Iterator[Deliverer]:
    d = Deliverer(settings, r, hooks, store, consumer="test-reader")
    yield d
    d.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def _publish(r: redis.Redis, settings: Settings, prefix: str, n: int) -> tuple[set[str], str]:
    """``n`` succeeded events of jobs ``{prefix}-{i}``: their job ids, and the last one's
    firehose id."""
    ev = Events(r, logs_dir=settings.logs_dir)
    ids = {f"{prefix}-{i}" for i in range(n)}
    for job_id in sorted(ids):
        ev.publish(job_id, "succeeded", {"spec": {"labels": {}}})
    return ids, r.xrevrange(FIREHOSE_STREAM, count=1)[0][0]


def _group(r: redis.Redis) -> dict[str, Any] | None:
    try:
        groups = r.xinfo_groups(FIREHOSE_STREAM)
    except redis.ResponseError:  # no stream
        return None
    return next((g for g in groups if g["name"] == GROUP), None)


def _last_delivered(r: redis.Redis) -> str | None:
    g = _group(r)
    return g["last-delivered-id"] if g else None


def _make_hook(r: redis.Redis, hooks: WebhookStore, url: str) -> Webhook:
    hook = hooks.create(WebhookSpec(url=url, events=["succeeded"]))
    hooks_changed(r)
    return hook


def _delivered_jobs(hooks: WebhookStore, hook: Webhook, n: int) -> set[str]:
    """The jobs of ``hook``'s deliveries, once there are ``n`` of them."""

    def rows() -> list[Delivery]:
        got = hooks.deliveries(hook.id)
        return got if len(got) >= n else []

    return {d.job_id for d in wait_until(rows, timeout=15, what=f"{n} delivery rows")}


def test_with_no_webhook_the_reader_skips_the_firehose_unread(
    deliverer: Deliverer, r: CountingRedis, settings: Settings
) -> None:
    deliverer.start()
    _ids, last = _publish(r, settings, "idle", 50)
    wait_until(lambda: _last_delivered(r) == last, timeout=10, what="the group at the end")
    assert r.reads == 0
    group = _group(r)
    assert group is not None and group["pending"] == 0


def test_a_webhook_made_later_gets_what_follows_and_nothing_before(
    deliverer: Deliverer,
    r: CountingRedis,
    settings: Settings,
    hooks: WebhookStore,
    receiver: Receiver,
) -> None:
    deliverer.start()
    _before, last = _publish(r, settings, "before", 30)
    wait_until(lambda: _last_delivered(r) == last, timeout=10, what="the group at the end")
    hook = _make_hook(r, hooks, receiver.url)
    after, _ = _publish(r, settings, "after", 7)
    # The stream is read in order: once the last event is delivered, any earlier one
    # that was to be delivered is too.
    assert _delivered_jobs(hooks, hook, len(after)) == after
    assert len(hooks.deliveries(hook.id)) == len(after)
    assert r.reads == len(after)  # the backlog from before the webhook was never read
    wait_until(lambda: len(receiver.got) >= len(after), timeout=15, what="the sends")


def test_the_skip_refuses_when_the_webhooks_changed_since_the_reader_looked(
    r: CountingRedis, settings: Settings
) -> None:
    ensure_group(r)
    start = _last_delivered(r)
    _ids, first = _publish(r, settings, "guard", 3)
    hooks_changed(r)  # a webhook was made: a reader that saw "none" must not skip
    assert skip_to_end(r, None) is False
    assert _last_delivered(r) == start
    version = r.get(HOOKS_VERSION)
    assert skip_to_end(r, version) is True
    assert _last_delivered(r) == first
    _publish(r, settings, "guard-more", 2)
    hooks_changed(r)
    assert skip_to_end(r, version) is False
    assert _last_delivered(r) == first
    r.delete(FIREHOSE_STREAM)
    with pytest.raises(redis.ResponseError, match="requires the key to exist"):
        skip_to_end(r, r.get(HOOKS_VERSION))


def test_an_idle_reader_makes_its_group_again_after_a_flush(
    deliverer: Deliverer, r: CountingRedis, settings: Settings
) -> None:
    deliverer.start()
    wait_until(lambda: _group(r) is not None, timeout=10, what="the group")
    r.delete(FIREHOSE_STREAM)
    _ids, last = _publish(r, settings, "flushed", 4)  # the stream again, without a group
    wait_until(lambda: _last_delivered(r) == last, timeout=10, what="the group back, at the end")
    assert r.reads == 0
