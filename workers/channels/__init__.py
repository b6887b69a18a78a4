"""The channel: all the I/O of one attempt, as the attempt module (``workers/attempt.py``)
sees it. Two implementations: ``direct`` (store and Redis, inside a Celery worker) and
``http`` (a remote agent, through the ``/launcher`` API).

A channel reports; the core (``orchestrator/lifecycle.py``) decides. No rule about
attempts lives in a channel.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from orchestrator.job import Job
from orchestrator.lifecycle import Renewal
from orchestrator.protocol import Verdict

LogBatch = list[tuple[str, str | None, str]]  # (stream, step, line)


class Lost(Exception):
    """The runner no longer holds the attempt (re-queued or ended by someone else)."""


class Unreachable(Exception):
    """The report could not be delivered now; the caller keeps it and tries again later."""


class Channel(Protocol):
    runner_id: str
    flush_s: float  # how often the attempt sends buffered logs and progress
    renew_s: float  # how often it renews the lease
    cancel_poll_s: float  # how often it asks whether a cancel was asked

    def started(self, job: Job, handle: str | None = None) -> Job:
        """claimed → running; ``handle`` is what was launched (run record). Raises
        :class:`Lost`."""

    def together(self) -> AbstractContextManager[None]:
        """Reports made inside (on this thread) may go out as one delivery, at the latest
        when it ends: a progress report and the log lines after it, say."""

    def logs(self, job: Job, lines: LogBatch) -> None:
        """Append log lines. Raises :class:`Unreachable` (keep them) or :class:`Lost`."""

    def progress(self, job: Job, percent: float, message: str, *, last: bool = False) -> None:
        """Report progress (``last``: with the attempt's last output, its end follows at
        once). Raises :class:`Unreachable` or :class:`Lost`."""

    def renew(self, job: Job) -> Renewal:
        """Extend the lease: still held? cancel asked?"""

    def cancel_requested(self, job: Job) -> bool:
        """Whether the attempt's cancel was asked (cheap: called several times a second)."""

    def hand_back_due(self, job: Job) -> bool:
        """Whether the runner is draining and its drain period is over: time to hand the
        attempt back (cheap: called several times a second)."""

    def hand_back(self, job: Job) -> Job | None:
        """Give the attempt back: queued again, nothing spent. ``None`` if not held."""

    def upload_artifact(self, job: Job, name: str, path: Path) -> None:
        """Keep ``path`` as the job's artifact ``name``. Raises on failure."""

    def finish(self, job: Job, verdict: Verdict) -> Job | None:
        """End the attempt with ``verdict``; the job as it now stands, or ``None`` when the
        attempt was no longer held or the end could not be delivered."""
