"""A launcher whose every move a test scripts: no processes, no sleeps.

Each successful ``start`` takes the next :class:`Run` (the last one repeats); launch
errors given up front are raised first, one per ``start``. A run prints its lines
(``::progress`` and ``::result`` directives included), reports its steps, writes its
artifacts into the workspace and exits — or, with ``until_stopped``, blocks in ``follow``
until ``stop`` is called. Every call is recorded, and tests wait on them with bounded,
event-driven waits (:meth:`ScriptedLauncher.wait_following`,
:meth:`ScriptedLauncher.wait_stopped`)::

    launcher = ScriptedLauncher(Run(lines=["hello", "::progress 50 half"]))
    Attempt(channel, launcher.launchers(), settings, job).run()
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from orchestrator.job import StepResult
from orchestrator.settings import Settings
from workers.launchers import LaunchContext, Launcher, LauncherSet, Outcome, Reporter

__all__ = ["Run", "ScriptedLauncher"]


@dataclass(frozen=True)
class Run:
    """What one launched run does."""

    lines: Sequence[str | tuple[str, str]] = ()  # stdout lines, or (stream, line)
    steps: Sequence[StepResult] = ()
    exit_code: int | None = 0
    error: str | None = None  # the launcher's own error about the run (it could not follow)
    result: Any = None  # what the launcher returns as the result (a ::result line wins)
    artifacts: Mapping[str, bytes] = field(default_factory=dict)  # workspace files it writes
    until_stopped: bool = False  # block in follow until stop() is called
    stopped_exit_code: int | None = -15  # its exit code once stopped (SIGTERM)
    # How long it takes to exit once stopped; None: only when release() is called.
    exit_after_stop_s: float | None = 0.0


class _Config(BaseModel):
    """The scripted launcher takes no configuration."""


@dataclass
class _Live:
    run: Run
    stop: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class ScriptedLauncher(Launcher, register=False):
    """A :class:`~workers.launchers.base.Launcher` that plays scripted runs. Thread-safe.

    ``launch_errors`` are raised by the first ``start`` calls, one each (a
    ``RunnerLaunchError`` as given; anything else is what a launcher's bug looks like).
    ``max_run_s`` bounds every wait inside it, so a test that forgets to stop a run
    fails instead of hanging.
    """

    name = "scripted"
    config_model = _Config

    def __init__(
        self,
        *runs: Run,
        launch_errors: Iterable[BaseException] = (),
        settings: Settings | None = None,
        max_run_s: float = 10.0,
    ) -> None:
        super().__init__(settings or Settings())
        self.runs: list[Run] = list(runs) or [Run()]
        self.max_run_s = max_run_s
        self.starts: list[tuple[str, int]] = []  # (job id, attempt) of every start call
        self.handles: list[str] = []  # of the runs it launched
        self.follows: list[str] = []  # handles, as follow began
        self.stops: list[tuple[str, float]] = []  # (handle, grace_s) of every stop call
        self.cleanups: list[str | None] = []
        self._errors = list(launch_errors)
        self._live: dict[str, _Live] = {}
        self._cond = threading.Condition()

    # ------------------------------------------------------------ the launcher

    def start(self, ctx: LaunchContext) -> str:
        with self._cond:
            self.starts.append((ctx.job_id, ctx.attempt))
            if self._errors:
                raise self._errors.pop(0)
            run = self.runs[min(len(self.handles), len(self.runs) - 1)]
            handle = f"scripted-{ctx.job_id}-a{ctx.attempt}-{len(self.handles) + 1}"
            self.handles.append(handle)
            self._live[handle] = _Live(run)
            self._cond.notify_all()
            return handle

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        with self._cond:
            live = self._live[handle]
            self.follows.append(handle)
            self._cond.notify_all()
        run = live.run
        for item in run.lines:
            stream, line = ("stdout", item) if isinstance(item, str) else item
            reporter.log(stream, line)
        for step in run.steps:
            reporter.step(step)
        if run.until_stopped and not live.stop.wait(self.max_run_s):
            return Outcome(error=f"scripted run {handle} was never stopped")
        if live.stop.is_set():
            wait = self.max_run_s if run.exit_after_stop_s is None else run.exit_after_stop_s
            live.release.wait(wait)
        for name, data in run.artifacts.items():
            path = ctx.workspace / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if live.stop.is_set():
            return Outcome(exit_code=run.stopped_exit_code, result=run.result)
        return Outcome(exit_code=run.exit_code, error=run.error, result=run.result)

    def stop(self, handle: str, grace_s: float) -> None:
        with self._cond:
            self.stops.append((handle, grace_s))
            live = self._live.get(handle)
            self._cond.notify_all()
        if live is not None:
            live.stop.set()

    def cleanup(self, ctx: LaunchContext, handle: str | None) -> None:
        with self._cond:
            self.cleanups.append(handle)
            self._cond.notify_all()

    # ------------------------------------------------------------ for tests

    def release(self) -> None:
        """Let every stopped run that waits for it (``exit_after_stop_s=None``) exit."""
        with self._cond:
            live = list(self._live.values())
        for one in live:
            one.release.set()

    def launchers(self) -> LauncherSet:
        """A launcher set that hands this launcher out for every executor."""
        return _Only(self)

    def wait(self, check: Callable[[ScriptedLauncher], bool], timeout: float = 2.0) -> bool:
        """Block until ``check(self)`` holds after a recorded call (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: check(self), timeout)

    def wait_following(self, count: int = 1, timeout: float = 2.0) -> bool:
        """Block until ``count`` runs are being (or have been) followed."""
        return self.wait(lambda s: len(s.follows) >= count, timeout)

    def wait_stopped(self, count: int = 1, timeout: float = 2.0) -> bool:
        """Block until ``stop`` was called ``count`` times."""
        return self.wait(lambda s: len(s.stops) >= count, timeout)


class _Only(LauncherSet):
    def __init__(self, launcher: Launcher) -> None:
        super().__init__(launcher.settings)
        self.launcher = launcher

    def get(self, executor: str) -> Launcher:
        return self.launcher
