"""The live runner registry: ``lb:runners:{id}`` keys with a TTL renewed by heartbeat."""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import redis
from pydantic import BaseModel, Field

from orchestrator.events import RUNNERS_PATTERN, runner_key
from orchestrator.job import utcnow


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

    def touch(self, runner_id: str) -> bool:
        """Renew a registered runner's TTL (a long-poll is a sign of life); never brings
        back one that unregistered or expired."""
        return bool(self.r.expire(runner_key(runner_id), max(1, int(self.ttl_s))))

    def remove(self, runner_id: str) -> None:
        self.r.delete(runner_key(runner_id))

    def get(self, runner_id: str) -> RunnerInfo | None:
        raw = self.r.get(runner_key(runner_id))
        return RunnerInfo.model_validate_json(raw) if raw else None

    def live(self) -> list[RunnerInfo]:
        keys = sorted(self.r.scan_iter(match=RUNNERS_PATTERN, count=500))
        if not keys:
            return []
        return [RunnerInfo.model_validate(json.loads(v)) for v in self.r.mget(keys) if v]

    def summary(self, active_by_runner: dict[str, int]) -> dict[str, Any]:
        runners = self.live()
        return {
            "count": len(runners),
            "capacity": sum(r.capacity for r in runners),
            "active": sum(active_by_runner.get(r.id, 0) for r in runners),
        }
