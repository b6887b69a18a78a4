"""The listener seam: what happens after the core wins a transition.

The core (``orchestrator/lifecycle.py``, ``orchestrator/dispatch.py``) commits a transition
and then hands it to every registered listener, in order. Publishing events is one
listener; metrics and webhooks are meant to be one file each beside it. A listener that
raises is logged and skipped: the store already holds the truth, and one listener's
failure must never undo a committed transition or starve the next listener.

Once every listener has seen the change, each is asked to :meth:`~Listener.flush`: the
events publisher and the metrics recorder stage their Redis writes in the process's
outbox (``orchestrator/events.py``) and the first flush sends both in one round trip.
:meth:`Listeners.together` holds the flushes back until a group of changes is handed over
(a batch submit: one round trip for all their events).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from orchestrator.events import Events
from orchestrator.job import STATUS_EVENTS, EventType, Job

log = logging.getLogger(__name__)


class Listener:
    """Base of every listener; override what you need. Called after commit, in the thread
    that made the change: keep it quick, or hand the work to your own thread."""

    def transition(self, job: Job, event: EventType) -> None:
        """``job`` (as committed) arrived in its status; ``event`` names how."""

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        """A running attempt reported progress (stored, not a status change)."""

    def flush(self) -> None:
        """Every listener has seen the change(s): send what you staged for them."""

    def flush_soon(self) -> None:
        """As :meth:`flush`, but the caller need not wait for it: send it from your own
        thread if you have one (in order with whatever is sent after it)."""
        self.flush()


class Listeners:
    """The registered listeners, called in order; never raises."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._all = list(listeners)
        self._held = threading.local()

    def add(self, listener: Listener) -> None:
        self._all.append(listener)

    def transition(self, job: Job, event: EventType | None = None) -> None:
        event = event or STATUS_EVENTS[job.status]
        for listener in self._all:
            self._call(listener.transition, job, event)
        self._flush()

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        for listener in self._all:
            self._call(listener.progress, job_id, attempt, percent, message)
        self._flush()

    @contextlib.contextmanager
    def together(self, *, wait: bool = True) -> Iterator[None]:
        """Changes handed over inside (on this thread) are flushed once, at the end; with
        ``wait=False``, by the listeners' own threads (:meth:`Listener.flush_soon`), while
        the caller goes on."""
        depth = getattr(self._held, "depth", 0)
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            self._flush(wait=wait)

    def _flush(self, *, wait: bool = True) -> None:
        if getattr(self._held, "depth", 0):
            return
        for listener in self._all:
            self._call(listener.flush if wait else listener.flush_soon)

    @staticmethod
    def _call(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # logged; the store stays the truth
            log.exception("listener %s failed", getattr(fn, "__qualname__", fn))


class EventPublisher(Listener):
    """Publishes every transition and progress report on Redis (``lb:events`` and the job's
    event stream), for SSE, WebSocket, the dashboard and the CLI."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def transition(self, job: Job, event: EventType) -> None:
        self.events.post_job(job.id, event.value, job)

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        self.events.post(
            job_id,
            EventType.progress.value,
            {"percent": percent, "message": message, "attempt": attempt},
        )

    def flush(self) -> None:
        self.events.flush()

    def flush_soon(self) -> None:
        self.events.flush_soon()
