"""The launcher contract: start a job, follow it to its end, stop it, collect, clean up.

The attempt (``workers/attempt.py``) owns the lifecycle — claim, lease, cancel,
timeout, retries of transient launch errors, the final compare-and-set. A launcher only
knows how to drive one kind of execution. Handles are opaque strings that the launcher can
parse back (a pid, a container id, ``namespace/job-name``), so another process can stop or
clean up what this one started.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from orchestrator.errors import RunnerLaunchError
from orchestrator.job import StepResult
from orchestrator.settings import Settings

__all__ = ["LaunchContext", "Launcher", "Outcome", "Reporter", "RunnerLaunchError", "registered"]


class Reporter(Protocol):
    """What a launcher reports while a job runs. Thread-safe."""

    def log(self, stream: str, line: str, step: str | None = None) -> None: ...
    def progress(self, percent: float, message: str = "") -> None: ...
    def result(self, value: Any) -> None: ...
    def step(self, result: StepResult) -> None: ...


@dataclass
class LaunchContext:
    """Everything a launcher needs to run one attempt of one job."""

    job_id: str
    attempt: int
    runner_id: str
    spec: Any  # one of the JobSpec models
    workspace: Path
    settings: Settings
    cancel: threading.Event = field(default_factory=threading.Event)

    def context_json(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "attempt": self.attempt,
                "runner_id": self.runner_id,
                "workspace": str(self.workspace),
                "spec": self.spec.model_dump(mode="json"),
            }
        )

    def env(self, workspace: str | None = None) -> dict[str, str]:
        """The job's environment: the spec's env and secrets plus the task context."""
        env = dict(self.spec.env)
        env.update(getattr(self.spec, "secrets", None) or {})
        env.update(
            {
                "LAUNCHBAY_CONTEXT": self.context_json(),
                "LAUNCHBAY_JOB_ID": self.job_id,
                "LAUNCHBAY_ATTEMPT": str(self.attempt),
                "LAUNCHBAY_WORKSPACE": workspace or str(self.workspace),
            }
        )
        return env


class MaskedReporter:
    """A reporter that shows each of the job's secret values as ``***`` in its log lines."""

    def __init__(self, inner: Reporter, secrets: dict[str, str]) -> None:
        self.inner = inner
        # Longest first, so a secret containing another is masked whole; empty ones never.
        self.values = sorted({v for v in secrets.values() if v}, key=len, reverse=True)

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        for value in self.values:
            if value in line:
                line = line.replace(value, "***")
        self.inner.log(stream, line, step)

    def progress(self, percent: float, message: str = "") -> None:
        self.inner.progress(percent, message)

    def result(self, value: Any) -> None:
        self.inner.result(value)

    def step(self, result: StepResult) -> None:
        self.inner.step(result)


def masked(reporter: Reporter, spec: Any) -> Reporter:
    secrets = getattr(spec, "secrets", None)
    return MaskedReporter(reporter, secrets) if secrets else reporter


@dataclass
class Outcome:
    """How a job's execution ended, as the launcher saw it."""

    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    resource_usage: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


# Launcher classes by executor name; each fills in its own entry when its module is imported.
_REGISTRY: dict[str, type[Launcher]] = {}


def registered() -> dict[str, type[Launcher]]:
    """The launchers imported so far, by executor name."""
    return dict(_REGISTRY)


class Launcher(ABC):
    """Base of every launcher. Subclasses set ``name`` (the executor they run, which
    registers them) and ``config_model``; a test double passes ``register=False``."""

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    # Who removes what a lost worker left: "beat" sweeps once for the whole installation
    # (containers, Jobs), "host" means every worker sweeps its own host (processes).
    orphan_sweep: ClassVar[Literal["beat", "host"] | None] = None
    # Whether its jobs run in the attempt's workspace directory (made before the start,
    # removed at the cleanup); a launcher whose jobs never touch files says False.
    uses_workspace: ClassVar[bool] = True

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not register or name is None:
            return
        known = _REGISTRY.get(name)
        if known is not None and _where(known) != _where(cls):
            raise TypeError(f"executor {name!r} has two launchers: {_where(known)}, {_where(cls)}")
        _REGISTRY[name] = cls

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def start(self, ctx: LaunchContext) -> str:
        """Launch the job; return its handle. Raise RunnerLaunchError on failure
        (``transient=True`` where a retry may succeed)."""

    @abstractmethod
    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        """Stream logs and progress to ``reporter`` and block until the job has exited."""

    @abstractmethod
    def stop(self, handle: str, grace_s: float) -> None:
        """Ask the job to stop, wait ``grace_s``, then force it. Idempotent."""

    def collect_artifacts(self, ctx: LaunchContext, handle: str) -> list[tuple[str, Path]]:
        """``(name, local path)`` for every file matching the spec's artifact globs."""
        return glob_workspace(ctx.workspace, ctx.spec.artifacts)

    def cleanup(self, ctx: LaunchContext, handle: str | None) -> None:  # noqa: B027
        """Remove what ``start`` created (containers, Jobs). Default: nothing."""

    def orphans(self, is_live: Callable[[str, int], bool]) -> list[str]:
        """Handles of leftovers whose (job id, attempt) is no longer live. Default: none."""
        return []

    def remove(self, handle: str) -> None:  # noqa: B027
        """Remove one leftover found by :meth:`orphans`."""


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def glob_workspace(workspace: Path, patterns: list[str]) -> list[tuple[str, Path]]:
    """Files under ``workspace`` matching ``patterns``; never anything outside it."""
    if not patterns:  # (most jobs: no look at the disk at all)
        return []
    root = workspace.resolve()
    found: dict[str, Path] = {}
    for pattern in patterns:
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            continue
        for p in sorted(root.glob(pattern)):
            rp = p.resolve()
            if rp.is_file() and rp.is_relative_to(root):
                found.setdefault(rp.relative_to(root).as_posix(), rp)
    return list(found.items())
