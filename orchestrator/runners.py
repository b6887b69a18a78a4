"""The live runner registry: ``lb:runners:{id}`` keys with a TTL renewed by heartbeat, and
the set of registered ids (``lb:runner-ids``) that lists them.

Listing the runners once scanned every key in Redis for ``lb:runners:*``: a cost that grew
with every job's event and log streams kept (20,000 keys: 40 SCAN round trips for each
``GET /stats``, each submit's runner check every 2 s, each metrics scrape). Now it reads
the set, then the keys it names: three round trips whatever Redis holds. A key's TTL stays
the truth of whether a runner lives; an id whose key is gone is dropped from the set when
the list is read (a runner that beats again adds itself back).

A runner of a version from before the set beats without adding itself to it: during a
rolling upgrade the new API would not list it (``/stats`` counting fewer workers, submits
warned that no runner takes them). The reconciler adds such runners to the set
(:meth:`RunnerRegistry.adopt_unlisted`: one SCAN, once per ADOPT_EVERY_S across every
process), so an old runner is listed within a minute of the first new worker or beat.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import redis
from pydantic import BaseModel, Field

from orchestrator.events import RUNNERS_INDEX, runner_key
from orchestrator.job import utcnow

# How often the reconciler looks for runners that are registered but not in the set (the
# SCAN the listing no longer does: once a minute, whatever the number of processes).
ADOPT_EVERY_S = 60


def new_runner_id() -> str:
    return f"runner-{uuid.uuid4().hex[:12]}"


class RunnerInfo(BaseModel):
    id: str = Field(default_factory=new_runner_id)
    kind: str = "celery"  # celery | agent
    hostname: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    executors: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    project_dirs: list[str] = Field(
        default_factory=list, description="Directories its jobs may demand (and those inside)."
    )
    capabilities: dict[str, str] = Field(
        default_factory=dict, description="Free key=value capabilities a job may demand."
    )
    capacity: int = 1
    queues: list[str] = Field(default_factory=list)
    draining: bool = Field(default=False, description="Takes no new jobs; hands running back.")
    started_at: str = Field(default_factory=lambda: utcnow().isoformat())
    last_seen: str = Field(default_factory=lambda: utcnow().isoformat())

    def satisfies(self, executor: str, tags: list[str]) -> bool:
        return executor in self.executors and set(tags) <= set(self.tags)

    def takes(self, executor: str, demands: Any) -> bool:
        """Whether this runner meets a job's executor and demands (orchestrator/capabilities)."""
        from orchestrator.capabilities import satisfies

        return satisfies(self, executor, demands)


class RunnerRegistry:
    def __init__(self, client: redis.Redis, ttl_s: float = 15) -> None:
        self.r = client
        self.ttl_s = ttl_s

    def heartbeat(self, info: RunnerInfo) -> None:
        info.last_seen = utcnow().isoformat()
        self.r.set(runner_key(info.id), info.model_dump_json(), ex=max(1, int(self.ttl_s)))
        self.r.sadd(RUNNERS_INDEX, info.id)  # (after the key: listed only once it is there)

    def touch(self, runner_id: str) -> bool:
        """Renew a registered runner's TTL (a long-poll is a sign of life); never brings
        back one that unregistered or expired."""
        return bool(self.r.expire(runner_key(runner_id), max(1, int(self.ttl_s))))

    def remove(self, runner_id: str) -> None:
        self.r.delete(runner_key(runner_id))
        self.r.srem(RUNNERS_INDEX, runner_id)

    def get(self, runner_id: str) -> RunnerInfo | None:
        raw = self.r.get(runner_key(runner_id))
        return RunnerInfo.model_validate_json(raw) if raw else None

    def live(self) -> list[RunnerInfo]:
        ids = sorted(self.r.smembers(RUNNERS_INDEX))
        if not ids:
            return []
        values = self.r.mget([runner_key(i) for i in ids])
        gone = [i for i, v in zip(ids, values, strict=True) if v is None]
        if gone:  # (expired or removed; a runner whose beat comes back re-adds itself)
            self.r.srem(RUNNERS_INDEX, *gone)
        return [RunnerInfo.model_validate(json.loads(v)) for v in values if v]

    def adopt_unlisted(self) -> int:
        """Add to the set every runner whose key exists but whose id the set lacks (one
        that beats without adding itself: an older version's); how many were added. A
        SCAN of the keyspace, so the reconciler's, once per ADOPT_EVERY_S (see the module);
        an id adopted just as its runner unregistered is dropped again by the next
        listing."""
        prefix = runner_key("")
        ids = [k.removeprefix(prefix) for k in self.r.scan_iter(match=f"{prefix}*", count=1000)]
        return int(self.r.sadd(RUNNERS_INDEX, *ids)) if ids else 0

    def summary(self, active_by_runner: dict[str, int]) -> dict[str, Any]:
        runners = self.live()
        return {
            "count": len(runners),
            "capacity": sum(r.capacity for r in runners),
            "active": sum(active_by_runner.get(r.id, 0) for r in runners),
        }
