"""One settings model for every Launchbay process (env prefix ``LAUNCHBAY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, computed_field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.job import EXECUTORS


def _default_home() -> Path:
    import platformdirs  # (only without LAUNCHBAY_HOME; every process imports this module)

    return Path(platformdirs.user_data_dir("launchbay"))


class Settings(BaseSettings):
    """Settings shared by the API, workers, beat and the CLI.

    Pass an instance around (FastAPI dependency, worker bootstrap); nothing reads the
    environment behind your back except :meth:`Settings.from_env`.
    """

    model_config = SettingsConfigDict(env_prefix="LAUNCHBAY_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home, description="State folder: DB, logs, artifacts."
    )
    redis_url: str | None = Field(default=None, description="Broker, events and log streams.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite in home if unset."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    token: str | None = Field(
        default=None,
        description="The admin bearer token. With it (or LAUNCHBAY_TOKENS) set, every route "
        "that acts needs a token; Flower needs it too (user 'launchbay').",
    )
    tokens: str | None = Field(
        default=None,
        description="More tokens with scopes, comma-separated 'scope[+scope]=secret' "
        "(scopes: admin, submit, read, agent, metrics), e.g. 'submit=s3cr3t,agent=enr0ll'.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins besides the API's own that may call it (CORS) and open "
        "its WebSockets, comma-separated (e.g. 'https://ops.example.com').",
    )
    job_user: str | None = Field(
        default=None,
        description="Unprivileged user process jobs run as when the worker runs as root "
        "(default: 'launchbay-job' if it exists, else 'nobody').",
    )

    log_buffer_lines: int = Field(
        default=1000, ge=10, description="Live log lines kept in Redis per job."
    )
    stream_queue_size: int = Field(
        default=1000,
        ge=1,
        description="Undelivered live messages one SSE/WebSocket client may have pending "
        "before it is disconnected as too slow.",
    )
    stream_redis_connections: int = Field(
        default=16,
        ge=1,
        description="Redis connections one API process uses for its live clients' stream "
        "reads (plus its one subscription); clients queue for them, whatever their number.",
    )
    stream_send_timeout_s: float = Field(
        default=10,
        gt=0,
        le=600,
        description="A live client (SSE or WebSocket) whose socket takes no more data for this "
        "long is dropped as too slow, so it holds nothing of the server's for longer.",
    )
    sse_ping_s: float = Field(default=15, gt=0, description="Keep-alive comment interval on SSE.")

    # Input bounds: every request, and everything a job may send back, has a size.
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=1 << 30,
        description="Largest request body the API reads (413 past it). The agent routes and "
        "artifact uploads have bounds of their own.",
    )
    max_agent_body_bytes: int = Field(
        default=16 << 20,
        ge=1 << 20,
        le=4 << 30,
        description="Largest body of an agent's report to /launcher (an agent sends its log "
        "in batches of about 1 MiB of text; JSON escaping can make that a few times larger).",
    )
    max_artifact_bytes: int = Field(
        default=1 << 30,
        ge=1,
        description="Largest artifact an agent may upload (413 past it).",
    )
    max_log_line_bytes: int = Field(
        default=64 << 10,
        ge=256,
        le=16 << 20,
        description="A longer log line is cut here (UTF-8 bytes), with a marker saying how "
        "long it was.",
    )
    retention_days: float = Field(default=30, ge=0)
    lease_s: float = Field(default=30, gt=0, description="Runner lease; renewed every lease_s/3.")
    progress_store_s: float = Field(
        default=2,
        ge=0,
        description="At most one store write of an attempt's progress per this many seconds "
        "per process (every report is still an event at once; 0 writes every report).",
    )
    reconcile_interval_s: float = Field(default=5, gt=0)
    cancel_fallback_s: float = Field(
        default=20, gt=0, description="Extra wait after the grace before a forced revoke."
    )
    default_match_timeout_s: float = Field(
        default=300,
        gt=0,
        le=366 * 86400,
        description="How long a job waits for a runner that meets its demands before it "
        "fails (a spec's match_timeout_s overrides it).",
    )
    resend_after_s: float = Field(
        default=30,
        gt=0,
        description="Age after which a queued job whose message is in no queue (the broker "
        "lost it, or a worker that took it died before starting it) is sent again.",
    )
    drain_s: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="On SIGTERM, how long a worker or agent lets running jobs finish before "
        "handing them back (re-queued, no attempt spent).",
    )
    max_lost: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Times a job whose runner was lost is re-queued without spending its "
        "max_attempts (a spec's max_lost overrides it; 0: never run a job twice).",
    )
    launch_retries: int = Field(default=3, ge=1)
    launch_backoff_s: float = Field(default=0.5, ge=0)

    worker_concurrency: int = Field(default=4, ge=1)
    worker_executors: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["builtin", "process"]
    )
    worker_tags: Annotated[list[str], NoDecode] = Field(default_factory=list)
    worker_project_dirs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Capabilities (issue 16): project directories this worker may run jobs "
        "in, comma-separated absolute paths.",
    )
    worker_capabilities: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Capabilities: free key=value pairs this worker declares, comma-separated "
        "(e.g. 'gpu=a100,zone=eu').",
    )
    runner_id: str | None = None
    runner_heartbeat_s: float = 5
    process_sweep_s: float = Field(default=60, gt=0)
    # Flow control (issue 14).
    worker_prefetch: bool = Field(
        default=False,
        description="Let a busy worker take one message ahead of a free slot: a little "
        "faster for short jobs, but a higher-priority job sent later waits behind it.",
    )
    idempotency_ttl_s: float = Field(
        default=86400, gt=0, description="How long an Idempotency-Key is kept."
    )
    long_poll_max_s: float = Field(
        default=30,
        gt=0,
        le=30,
        description="The longest the API holds a waiting request (?wait= on a job, an "
        "agent's long poll) before answering as things stand: lower it behind a proxy "
        "with a shorter idle timeout.",
    )
    schedule_tick_s: float = Field(
        default=5, gt=0, description="How often beat looks for due schedule ticks."
    )
    schedule_grace_s: float = Field(
        default=60,
        gt=0,
        description="A tick found later than this after its time counts as missed "
        "(caught up once or skipped, as its schedule says).",
    )

    kube_namespace: str = "default"

    # Observability (issue 15).
    webhooks_enabled: bool = Field(
        default=True, description="Each API process delivers webhooks (a thread of its own)."
    )
    webhook_max_tries: int = Field(default=8, ge=1, le=50, description="Tries per delivery.")
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, le=600, description="First retry delay (doubles, plus jitter)."
    )
    webhook_max_backoff_s: float = Field(default=300, gt=0, description="Longest retry delay.")
    webhook_timeout_s: float = Field(default=10, gt=0, le=120, description="Per try.")
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry traces (needs the 'otel' extra; exporter from the "
        "standard OTEL_* variables).",
    )
    access_log: bool = Field(
        default=True, description="JSON access log lines on stderr, one per request."
    )

    @field_validator(
        "worker_executors", "worker_tags", "allowed_origins", "worker_project_dirs", mode="before"
    )
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("worker_capabilities", mode="before")
    @classmethod
    def _split_pairs(cls, v: object) -> object:
        if isinstance(v, str):
            pairs = [p.strip() for p in v.split(",") if p.strip()]
            bad = [p for p in pairs if "=" not in p]
            if bad:
                raise ValueError(f"capabilities are key=value, got {bad[0]!r}")
            return dict(p.split("=", 1) for p in pairs)
        return v

    @field_validator("worker_executors")
    @classmethod
    def _known_executors(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(EXECUTORS))
        if unknown:
            raise ValueError(f"unknown executor(s) {unknown}; use {','.join(EXECUTORS)}")
        if not v:
            raise ValueError("a worker needs at least one executor")
        return v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'launchbay.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    def ensure_dirs(self) -> None:
        for d in (self.home, self.artifacts_dir, self.logs_dir, self.workspaces_dir):
            d.mkdir(parents=True, exist_ok=True)
        # A job's user may pass through home and workspaces to its own workspace; nothing
        # else here is theirs to read (the database, logs, artifacts, secrets).
        from orchestrator.hardening import private_tree

        private_tree(
            self.home, self.artifacts_dir, self.logs_dir, traversable=(self.workspaces_dir,)
        )

    @classmethod
    def from_env(cls) -> Settings:
        return cls()
