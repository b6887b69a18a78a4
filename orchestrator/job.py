"""The job model and its state machine. Pure: no I/O happens here."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from orchestrator.errors import ParamError
from orchestrator.jobtypes import JOB_TYPES, validate_params


class JobStatus(enum.StrEnum):
    queued = "queued"
    claimed = "claimed"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


TERMINAL_STATUSES = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.timed_out}
)
ACTIVE_STATUSES = frozenset({JobStatus.claimed, JobStatus.running})

# The one table of allowed transitions. ``queued`` is reachable again from claimed/running
# only as a re-queue (lease expired or a retry), which always bumps the attempt.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.claimed, JobStatus.cancelled, JobStatus.failed}),
    JobStatus.claimed: frozenset(
        {JobStatus.running, JobStatus.cancelled, JobStatus.failed, JobStatus.queued}
    ),
    JobStatus.running: frozenset(
        {
            JobStatus.succeeded,
            JobStatus.failed,
            JobStatus.timed_out,
            JobStatus.cancelled,
            JobStatus.queued,
        }
    ),
    **{s: frozenset() for s in TERMINAL_STATUSES},
}


class EventType(enum.StrEnum):
    """Every type of event on ``lb:events`` and a job's event stream; the dashboard reads
    this list from ``GET /api/v1/meta`` instead of repeating it."""

    created = "created"
    claimed = "claimed"
    started = "started"
    progress = "progress"
    log = "log"
    requeued = "requeued"
    cancel_requested = "cancel_requested"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"
    resync = "resync"  # from an API process to its own clients: re-read, you may have missed some


# The event a job's arrival in each status publishes (``queued`` again is a re-queue).
STATUS_EVENTS: dict[JobStatus, EventType] = {
    JobStatus.queued: EventType.requeued,
    JobStatus.claimed: EventType.claimed,
    JobStatus.running: EventType.started,
    JobStatus.succeeded: EventType.succeeded,
    JobStatus.failed: EventType.failed,
    JobStatus.cancelled: EventType.cancelled,
    JobStatus.timed_out: EventType.timed_out,
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def task_id_for(job_id: str, attempt: int) -> str:
    """The Celery task id of an attempt: the job id itself first (so Celery and Flower show
    it), suffixed for later attempts so a revoke of one attempt never hits the next."""
    return job_id if attempt == 1 else f"{job_id}-a{attempt}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(when: datetime) -> datetime:
    """``when`` in UTC; a time without a zone is taken to be UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ---------------------------------------------------------------- specs

_STRICT = ConfigDict(extra="forbid")


class Demands(BaseModel):
    model_config = _STRICT
    tags: list[str] = Field(default_factory=list, description="Runner tags the job needs.")


class Resources(BaseModel):
    model_config = _STRICT
    cpu: float | None = Field(default=None, gt=0, le=64, description="CPU cores (e.g. 0.5).")
    memory_mb: int | None = Field(default=None, ge=4, le=262144, description="Memory limit, MiB.")


class Step(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=100, description="Step name, shown in results.")
    command: list[str] = Field(min_length=1, description="argv list; no shell unless you ask.")


class _SpecBase(BaseModel):
    model_config = _STRICT
    name: str | None = Field(default=None, max_length=200, description="A human name.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    demands: Demands = Field(default_factory=Demands)
    timeout_s: float | None = Field(default=None, gt=0, description="Run time limit, seconds.")
    match_timeout_s: float | None = Field(
        default=None, gt=0, description="How long the job may wait for a matching runner."
    )
    max_attempts: int = Field(
        default=1, ge=1, le=20, description="Attempts the job's own failures may spend."
    )
    max_lost: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Times a lost runner (crash, OOM, scale-down) re-queues the job without "
        "spending max_attempts; 0 for a job that must never run twice. Default: the "
        "operator's LAUNCHBAY_MAX_LOST (3).",
    )
    retry_backoff_s: float = Field(default=2, ge=0, le=3600, description="First retry delay.")
    cleanup: Literal["always", "on_success", "never"] = Field(
        default="always", description="Remove containers/workspaces when the job ends."
    )
    grace_s: float = Field(default=10, ge=0, le=600, description="SIGTERM-to-SIGKILL grace.")
    artifacts: list[str] = Field(
        default_factory=list, description="Globs relative to the workspace, kept when it ends."
    )


