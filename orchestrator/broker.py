"""The Redis broker: the transport Celery uses on it, and a look inside it (which task ids
does it still hold?).

Kombu's Redis transport keeps waiting messages in one list per queue (and per priority
step, ``<queue>\\x06\\x16<n>``); a worker pops the next one when it has a free slot
(without kombu's ack emulation: no ``unacked`` hash, orchestrator/celery_app.py). The
reconciler looks in these lists to re-send queued jobs whose message is in none (a broker
restart without persistence, a flushed database, a worker killed between taking a
message and claiming its job).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

# Celery's ``broker_transport`` for redis:// and rediss:// brokers (orchestrator/celery_app.py).
TRANSPORT = "orchestrator.broker:Transport"


class Channel(kombu_redis.Channel):
    """Kombu's Redis channel, with one Redis client for its one-shot operations instead of
    a new one for each: kombu 5.7 builds a ``redis.Redis`` (about 50 µs: its table of
    reply callbacks) for every publish (and, with the ack emulation Launchbay turns off,
    every delivery's unacked record and every ack), all on the channel's one connection
    pool. A client is safe to share between threads
    (each command takes a connection from the pool); a new pool gets a new client."""

    _shared_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:  # (the poller's BRPOP client: its own, as before)
            return super()._create_client(asynchronous=True)  # type: ignore[no-any-return]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


_PRIORITY_SEP = "\x06\x16"
# The priority steps kombu is asked for (orchestrator/celery_app.py): one list per step.
PRIORITY_STEPS = range(10)


def _task_id(raw: str) -> str | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(msg, dict):
        return None
    task_id = (msg.get("headers") or {}).get("id")
    return task_id if isinstance(task_id, str) else None


def held_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """Task ids of every message waiting in ``queues``. (Not the ``unacked`` hash of
    kombu's ack emulation, which Launchbay no longer uses: nothing gives back what a
    release before that left there, so its jobs count as lost and are re-sent.)"""
    held: set[str] = set()
    for queue in set(queues):
        # (The ten lists its priorities may use, by name: a SCAN for them read every key
        # in Redis, every job's streams among them, at each sweep.)
        for key in queue_keys(queue):
            for raw in client.lrange(key, 0, -1):
                if (tid := _task_id(raw)) is not None:
                    held.add(tid)
    return held


# ---------------------------------------------------------------- sending without kombu


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu's transport keeps ``queue``'s messages of ``priority`` in (its
    ``_q_for_pri`` with our ten priority steps, 0-9: 0 is the queue's own name)."""
    priority = max(0, min(9, int(priority)))
    return f"{queue}{_PRIORITY_SEP}{priority}" if priority else queue


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a Celery queue's messages, one per priority step."""
    return [queue_key(queue, p) for p in PRIORITY_STEPS]


class TaskMessages:
    """Celery task messages as kombu's Redis transport pushes them, made without a
    publish: Celery builds the message (``app.amqp.as_task_v2``, its own protocol-2
    headers and body), and this wraps it as kombu's transport would (JSON body in
    base64, the delivery info of the default exchange, a fresh delivery tag). The caller
    pushes it onto :func:`queue_key` (the events outbox: one script call with the job's
    event). ``Celery.send_task`` spends about 230 µs of CPU per message on routing,
    producer pools, retry wrappers and its own round trip; this about 15 µs.

    Only for our transport on redis:// or rediss:// (:meth:`for_app` says), where the
    queue key is all routing there is: jobs go to named queues on the default exchange.
    tests/orchestrator/test_task_messages.py holds it to what ``send_task`` pushes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @classmethod
    def for_app(cls, app: Any, client: redis.Redis) -> TaskMessages | None:
        """Messages for ``app`` when ``client`` talks to its broker's Redis with our
        transport (and no key prefix); ``None`` when they must go through Celery."""
        conf = getattr(app, "conf", None)
        if conf is None or conf.broker_transport != TRANSPORT:
            return None
        if (conf.broker_transport_options or {}).get("global_keyprefix"):
            return None
        return cls(app) if same_server(client, conf.broker_url) else None

    def make(
        self,
        name: str,
        task_id: str,
        *,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        priority: int,
        expires: datetime | None = None,
    ) -> tuple[str, str]:
        """The list to push onto and the message to push, for ``app.send_task(name, …)``."""
        msg = self.app.amqp.as_task_v2(
            task_id,
            name,
            args=args,
            kwargs=kwargs,
            expires=expires,
            argsrepr=repr(args),  # (plain values: Celery's saferepr costs more than the rest)
            kwargsrepr=repr(kwargs),
            ignore_result=None,  # (as send_task leaves it: the app's setting decides)
        )
        body = base64.b64encode(json.dumps(list(msg.body)).encode()).decode()
        props: dict[str, Any] = {
            "correlation_id": task_id,
            "reply_to": self.app.thread_oid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        if expires is not None:  # (kombu's ``expiration``: what AMQP brokers read)
            left_ms = (expires - datetime.now(UTC)).total_seconds() * 1000
            props["expiration"] = str(max(0, int(left_ms)))
        envelope = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": msg.headers,
            "properties": props,
        }
        return queue_key(queue, priority), json.dumps(envelope)


def same_server(client: redis.Redis, url: str) -> bool:
    """Whether ``client`` talks to the Redis server and database ``url`` names."""
    try:
        other = redis.ConnectionPool.from_url(url).connection_kwargs
    except ValueError:
        return False
    mine = client.connection_pool.connection_kwargs
    keys = ("host", "port", "path", "db")
    return all(mine.get(k) == other.get(k) for k in keys)
