"""Runs a built-in Python job type in a thread of the worker process."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel

from orchestrator.events import clip_line
from workers.builtin import JOB_FUNCTIONS, BuiltinContext, JobCancelled
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter


class BuiltinConfig(BaseModel):
    """Built-in jobs need no configuration."""


class BuiltinLauncher(Launcher):
    name = "builtin"
    config_model = BuiltinConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cancel: dict[str, threading.Event] = {}

    def start(self, ctx: LaunchContext) -> str:
        handle = f"builtin:{ctx.job_id}:{ctx.attempt}"
        self._cancel[handle] = ctx.cancel
        return handle

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        fn = JOB_FUNCTIONS[ctx.spec.type]
        bctx = BuiltinContext(
            cancel=ctx.cancel,
            progress=reporter.progress,
            log=lambda line: reporter.log(
                "stdout", clip_line(line, self.settings.max_log_line_bytes)
            ),
        )
        try:
            result = fn(ctx.spec.params, bctx)
        except JobCancelled:
            return Outcome(exit_code=None, error="cancelled")
        except Exception as exc:  # a job's own bug fails the job, not the worker
            return Outcome(exit_code=1, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._cancel.pop(handle, None)
        return Outcome(exit_code=0, result=result)

    def stop(self, handle: str, grace_s: float) -> None:
        ev = self._cancel.get(handle)
        if ev is not None:
            ev.set()
