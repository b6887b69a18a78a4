"""The agent wire protocol: request and response bodies of the ``/launcher`` API.

The API validates them and the agent's HTTP channel sends them, so both import them from
here. ``Verdict`` is also how a Celery worker's attempt ends (``Lifecycle.end``): one shape
for both channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.job import (
    MAX_PROJECT_DIRS,
    TERMINAL_STATUSES,
    Executor,
    ExitCode,
    Job,
    JobStatus,
    ProjectDir,
    StepResult,
    Tag,
    check_capability_values,
    json_size,
)

RUNNER_ID = r"^runner-[0-9a-f]{12}$"
MAX_ATTEMPT = 10_000
# A result and resource usage, as JSON: room for any ``::result`` line (at most
# LAUNCHBAY_MAX_LOG_LINE_BYTES, itself at most 16 MiB) and any built-in job's result.
MAX_RESULT_BYTES = 16 << 20
MAX_USAGE_BYTES = 64 << 10

if TYPE_CHECKING:
    EndStatus = JobStatus
else:
    # How an attempt can end, as its runner reports it: a terminal status.
    EndStatus = Literal[tuple(sorted(s.value for s in TERMINAL_STATUSES))]
LauncherId = Annotated[str, Field(pattern=RUNNER_ID, description="From /launcher/register.")]
JobId = Annotated[str, Field(min_length=1, max_length=64)]

# Strict, and no NaN or infinity (JSON has neither).
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _json_at_most(field: str, value: Any, limit: int) -> Any:
    if value is not None:
        json_size(field, value, limit)
    return value


class _Reported(BaseModel):
    """What a runner reports about a job's outcome, bounded in size."""

    model_config = _STRICT

    @field_validator("result", check_fields=False)
    @classmethod
    def _result_size(cls, v: Any) -> Any:
        return _json_at_most("result", v, MAX_RESULT_BYTES)

    @field_validator("resource_usage", check_fields=False)
    @classmethod
    def _usage_size(cls, v: Any) -> Any:
        return _json_at_most("resource_usage", v, MAX_USAGE_BYTES)


class Verdict(_Reported):
    """How an attempt ended, as its runner saw it. The core decides what follows: a retry,
    a cancel that wins, or the end."""

    status: EndStatus
    exit_code: ExitCode | None = None
    error: str | None = Field(default=None, max_length=10000)
    result: Any = None
    steps: list[StepResult] = Field(default_factory=list, max_length=1000)
    resource_usage: dict[str, Any] | None = None
    handle: str | None = Field(
        default=None, max_length=512, description="What was launched: pid, container id, Job."
    )
    cleanup: str | None = Field(
        default=None, max_length=500, description="What cleanup did: removed, kept, failed: …"
    )
    may_retry: bool = Field(
        default=True,
        description="False when another attempt would fail the same way (a permanent "
        "launch error): a failure then ends the job at once.",
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def fields(self) -> dict[str, Any]:
        """The job fields this verdict sets besides status, exit code and error."""
        out: dict[str, Any] = {}
        if self.steps:
            out["steps"] = [s.model_dump(mode="json") for s in self.steps]
        if self.result is not None:
            out["result"] = self.result
        if self.resource_usage:
            out["resource_usage"] = self.resource_usage
        return out

    def record(self) -> dict[str, Any]:
        """The attempt row's run-record fields this verdict sets."""
        out: dict[str, Any] = {}
        if self.handle:
            out["handle"] = self.handle
        if self.cleanup:
            out["cleanup"] = self.cleanup
        if self.resource_usage:
            out["resource_usage"] = self.resource_usage
        return out


class RegisterIn(BaseModel):
    model_config = _STRICT
    executors: list[Executor] = Field(min_length=1, description="Executors this agent runs.")
    tags: list[Tag] = Field(default_factory=list, max_length=32, description="Runner tags.")
    capacity: int = Field(default=1, ge=1, le=256, description="Jobs it runs at once.")
    hostname: str = Field(default="", max_length=255)
    project_dirs: list[ProjectDir] = Field(
        default_factory=list,
        max_length=MAX_PROJECT_DIRS,
        description="Directories its jobs may demand (demands.project_dir), absolute paths.",
    )
    capabilities: dict[str, str] = Field(
        default_factory=dict, description="Free key=value capabilities (demands.values)."
    )
    pid: int | None = Field(default=None, ge=0, le=2**31 - 1)
    launcher_id: LauncherId | None = Field(
        default=None, description="Re-register under an id this agent already had."
    )

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: dict[str, str]) -> dict[str, str]:
        return check_capability_values("capabilities", v)


