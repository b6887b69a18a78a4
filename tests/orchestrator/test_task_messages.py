"""Task messages without kombu (orchestrator/broker.py ``TaskMessages``): on a real Valkey,
the message the dispatcher pushes through the events outbox is the one Celery's
``send_task`` pushes for the same job, a submit's message and created event leave in one
call, and a Redis that is away still fails the job with a 503. (Every real-stack test
that submits over HTTP runs its jobs from these messages on a real Celery worker.)"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from orchestrator import broker
from orchestrator.broker import TaskMessages, queue_key
from orchestrator.celery_app import RUN_JOB, make_celery
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import BrokerUnavailable
from orchestrator.events import Events, Outbox, connect, job_events_key
from orchestrator.job import BuiltinSpec, JobStatus
from orchestrator.services import free_port
from orchestrator.settings import Settings
from orchestrator.store import JobStore

QUEUE = "lb.test-messages"


def _pushed(r: redis.Redis, key: str) -> dict[str, Any]:
    [raw] = r.lrange(key, 0, -1)
    r.delete(key)
    msg = json.loads(raw)
    msg["body"] = json.loads(base64.b64decode(msg["body"]))
    return msg  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("priority", "kwargs", "expires_in"),
    [(0, {}, None), (4, {"demand_tags": ["gpu"]}, 30.0), (9, {}, 5.0)],
)
def test_the_message_is_what_send_task_pushes(
    settings: Settings, priority: int, kwargs: dict[str, Any], expires_in: float | None
) -> None:
    app = make_celery(settings)
    r = connect(settings.effective_redis_url)
    messages = TaskMessages.for_app(app, r)
    assert messages is not None
    expires = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
    args = ["job-1", 2]
    app.send_task(
        RUN_JOB,
        args=args,
        kwargs=kwargs,
        argsrepr=repr(args),
        kwargsrepr=repr(kwargs),
        task_id="job-1-2",
        queue=QUEUE,
        priority=priority,
        expires=expires,
    )
    key, raw = messages.make(
        RUN_JOB, "job-1-2", args=args, kwargs=kwargs, queue=QUEUE, priority=priority,
        expires=expires,
    )  # fmt: skip
    assert key == queue_key(QUEUE, priority)
    celery_msg = _pushed(r, key)  # (send_task's lands on the same list)
    r.lpush(key, raw)
    ours = _pushed(r, key)
    assert ours["headers"] == celery_msg["headers"]
    assert ours["body"] == celery_msg["body"]
    for field in ("content-type", "content-encoding"):
        assert ours[field] == celery_msg[field]
    p, q = ours["properties"], celery_msg["properties"]
    for field in ("correlation_id", "reply_to", "delivery_mode", "delivery_info", "priority"):
        assert p[field] == q[field], field
    assert p["body_encoding"] == q["body_encoding"] == "base64"
    assert p["delivery_tag"] != q["delivery_tag"]
    if expires is None:
        assert "expiration" not in p and "expiration" not in q
    else:
        assert abs(int(p["expiration"]) - int(q["expiration"])) < 2000
    r.close()


def test_only_for_our_transport_on_the_same_redis(settings: Settings) -> None:
    app = make_celery(settings)
    same = connect(settings.effective_redis_url)
    other_db = connect(settings.effective_redis_url.rsplit("/", 1)[0] + "/3")
    assert TaskMessages.for_app(app, same) is not None
    assert TaskMessages.for_app(app, other_db) is None
    memory = make_celery(settings)
    memory.conf.broker_transport = "memory"
    assert TaskMessages.for_app(memory, same) is None
    prefixed = make_celery(settings)
    prefixed.conf.broker_transport_options = {"global_keyprefix": "x:"}
    assert TaskMessages.for_app(prefixed, same) is None
    same.close()
    other_db.close()


def test_queue_keys_follow_kombus_priority_lists() -> None:
    assert queue_key("lb.builtin", 0) == "lb.builtin"
    assert queue_key("lb.builtin", 9) == "lb.builtin\x06\x169"
    assert queue_key("lb.builtin", 12) == "lb.builtin\x06\x169"  # (kombu clamps to 0-9)
    assert queue_key("lb.builtin", -1) == "lb.builtin"


def test_a_submit_is_one_call_message_and_created_event(
    settings: Settings, store: JobStore, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Dispatcher(settings, store, events, make_celery(settings))
    assert d._messages is not None
    calls: list[list[str]] = []
    real_call = Outbox._call

    def counting(self: Outbox, keys: list[str], ops: list[Any]) -> list[str]:
        calls.append([str(op) for op in ops if op in ("e", "q")])
        return real_call(self, keys, ops)

    monkeypatch.setattr(Outbox, "_call", counting)
    job = d.submit(BuiltinSpec(type="fibonacci", params={"count": 3}, priority=2))
    assert calls == [["e", "q"]]  # one call: the created event, then the message
    [msg] = [
        m
        for m in map(json.loads, events.r.lrange(queue_key("lb.builtin", 7), 0, -1))
        if m["headers"]["id"] == job.task_id
    ]
    assert msg["headers"]["id"] == job.task_id
    assert json.loads(base64.b64decode(msg["body"]))[0] == [job.id, 1]
    [created] = events.r.xrange(job_events_key(job.id))
    assert created[1]["type"] == "created"

    calls.clear()
    jobs = d.submit_many([BuiltinSpec(type="echo_delay", params={}) for _ in range(3)])
    assert calls == [["e"] * 3 + ["q"] * 3]  # the batch: one call, the events first
    queued = [json.loads(m) for m in events.r.lrange(queue_key("lb.builtin", 9), 0, -1)]
    ids = {m["headers"]["id"] for m in queued}  # (other tests use this database too)
    assert {j.task_id for j in jobs} <= ids
    assert all(store.get(j.id).status == JobStatus.queued for j in jobs)


def test_redis_away_fails_the_job_with_503(settings: Settings, store: JobStore) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    events = Events(connect(dead.effective_redis_url), logs_dir=dead.logs_dir)
    d = Dispatcher(dead, store, events, make_celery(dead))
    assert d._messages is not None  # (the direct path, not send_task's)
    with pytest.raises(BrokerUnavailable) as info:
        d.submit(BuiltinSpec(type="fibonacci", params={"count": 3}))
    assert info.value.status_code == 503
    [job], _ = store.list()
    assert job.status == JobStatus.failed and "broker unavailable" in (job.error or "")
    with pytest.raises(BrokerUnavailable):
        d.submit_many([BuiltinSpec(type="fibonacci", params={"count": 3})])
    assert store.counts_by_status()["failed"] == 2
    assert broker.same_server(events.r, dead.effective_redis_url)
