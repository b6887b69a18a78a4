"""The job model and its state machine. Pure: no I/O happens here."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_serializer,
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


def _utc_in_range(when: datetime) -> datetime:
    try:
        return as_utc(when)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise ValueError("out of range: give a time between years 1 and 9999 in UTC") from None


UtcTime = Annotated[datetime, AfterValidator(_utc_in_range)]
"""A time given by a client, in UTC; one that UTC cannot represent is refused (422)."""


# ---------------------------------------------------------------- specs

# Bounds on what a spec holds, so that one request (and the rows, stream entries, processes
# and containers it makes) stays small; the API's body limit bounds the whole request.
MAX_DURATION_S = 366 * 86400  # timeouts and waits: a year, so every deadline is a date
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 64, 128, 1024
MAX_ENV, MAX_ENV_KEY, MAX_ENV_VALUE = 256, 1024, 128 * 1024  # (Linux: 128 KiB per string)
MAX_TAGS = 32
MAX_ARGS, MAX_ARG = 4096, 128 * 1024
MAX_STEPS = 100
MAX_ARTIFACT_GLOBS, MAX_GLOB = 100, 1024
MAX_PARAMS_BYTES = 64 * 1024  # a built-in job's params, as JSON
MAX_TEMPLATE_BYTES = 256 * 1024  # a Kubernetes Job template, as JSON
TAG_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
EXIT_CODE_MIN, EXIT_CODE_MAX = -(2**31), 2**31 - 1

# Strict: unknown fields are refused, and so are NaN and infinities (JSON has neither;
# Python's parser takes them, and ``timeout_s: Infinity`` must not mean "no timeout").
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Arg = Annotated[str, Field(max_length=MAX_ARG)]
Argv = Annotated[list[Arg], Field(min_length=1, max_length=MAX_ARGS)]
Seconds = Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
ExitCode = Annotated[int, Field(ge=EXIT_CODE_MIN, le=EXIT_CODE_MAX)]


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def _bounded_map(
    field: str, value: dict[str, str], *, items: int, key: int, val: int, env: bool = False
) -> dict[str, str]:
    """``value`` if it has at most ``items`` entries with keys of 1 to ``key`` characters
    and values of at most ``val``; else a ParamError naming ``field`` (and the key)."""
    if len(value) > items:
        raise ParamError(field, f"at most {items} entries, got {len(value)}")
    for k, v in value.items():
        if not 0 < len(k) <= key:
            raise ParamError(field, f"key {_short(k)} must be 1 to {key} characters long")
        if env and ("=" in k or "\x00" in k):
            raise ParamError(field, f"key {_short(k)} may not hold '=' or NUL")
        if len(v) > val:
            raise ParamError(f"{field}.{k}", f"at most {val} characters, got {len(v)}")
    return value


def json_size(field: str, value: Any, limit: int) -> None:
    """ParamError naming ``field`` unless ``value`` is JSON (no NaN or infinity) of at most
    ``limit`` bytes."""
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=str, allow_nan=False).encode())
    except ValueError:
        raise ParamError(field, "NaN and infinities are not JSON") from None
    except RecursionError:
        raise ParamError(field, "nested too deeply") from None
    if size > limit:
        raise ParamError(field, f"at most {limit} bytes as JSON, got {size}")


def _check_glob(pattern: str) -> str:
    """An artifact glob the workspace can be searched with (as ``Path.glob`` takes it)."""
    parts = PurePosixPath(pattern).parts
    if not pattern.strip() or not parts:
        raise ValueError(f"an artifact glob names files, got {pattern!r}")
    if pattern.startswith("/") or ".." in parts or "\x00" in pattern or "\\" in pattern:
        raise ValueError(f"an artifact glob is relative to the workspace, got {pattern!r}")
    if any("**" in p and p != "**" for p in parts):
        raise ValueError(f"'**' must be a whole path component, got {pattern!r}")
    return pattern


Glob = Annotated[str, Field(min_length=1, max_length=MAX_GLOB), AfterValidator(_check_glob)]

# Capabilities a runner declares and a job demands (orchestrator/capabilities.py matches them).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
SESSION_ID_PATTERN = r"^ses_[0-9a-f]{12}$"
MAX_CAPABILITY_VALUES, MAX_CAPABILITY_VALUE = 32, 256
MAX_PROJECT_DIRS = 32


def _check_project_dir(path: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or "\x00" in path:
        raise ValueError(f"a project directory is an absolute path without '..', got {path!r}")
    return str(p)


def check_capability_values(field: str, value: dict[str, str]) -> dict[str, str]:
    """Free key=value capabilities: keys as tags, bounded values; else ParamError."""
    import re

    if len(value) > MAX_CAPABILITY_VALUES:
        raise ParamError(field, f"at most {MAX_CAPABILITY_VALUES} entries, got {len(value)}")
    for k, v in value.items():
        if not re.match(TAG_PATTERN, k):
            raise ParamError(field, f"key {_short(k)} must match {TAG_PATTERN}")
        if len(v) > MAX_CAPABILITY_VALUE:
            raise ParamError(f"{field}.{k}", f"at most {MAX_CAPABILITY_VALUE} characters")
    return value


Hostname = Annotated[str, Field(pattern=HOSTNAME_PATTERN, max_length=253)]
ProjectDir = Annotated[
    str, Field(min_length=1, max_length=4096), AfterValidator(_check_project_dir)
]
MAX_DEPENDS_ON = 100
ConcurrencyKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/@-]{1,200}$")]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Demands(BaseModel):
    """What a runner must declare to take the job (matching rules: README, Capabilities)."""

    model_config = _STRICT
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Runner tags the job needs."
    )
    hostname: Hostname | None = Field(
        default=None, description="Run only on the runner whose host has this name."
    )
    project_dir: ProjectDir | None = Field(
        default=None,
        description="An absolute path that must lie in one of the runner's project directories.",
    )
    values: dict[str, str] = Field(
        default_factory=dict,
        description=f"Free key=value capabilities the runner must declare with the same "
        f"values (at most {MAX_CAPABILITY_VALUES}; keys as tags, values of at most "
        f"{MAX_CAPABILITY_VALUE} characters).",
    )

    @field_validator("values")
    @classmethod
    def _values(cls, v: dict[str, str]) -> dict[str, str]:
        return check_capability_values("demands.values", v)

    @property
    def beyond_tags(self) -> bool:
        """Whether anything besides tags is demanded (Celery routing covers only tags)."""
        return bool(self.hostname or self.project_dir or self.values)


class SessionRef(BaseModel):
    """Which session a job runs in. Give nothing but a ``name`` to start a new session,
    ``resume`` to continue one (its defaults fill what the job leaves out), or
    ``parent_session_id`` to fork one (a new session whose workspace starts as a copy of
    the parent's). The server fills in ``id``."""

    model_config = _STRICT
    name: str | None = Field(default=None, max_length=200, description="A new session's name.")
    resume: str | None = Field(
        default=None,
        max_length=200,
        description="Continue this session: its id (ses_…) or its name (the newest of that name).",
    )
    parent_session_id: str | None = Field(
        default=None, pattern=SESSION_ID_PATTERN, description="Fork this session."
    )
    id: str | None = Field(
        default=None,
        pattern=SESSION_ID_PATTERN,
        description="The session the job runs in (set by the server; giving it resumes it).",
    )

    @model_validator(mode="after")
    def _one_way(self) -> SessionRef:
        if self.resume is not None and self.parent_session_id is not None:
            raise ParamError("session", "give resume or parent_session_id, not both")
        return self

    @property
    def resuming(self) -> bool:
        return self.resume is not None or (self.id is not None and self.parent_session_id is None)


class Resources(BaseModel):
    model_config = _STRICT
    cpu: float | None = Field(default=None, gt=0, le=64, description="CPU cores (e.g. 0.5).")
    memory_mb: int | None = Field(default=None, ge=4, le=262144, description="Memory limit, MiB.")


class Step(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=100, description="Step name, shown in results.")
    command: Argv = Field(description="argv list; no shell unless you ask.")


class _SpecBase(BaseModel):
    model_config = _STRICT
    name: str | None = Field(default=None, max_length=200, description="A human name.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=f"Free-form labels: at most {MAX_LABELS}, keys of 1 to {MAX_LABEL_KEY} "
        f"characters, values of at most {MAX_LABEL_VALUE}.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=f"Extra environment: at most {MAX_ENV} variables, names of 1 to "
        f"{MAX_ENV_KEY} characters without '=', values of at most {MAX_ENV_VALUE}.",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Write-only environment (same bounds as env): delivered to the job; "
        "every answer, event and export shows each name with '***', and so do its logs.",
    )
    demands: Demands = Field(default_factory=Demands)
    timeout_s: Seconds | None = Field(
        default=None, description=f"Run time limit, seconds (at most {MAX_DURATION_S})."
    )
    match_timeout_s: Seconds | None = Field(
        default=None,
        description=f"How long the job may wait for a matching runner (at most {MAX_DURATION_S}).",
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
    artifacts: list[Glob] = Field(
        default_factory=list,
        max_length=MAX_ARTIFACT_GLOBS,
        description="Globs relative to the workspace, kept when it ends.",
    )
    session: SessionRef | None = Field(
        default=None,
        description="Start, resume or fork a session: runs that share a workspace, one at a time.",
    )
    # Flow control (issue 14; orchestrator/flow.py).
    priority: int = Field(
        default=0, ge=0, le=9, description="0–9: a higher one starts first on the same queue."
    )
    run_at: UtcTime | None = Field(default=None, description="Start no earlier than this time.")
    concurrency_key: ConcurrencyKey | None = Field(
        default=None,
        description="Jobs sharing a key run at most /api/v1/limits/{key} at a time; "
        "'label:NAME' takes the key from the job's label NAME.",
    )
    depends_on: list[JobId] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS_ON,
        description="Job ids that must all succeed first; if one fails or is cancelled, "
        "this job ends without running.",
    )

    @field_validator("depends_on")
    @classmethod
    def _unique_deps(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return _bounded_map("labels", v, items=MAX_LABELS, key=MAX_LABEL_KEY, val=MAX_LABEL_VALUE)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _bounded_map("env", v, items=MAX_ENV, key=MAX_ENV_KEY, val=MAX_ENV_VALUE, env=True)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        return _bounded_map(
            "secrets", v, items=MAX_ENV, key=MAX_ENV_KEY, val=MAX_ENV_VALUE, env=True
        )

    @field_serializer("secrets")
    def _masked(self, v: dict[str, str]) -> dict[str, str]:
        # Whatever serializes a spec — an answer, an event, the stored spec itself — never
        # holds a value; the runner gets them from the store's own column.
        return {k: "***" for k in v}


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
        json_size("params", v, MAX_PARAMS_BYTES)
        if "type" not in info.data:
            return v  # the type's own error is reported
        return validate_params(info.data["type"], v)


class ProcessSpec(_SpecBase):
    executor: Literal["process"] = "process"
    command: Argv | None = Field(default=None, description="argv list.")
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=MAX_STEPS)
    workdir: str | None = Field(
        default=None, max_length=4096, description="Defaults to a private workspace."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ProcessSpec:
        if (self.command is None) == (self.steps is None):
            raise ValueError("give exactly one of command or steps")
        return self


def _image_unless_resuming(spec: DockerSpec | KubernetesSpec) -> None:
    if not spec.image and not (spec.session and spec.session.resuming):
        raise ParamError("image", "an image is required (a resumed session may supply it)")


class DockerSpec(_SpecBase):
    executor: Literal["docker"] = "docker"
    image: str = Field(
        default="",
        max_length=1024,
        description="Image reference, e.g. busybox:latest (a resumed session's if left out).",
    )
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    resources: Resources = Field(default_factory=Resources)
    network: Literal["bridge", "none"] = Field(default="bridge")

    @model_validator(mode="after")
    def _image(self) -> DockerSpec:
        _image_unless_resuming(self)
        return self


class KubernetesSpec(_SpecBase):
    executor: Literal["kubernetes"] = "kubernetes"
    image: str = Field(
        default="", max_length=1024, description="Image (a resumed session's if left out)."
    )
    command: Argv
    namespace: str | None = Field(
        default=None, max_length=63, description="Defaults to the worker's namespace."
    )
    resources: Resources = Field(default_factory=Resources)
    template: dict[str, Any] | None = Field(
        default=None,
        description=f"A batch/v1 Job merged under the generated one (at most "
        f"{MAX_TEMPLATE_BYTES} bytes as JSON).",
    )

    @field_validator("template")
    @classmethod
    def _template_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            json_size("template", v, MAX_TEMPLATE_BYTES)
            check_job_template(v)
        return v

    @model_validator(mode="after")
    def _image(self) -> KubernetesSpec:
        _image_unless_resuming(self)
        return self


_HOST_ACCESS = ("hostNetwork", "hostPID", "hostIPC")


def check_job_template(template: dict[str, Any]) -> None:
    """ParamError (field ``template``) for a template no launch could accept: another kind
    than a batch/v1 Job, host namespaces, hostPath volumes, privileged containers or added
    capabilities. The launcher checks the merged Job again (workers/launchers/_k8s_manifest)."""

    def refuse(what: str) -> None:
        raise ParamError("template", f"a Job template {what}")

    if template.get("kind", "Job") != "Job" or template.get("apiVersion", "batch/v1") != "batch/v1":
        refuse(f"must be a batch/v1 Job, got {template.get('apiVersion')}/{template.get('kind')}")
    spec = template.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {} if isinstance(spec, dict) else {}
    if not isinstance(pod, dict):
        refuse("needs spec.template.spec to be an object")
    for f in _HOST_ACCESS:
        if pod.get(f):
            refuse(f"may not set spec.template.spec.{f}")
    for vol in pod.get("volumes") or []:
        if isinstance(vol, dict) and "hostPath" in vol:
            refuse(f"may not mount hostPath volume {vol.get('name')!r}")
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in pod.get(key) or []:
            sc = (c.get("securityContext") or {}) if isinstance(c, dict) else {}
            if sc.get("privileged"):
                refuse(f"may not run container {c.get('name')!r} privileged")
            if (sc.get("capabilities") or {}).get("add"):
                refuse(f"may not add capabilities to container {c.get('name')!r}")
            if sc.get("allowPrivilegeEscalation"):
                refuse(f"may not allow privilege escalation in container {c.get('name')!r}")


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
    model_config = ConfigDict(allow_inf_nan=False)
    name: str = Field(max_length=1000)
    exit_code: ExitCode | None = None
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
    handle: str | None = Field(
        default=None,
        description="What the launcher started: a pid, a container id, namespace/job-name.",
    )
    cleanup: str | None = Field(
        default=None,
        description="What became of it after the end: removed, kept (policy), failed: …; "
        "null while it runs or when the runner never said.",
    )
    resource_usage: dict[str, Any] | None = None


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
    warnings: list[str] = Field(
        default_factory=list,
        description="Said at submit, not stored: e.g. no live runner meets the job's demands.",
    )
    hold: Literal["deps", "limit"] | None = Field(
        default=None,
        description="Why a due queued job is not claimable: its dependencies ('deps') or a "
        "full concurrency key ('limit').",
    )
    rerun_of: str | None = Field(default=None, description="The job this one re-runs.")
    has_dependents: bool = Field(default=False, exclude=True)
    waiting: dict[str, Any] | None = Field(
        default=None,
        description="Why a queued job waits (reason: backoff, run_at, dependency, "
        "concurrency_limit, no_runner), filled in by the API.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def executor(self) -> str:
        return self.spec.executor

    @computed_field  # type: ignore[prop-decorator]
    @property
    def session_id(self) -> str | None:
        """The session the job runs in (``ses_…``), if any."""
        return self.spec.session.id if self.spec.session else None

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
