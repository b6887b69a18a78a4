"""The Redis broker: the transport Celery uses on it, and a look inside it (which task ids
does it still hold?).

Kombu's Redis transport keeps waiting messages in one list per queue (and per priority
step, ``<queue>\\x06\\x16<n>``) and messages a worker has taken but not acked in the
``unacked`` hash. The reconciler uses this to re-send queued jobs whose message was lost
(a broker restart without persistence, a flushed database).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis
from kombu.transport import redis as kombu_redis

UNACKED_KEY = "unacked"
# Celery's ``broker_transport`` for redis:// and rediss:// brokers (orchestrator/celery_app.py).
TRANSPORT = "orchestrator.broker:Transport"


class Channel(kombu_redis.Channel):
    """Kombu's Redis channel, with one Redis client for its one-shot operations instead of
    a new one for each: kombu 5.7 builds a ``redis.Redis`` (about 50 µs: its table of
    reply callbacks) for every publish, every delivery's unacked record and every ack, all
    on the channel's one connection pool. A client is safe to share between threads
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


def _task_id(raw: str) -> str | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    if isinstance(msg, list):  # unacked entries are [payload, exchange, routing_key]
        msg = msg[0] if msg else {}
    if not isinstance(msg, dict):
        return None
    task_id = (msg.get("headers") or {}).get("id")
    return task_id if isinstance(task_id, str) else None


def held_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """Task ids of every message waiting in ``queues`` or taken but not yet acked."""
    held: set[str] = set()
    for queue in set(queues):
        keys = [queue, *client.scan_iter(match=f"{queue}{_PRIORITY_SEP}*", count=100)]
        for key in keys:
            for raw in client.lrange(key, 0, -1):
                if (tid := _task_id(raw)) is not None:
                    held.add(tid)
    for raw in client.hvals(UNACKED_KEY):
        if (tid := _task_id(raw)) is not None:
            held.add(tid)
    return held