class BuiltinSpec(_SpecBase):
    executor: Literal["builtin"] = "builtin"
    type: str = Field(description="Built-in job type (see GET /api/v1/job-types).")
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in JOB_TYPES:
            raise ParamError("type", f"unknown job type {v!r}; one of {sorted(JOB_TYPES)}")
        return v

    @field_validator("params")
    @classmethod
    def _check_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "type" not in info.data:
            return v  # the type's own error is reported
        return validate_params(info.data["type"], v)


class ProcessSpec(_SpecBase):
    executor: Literal["process"] = "process"
    command: list[str] | None = Field(default=None, min_length=1, description="argv list.")
    steps: list[Step] | None = Field(default=None, min_length=1)
    workdir: str | None = Field(default=None, description="Defaults to a private workspace.")

    @model_validator(mode="after")
    def _one_of(self) -> ProcessSpec:
        if (self.command is None) == (self.steps is None):
            raise ValueError("give exactly one of command or steps")
        return self


class DockerSpec(_SpecBase):
    executor: Literal["docker"] = "docker"
    image: str = Field(min_length=1, description="Image reference, e.g. busybox:latest.")
    steps: list[Step] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    network: Literal["bridge", "none"] = Field(default="bridge")


class KubernetesSpec(_SpecBase):
    executor: Literal["kubernetes"] = "kubernetes"
    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    namespace: str | None = Field(default=None, description="Defaults to the worker's namespace.")
    resources: Resources = Field(default_factory=Resources)
    template: dict[str, Any] | None = Field(
        default=None, description="A batch/v1 Job merged under the generated one."
    )


JobSpec = Annotated[
    BuiltinSpec | ProcessSpec | DockerSpec | KubernetesSpec, Field(discriminator="executor")
]

# Read off the union, so a new spec model above is all it takes to add an executor name
# everywhere (settings, queues, routes, the dashboard, the launcher registry's test).
SPEC_MODELS: dict[str, type[_SpecBase]] = {
    get_args(model.model_fields["executor"].annotation)[0]: model
    for model in get_args(get_args(JobSpec)[0])
}
EXECUTORS: tuple[str, ...] = tuple(SPEC_MODELS)

if TYPE_CHECKING:
    Executor = str
else:
    # One of EXECUTORS: pydantic and FastAPI validate it and list the names in OpenAPI.
    Executor = Literal[EXECUTORS]


# ---------------------------------------------------------------- job


class Progress(BaseModel):
    percent: float = 0
    message: str = ""


class StepResult(BaseModel):
    name: str
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Artifact(BaseModel):
    name: str
    size: int
    sha256: str
    content_type: str


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended. A job's last attempt ends with the job's own status."""

    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    retried = "retried"  # failed; another attempt follows after its backoff
    lost = "lost"  # the runner went away (lease expired): the platform's failure
    handed_back = "handed_back"  # the runner gave it back (draining, releasing)


class AttemptRecord(BaseModel):
    """One attempt of a job, as the store keeps it."""

    attempt: int = Field(description="The attempt's number, from 1.")
    runner_id: str | None = None
    claimed_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = Field(default=None, description="Null while it runs.")
    exit_code: int | None = None
    error: str | None = None


class Job(BaseModel):
    """A job as the store holds it and the API returns it."""

    id: str
    spec: JobSpec
    status: JobStatus = JobStatus.queued
    attempt: int = 1
    runner_id: str | None = None
    task_id: str | None = None
    created_at: datetime
    claimed_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    match_deadline: datetime | None = None
    not_before: datetime | None = Field(
        default=None, description="A retry waiting out its backoff: no runner takes it before."
    )
    exit_code: int | None = None
    error: str | None = None
    progress: Progress = Field(default_factory=Progress)
    result: Any = None
    steps: list[StepResult] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    resource_usage: dict[str, Any] | None = None
    cancel_requested: bool = False
    cancel_requested_at: datetime | None = None
    losses: int = Field(default=0, description="Attempts lost with their runner.")
    handbacks: int = Field(default=0, description="Attempts a runner gave back unstarted.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def executor(self) -> str:
        return self.spec.executor

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str | None:
        return self.spec.name

    @computed_field  # type: ignore[prop-decorator]
    @property
    def type(self) -> str | None:
        """The built-in job type, for builtin jobs."""
        return getattr(self.spec, "type", None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def own_attempts(self) -> int:
        """Attempts that count against ``max_attempts`` (this one included)."""
        return self.attempt - self.losses - self.handbacks

    def public(self) -> dict[str, Any]:
        """The JSON shape the API answers with."""
        return self.model_dump(mode="json")
