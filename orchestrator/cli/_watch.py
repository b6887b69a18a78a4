"""Following a job from the terminal: live progress bar, log tail, Ctrl-C cancels.

Polling only, on purpose: GET /jobs/{id} and GET /jobs/{id}/logs?since=N every
``POLL_S``. ``since`` resumes exactly (log seq numbers), so nothing is lost or repeated,
it works through any proxy, and a server without the logs route still gets a status watch.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from orchestrator.cli._output import EXIT_CANCELLED, EXIT_OK, EXIT_TIMED_OUT, say
from orchestrator.client import (
    Conflict,
    Job,
    LaunchbayClient,
    LogLine,
    NotFound,
    ServerUnreachable,
    is_ended,
)

POLL_S = 0.3
# How long a watch rides out an unreachable server (restart, network blip) before giving up.
UNREACHABLE_GRACE_S = 30.0
# After Ctrl-C: the job's own grace plus this margin, then stop waiting.
CANCEL_MARGIN_S = 30.0


def exit_code_for(job: Job) -> int:
    """succeeded 0; failed -> the command's exit code, or 1; timed_out 124; cancelled 130."""
    status = job.status.value
    if status == "succeeded":
        return EXIT_OK
    if status == "timed_out":
        return EXIT_TIMED_OUT
    if status == "cancelled":
        return EXIT_CANCELLED
    code = job.exit_code
    if code is None or code == 0:
        return 1
    # A shell reports 128+N for signals; keep exit codes in 1..255.
    return code if 0 < code < 256 else 1


def outcome_line(job: Job) -> str:
    status = job.status.value
    took = f" in {job.duration_s:.1f}s" if job.duration_s is not None else ""
    if status == "failed":
        why = job.error or (f"exit code {job.exit_code}" if job.exit_code is not None else "")
        return f"job {job.id} failed{took}" + (f": {why}" if why else "")
    if status == "timed_out":
        limit = job.spec.timeout_s
        return f"job {job.id} timed out" + (f" after {limit:g}s" if limit else "")
    return f"job {job.id} {status}{took}"


@dataclass
class WatchResult:
    job: Job
    interrupted: bool = False  # Ctrl-C was pressed (and a cancel requested when allowed)
    gave_up: bool = False  # stopped waiting before the job ended


def has_several_steps(job: Job) -> bool:
    """Log lines name their step only when there is more than one to tell apart."""
    return len(getattr(job.spec, "steps", None) or []) > 1


def write_log_line(line: LogLine, out: TextIO, err: TextIO, *, show_step: bool) -> None:
    text = f"[{line.step}] {line.line}" if show_step and line.step else line.line
    (err if line.stream == "stderr" else out).write(text + "\n")


@contextlib.contextmanager
def interrupt_held() -> Iterator[list[int]]:
    """Hold a Ctrl-C that lands while a job is being submitted.

    The job may exist by the time the answer comes, so it must be cancelled then rather
    than left running unseen: the caller starts its :class:`Watcher` with ``cancel_first``
    when the list it gets is not empty. A second Ctrl-C gives up at once.
    """
    pressed: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        say("Ctrl-C: the job will be cancelled once it is submitted (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


class Watcher:
    """Follow one job until it ends, printing logs and (on a terminal) a progress bar."""

    def __init__(
        self,
        client: LaunchbayClient,
        job_id: str,
        *,
        logs: bool = True,
        bar: bool = True,
        cancel_on_interrupt: bool = True,
        on_line: Callable[[LogLine], None] | None = None,
        log_out: TextIO | None = None,
        since: int = 0,
        status_lines: bool = True,
        cancel_first: bool = False,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.logs = logs
        self.cancel_on_interrupt = cancel_on_interrupt
        self.cancel_first = cancel_first  # a Ctrl-C came while the job was being submitted
        self.on_line = on_line
        self.log_out = log_out
        self.since = since
        self.status_lines = status_lines
        self._console = Console(stderr=True, highlight=False)
        self.bar = bar and self._console.is_terminal
        self._logs_missing = False
        self._last_status: str | None = None
        self._show_step = False

    # ------------------------------------------------------------ main loop

    def run(self) -> WatchResult:
        progress: Progress | None = None
        if self.bar:
            progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[status]}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=self._console,
                transient=True,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            progress.start()
        task = progress.add_task("", total=100, status="...") if progress else None
        try:
            return self._loop(progress, task)
        finally:
            if progress is not None:
                progress.stop()

    def _loop(self, progress: Progress | None, task: TaskID | None) -> WatchResult:
        interrupted = False
        cancel_deadline: float | None = None
        unreachable_since: float | None = None
        job: Job | None = None
        while True:
            try:
                if self.cancel_first and not interrupted:
                    raise KeyboardInterrupt
                try:
                    job = self.client.job(self.job_id)
                    self._show_step = has_several_steps(job)
                    self._drain_logs(until_empty=is_ended(job))
                    unreachable_since = None
                except ServerUnreachable:
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if job is None or now - unreachable_since > UNREACHABLE_GRACE_S:
                        raise
                    self._sleep()
                    continue
                self._show(job, progress, task)
                if is_ended(job):
                    return WatchResult(job, interrupted=interrupted)
                if cancel_deadline is not None and time.monotonic() > cancel_deadline:
                    say(f"job {self.job_id} is still {job.status.value}; stopped waiting")
                    return WatchResult(job, interrupted=True, gave_up=True)
                self._sleep()
            except KeyboardInterrupt:
                if interrupted or not self.cancel_on_interrupt:
                    if job is None:
                        job = self.client.job(self.job_id)
                    return WatchResult(job, interrupted=True, gave_up=not is_ended(job))
                # Also before the first poll answered: the id is enough to cancel.
                interrupted = True
                job = self._request_cancel()
                grace = float(getattr(job.spec, "grace_s", 10) or 0)
                cancel_deadline = time.monotonic() + grace + CANCEL_MARGIN_S

    def _sleep(self) -> None:
        time.sleep(POLL_S)

    def _request_cancel(self) -> Job:
        say(f"cancelling job {self.job_id}... (Ctrl-C again to stop waiting)")
        try:
            return self.client.cancel(self.job_id)
        except Conflict:
            return self.client.job(self.job_id)  # it ended meanwhile

    # ------------------------------------------------------------ logs and status

    def _drain_logs(self, *, until_empty: bool) -> None:
        if not self.logs or self._logs_missing:
            return
        while True:
            try:
                page = self.client.logs(self.job_id, since=self.since)
            except NotFound:
                # job() just answered, so it is the route that is missing (older server).
                self._logs_missing = True
                say("(this server has no log endpoint; following the status only)")
                return
            for line in page.items:
                self._emit(line)
            if page.items:
                self.since = max(self.since, page.next_since, page.items[-1].seq)
            if not until_empty or not page.items:
                return

    def _emit(self, line: LogLine) -> None:
        if self.on_line is not None:
            self.on_line(line)
            return
        out = self.log_out or sys.stdout
        err = self.log_out or sys.stderr
        write_log_line(line, out, err, show_step=self._show_step)
        out.flush()

    def _show(self, job: Job, progress: Progress | None, task: TaskID | None) -> None:
        status = job.status.value
        if progress is not None and task is not None:
            progress.update(
                task,
                completed=job.progress.percent,
                status=status,
                description=job.progress.message,
            )
        elif self.status_lines and status != self._last_status and not is_ended(job):
            say(f"job {job.id} {status}")
        self._last_status = status
