"""Request and response bodies of the launcher (agent) API, and the pure helpers on them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.job import Job, StepResult

RUNNER_ID = r"^runner-[0-9a-f]{12}$"
_TAG = r"^[A-Za-z0-9_.:-]{1,64}$"

Executor = Annotated[str, Field(pattern=r"^(builtin|process|docker|kubernetes)$")]
Tag = Annotated[str, Field(pattern=_TAG)]
LauncherId = Annotated[str, Field(pattern=RUNNER_ID, description="From /launcher/register.")]

_STRICT = ConfigDict(extra="forbid")


class RegisterIn(BaseModel):
    model_config = _STRICT
    executors: list[Executor] = Field(min_length=1, description="Executors this agent runs.")
    tags: list[Tag] = Field(default_factory=list, max_length=32, description="Runner tags.")
    capacity: int = Field(default=1, ge=1, le=256, description="Jobs it runs at once.")
    hostname: str = Field(default="", max_length=255)
    pid: int | None = Field(default=None, ge=0)
    launcher_id: LauncherId | None = Field(
        default=None, description="Re-register under an id this agent already had."
    )


class RegisterOut(BaseModel):
    launcher_id: str
    poll_timeout_s: int
    heartbeat_interval_s: float
    lease_s: float


class Claim(BaseModel):
    model_config = _STRICT
    launcher_id: LauncherId
    attempt: int = Field(ge=1, description="The attempt the agent was given.")


class ProgressIn(Claim):
    percent: float = Field(ge=0, le=100)
    message: str = Field(default="", max_length=2000)


class LogLineIn(BaseModel):
    model_config = _STRICT
    stream: str = Field(default="stdout", pattern=r"^(stdout|stderr|system)$")
    step: str | None = Field(default=None, max_length=100)
    line: str = Field(max_length=65536)


class LogsIn(Claim):
    lines: list[LogLineIn] = Field(min_length=1, max_length=5000)


class CompletedIn(Claim):
    exit_code: int = Field(default=0, description="Non-zero is recorded as a failure.")
    result: Any = None
    steps: list[StepResult] = Field(default_factory=list)
    resource_usage: dict[str, Any] | None = None


class FailedIn(Claim):
    error: str = Field(min_length=1, max_length=10000)
    exit_code: int | None = None
    timed_out: bool = Field(default=False, description="The agent stopped it at timeout_s.")
    steps: list[StepResult] = Field(default_factory=list)
    result: Any = None


class HeartbeatIn(BaseModel):
    model_config = _STRICT
    launcher_id: LauncherId
    jobs: list[str] = Field(default_factory=list, max_length=1024)


class HeartbeatOut(BaseModel):
    cancel: list[str] = Field(description="Jobs whose cancel was asked: stop them.")
    lost: list[str] = Field(description="Jobs no longer held by this launcher: drop them.")


class ReportOut(BaseModel):
    cancel: bool = Field(description="The job's cancel was asked: stop it.")
    seq: int | None = None


class PollOut(BaseModel):
    job: Job


def job_fields(
    steps: list[StepResult], result: Any, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The job fields a final report sets: steps, result and resource usage, when given."""
    fields: dict[str, Any] = {}
    if steps:
        fields["steps"] = [s.model_dump(mode="json") for s in steps]
    if result is not None:
        fields["result"] = result
    if usage:
        fields["resource_usage"] = usage
    return fields
