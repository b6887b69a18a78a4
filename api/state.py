"""What one API process holds: settings, store, events, dispatcher, the fan-out hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from orchestrator.agent_keys import AgentKeys
from orchestrator.artifacts import ArtifactStore
from orchestrator.celery_app import make_celery
from orchestrator.credentials import Principal, parse_tokens
from orchestrator.dispatch import Dispatcher
from orchestrator.events import Events, connect
from orchestrator.runners import RunnerRegistry
from orchestrator.settings import Settings
from orchestrator.store import JobStore


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    events: Events
    celery: Celery
    dispatcher: Dispatcher
    runners: RunnerRegistry
    artifacts: ArtifactStore
    agent_keys: AgentKeys
    tokens: dict[str, Principal] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        settings.ensure_dirs()
        store = JobStore(settings.effective_database_url)
        r = connect(settings.effective_redis_url)
        events = Events(r, logs_dir=settings.logs_dir, log_buffer_lines=settings.log_buffer_lines)
        celery = make_celery(settings)
        return cls(
            settings=settings,
            store=store,
            events=events,
            celery=celery,
            dispatcher=Dispatcher(settings, store, events, celery),
            runners=RunnerRegistry(r, ttl_s=settings.runner_heartbeat_s * 3),
            artifacts=ArtifactStore(settings.artifacts_dir),
            agent_keys=AgentKeys(store.engine),
            tokens=parse_tokens(settings.token, settings.tokens),
        )

    def close(self) -> None:
        self.store.dispose()
        self.events.r.close()