class RegisterOut(BaseModel):
    launcher_id: str
    poll_timeout_s: int
    heartbeat_interval_s: float
    lease_s: float
    agent_key: str | None = Field(
        default=None,
        description="This agent's own key (``lba.<id>.<secret>``), given once: send it as the "
        "bearer token on every later agent call. None when an agent re-registers with its key.",
    )


class Claim(BaseModel):
    """Who reports, about which attempt: every report names both."""

    model_config = _STRICT
    launcher_id: LauncherId
    attempt: int = Field(ge=1, le=MAX_ATTEMPT, description="The attempt the agent was given.")


class StartedIn(Claim):
    """``started``: who, which attempt, and what it launched (a run record's handle)."""

    handle: str | None = Field(default=None, max_length=512)


class ProgressIn(Claim):
    percent: float = Field(ge=0, le=100)
    message: str = Field(default="", max_length=2000)


class LogLineIn(BaseModel):
    model_config = _STRICT
    stream: str = Field(default="stdout", pattern=r"^(stdout|stderr|system)$")
    step: str | None = Field(default=None, max_length=100)
    line: str = Field(description="Cut at LAUNCHBAY_MAX_LOG_LINE_BYTES, with a marker.")


class LogsIn(Claim):
    lines: list[LogLineIn] = Field(min_length=1, max_length=5000)


class EndIn(Claim, Verdict):
    """The one way to end an attempt over HTTP: who, which attempt, and the verdict."""


class CompletedIn(Claim, _Reported):
    """Seed 000's ``completed``: exit code 0 succeeds, anything else fails."""

    exit_code: ExitCode = Field(default=0, description="Non-zero is recorded as a failure.")
    result: Any = None
    steps: list[StepResult] = Field(default_factory=list, max_length=1000)
    resource_usage: dict[str, Any] | None = None

    def verdict(self) -> Verdict:
        ok = self.exit_code == 0
        return Verdict(
            status=JobStatus.succeeded if ok else JobStatus.failed,
            exit_code=self.exit_code,
            error=None if ok else f"exited with code {self.exit_code}",
            result=self.result,
            steps=self.steps,
            resource_usage=self.resource_usage,
        )


class FailedIn(Claim, _Reported):
    """Seed 000's ``failed``: the job failed, or timed out when ``timed_out`` is set."""

    error: str = Field(min_length=1, max_length=10000)
    exit_code: ExitCode | None = None
    timed_out: bool = Field(default=False, description="The agent stopped it at timeout_s.")
    steps: list[StepResult] = Field(default_factory=list, max_length=1000)
    result: Any = None

    def verdict(self) -> Verdict:
        return Verdict(
            status=JobStatus.timed_out if self.timed_out else JobStatus.failed,
            exit_code=self.exit_code,
            error=self.error,
            result=self.result,
            steps=self.steps,
        )


class HeartbeatIn(BaseModel):
    model_config = _STRICT
    launcher_id: LauncherId
    jobs: list[JobId] = Field(default_factory=list, max_length=1024)


class HeartbeatOut(BaseModel):
    cancel: list[str] = Field(description="Jobs whose cancel was asked: stop them.")
    lost: list[str] = Field(description="Jobs no longer held by this launcher: drop them.")


class ReportOut(BaseModel):
    cancel: bool = Field(description="The job's cancel was asked: stop it.")
    seq: int | None = None


class PollOut(BaseModel):
    job: Job
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="The job's write-only secrets, for the agent that holds it only.",
    )
