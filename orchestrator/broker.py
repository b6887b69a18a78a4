"""A look inside the Redis broker: which task ids does it still hold?

Kombu's Redis transport keeps waiting messages in one list per queue (and per priority
step, ``<queue>\\x06\\x16<n>``) and messages a worker has taken but not acked in the
``unacked`` hash. The reconciler uses this to re-send queued jobs whose message was lost
(a broker restart without persistence, a flushed database).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis

UNACKED_KEY = "unacked"
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
