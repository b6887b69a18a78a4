"""The runner registry lists runners from the set of registered ids, not by scanning Redis,
and the reconciler adds to the set the runners that beat without it (orchestrator/runners.py).
On a real Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.celery_app import make_celery
from orchestrator.dispatch import Dispatcher
from orchestrator.events import RUNNERS_INDEX, Events, runner_key
from orchestrator.runners import RunnerInfo, RunnerRegistry
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from tests.support import RedisCommands


@pytest.fixture
def registry(events: Events) -> Iterator[RunnerRegistry]:
    reg = RunnerRegistry(events.r, ttl_s=30)
    yield reg
    for rid in ("runner-reg-a", "runner-reg-b", "runner-reg-c"):
        reg.remove(rid)


def _mine(runners: list[RunnerInfo]) -> list[str]:
    return [r.id for r in runners if r.id.startswith("runner-reg-")]


def test_listing_costs_the_same_whatever_else_redis_holds(
    registry: RunnerRegistry, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 other keys (jobs' streams, say): listing the runners reads the set and the
    keys it names, never a SCAN of the keyspace (which took 10 round trips here, and one
    more per 500 keys that Redis held)."""
    for rid in ("runner-reg-b", "runner-reg-a"):
        registry.heartbeat(RunnerInfo(id=rid, capacity=2))
    pipe = events.r.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"lb:test-registry-filler:{i}", "x", ex=60)
    pipe.execute()
    sent = RedisCommands(events.r, monkeypatch).names

    live = registry.live()

    assert _mine(live) == ["runner-reg-a", "runner-reg-b"]
    assert "SCAN" not in sent and len(sent) <= 3, sent
    assert sum(r.capacity for r in live if r.id.startswith("runner-reg-")) == 4


def test_a_runner_whose_key_is_gone_leaves_the_list_and_comes_back_with_its_beat(
    registry: RunnerRegistry, events: Events
) -> None:
    for rid in ("runner-reg-a", "runner-reg-b", "runner-reg-c"):
        registry.heartbeat(RunnerInfo(id=rid))
    events.r.delete(runner_key("runner-reg-a"))  # (as its TTL would, had it stopped beating)
    registry.remove("runner-reg-b")

    assert _mine(registry.live()) == ["runner-reg-c"]
    ids = events.r.smembers(RUNNERS_INDEX)
    assert "runner-reg-a" not in ids and "runner-reg-b" not in ids  # (dropped by the listing)

    registry.heartbeat(RunnerInfo(id="runner-reg-a"))
    assert _mine(registry.live()) == ["runner-reg-a", "runner-reg-c"]


def test_a_runner_that_beats_without_the_set_is_adopted_by_the_reconciler(
    registry: RunnerRegistry, events: Events, settings: Settings, store: JobStore
) -> None:
    """A runner of an older version (rolling upgrade) sets its key and never adds itself to
    the set: the listing misses it until the reconciler's pass adds it, which scans once
    per window however many processes reconcile."""
    registry.heartbeat(RunnerInfo(id="runner-reg-a"))
    old = RunnerInfo(id="runner-reg-b", capacity=3)
    events.r.set(runner_key(old.id), old.model_dump_json(), ex=30)  # (as it beats)
    events.r.delete("lb:reconcile:runners")
    assert _mine(registry.live()) == ["runner-reg-a"]

    dispatcher = Dispatcher(settings, store, events, make_celery(settings))
    assert dispatcher.reconcile()["runners_adopted"] >= 1
    assert _mine(registry.live()) == ["runner-reg-a", "runner-reg-b"]

    events.r.srem(RUNNERS_INDEX, old.id)  # (within the window: no second scan)
    assert "runners_adopted" not in dispatcher.reconcile()
    assert _mine(registry.live()) == ["runner-reg-a"]
    events.r.delete("lb:reconcile:runners")  # (the window over)
    assert dispatcher.reconcile()["runners_adopted"] == 1
    assert _mine(registry.live()) == ["runner-reg-a", "runner-reg-b"]
