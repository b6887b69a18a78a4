"""In-memory stand-ins for the core's ports, shipped with Launchbay for its tests and yours.

- :class:`MemoryEvents`: job events, log lines and cancel flags without Redis.
- :class:`MemoryRedis`: the few Redis key commands the runner registry and the
  reconciler use (``set``/``get``/``delete``/``scan``), expiring keys on a clock.
- :class:`ManualClock`: a clock that moves only when a test moves it.
- :class:`RecordingCelery`: the broker side of Celery that the dispatcher touches
  (``send_task``, ``control.revoke``), recorded instead of sent.
- :func:`memory_core`: all of them and ``JobStore("sqlite://")`` wired into one
  :class:`~orchestrator.dispatch.Dispatcher`, so a test has the whole core in one line::

      core = memory_core()
      job = core.dispatcher.submit({"executor": "process", "command": ["true"]})
      core.lifecycle.claim(job.id, "runner-0123456789ab")

Nothing here touches the network or the disk (except the in-memory database).
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import redis
from celery import Celery

from orchestrator.dispatch import Dispatcher
from orchestrator.events import Events, LogLine
from orchestrator.job import EventType, as_utc, utcnow
from orchestrator.lifecycle import Lifecycle
from orchestrator.listeners import Listener
from orchestrator.runners import RunnerRegistry
from orchestrator.settings import Settings
from orchestrator.store import JobStore

__all__ = [
    "ManualClock",
    "MemoryCore",
    "MemoryEvents",
    "MemoryRedis",
    "RecordingCelery",
    "Revoke",
    "SentTask",
    "memory_core",
]

Clock = Callable[[], datetime]


# ---------------------------------------------------------------- clock


class ManualClock:
    """A clock for ``JobStore(clock=...)``: an aware UTC time that moves only on
    :meth:`advance` (it starts at the real time it was made, unless told otherwise)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = as_utc(start) if start is not None else utcnow()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds``; the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


# ---------------------------------------------------------------- redis keys


class MemoryRedis:
    """The Redis key commands that :class:`~orchestrator.runners.RunnerRegistry` and
    ``Dispatcher.reconcile`` use, in memory; ``ex`` expiries follow ``clock``.

    It holds no broker queues: whatever Celery was sent lives in :class:`RecordingCelery`.
    """

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self._keys: dict[str, tuple[str, datetime | None]] = {}
        self._sets: dict[str, set[str]] = {}  # (no TTL: the registry's set has none)
        self._lock = threading.Lock()

    def _live(self, key: str) -> str | None:
        held = self._keys.get(key)
        if held is None:
            return None
        value, expires = held
        if expires is not None and self.clock() >= expires:
            del self._keys[key]
            return None
        return value

    def set(self, key: str, value: Any, ex: float | None = None, nx: bool = False) -> bool | None:
        with self._lock:
            if nx and self._live(key) is not None:
                return None
            expires = self.clock() + timedelta(seconds=ex) if ex else None
            self._keys[key] = (str(value), expires)
            return True

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def mget(self, keys: Iterable[str]) -> list[str | None]:
        with self._lock:
            return [self._live(k) for k in keys]

    def exists(self, *keys: str) -> int:
        with self._lock:
            return sum(1 for k in keys if self._live(k) is not None)

    def delete(self, *keys: str) -> int:
        with self._lock:
            return sum(1 for k in keys if self._keys.pop(k, None) is not None)

    def expire(self, key: str, seconds: float) -> bool:
        """Set a live key's expiry; ``False`` (and nothing set) for a missing one."""
        with self._lock:
            value = self._live(key)
            if value is None:
                return False
            self._keys[key] = (value, self.clock() + timedelta(seconds=seconds))
            return True

    def sadd(self, key: str, *members: str) -> int:
        with self._lock:
            held = self._sets.setdefault(key, set())
            new = set(members) - held
            held |= new
            return len(new)

    def srem(self, key: str, *members: str) -> int:
        with self._lock:
            held = self._sets.get(key, set())
            gone = held & set(members)
            held -= gone
            return len(gone)

    def smembers(self, key: str) -> builtins.set[str]:
        with self._lock:
            return set(self._sets.get(key, set()))

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[str]:
        with self._lock:
            found = [k for k in list(self._keys) if self._live(k) is not None]
        return iter([k for k in found if match is None or fnmatch.fnmatchcase(k, match)])

    def lrange(self, key: str, start: int, end: int) -> list[str]:
        return []

    def hvals(self, key: str) -> list[str]:
        return []

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to close."""


# ---------------------------------------------------------------- events


class MemoryEvents(Events):
    """:class:`~orchestrator.events.Events` in memory. Thread-safe.

    What the real one publishes on ``lb:events`` is kept in order in :attr:`published`
    (log batches included, as ``log`` messages); each job's event stream and log are
    read back with :meth:`read_events` and :meth:`lines`. No log file is written.
    """

    def __init__(
        self,
        *,
        logs_dir: Path | None = None,
        log_buffer_lines: int = 1000,
        keys: MemoryRedis | None = None,
        clock: Clock = utcnow,
    ) -> None:
        # Not Events.__init__: there is no Redis client to register a script with. Every
        # method of Events that would reach Redis is overridden below.
        self.keys = keys or MemoryRedis(clock)
        self.r = cast(redis.Redis, self.keys)
        self.logs_dir = logs_dir or Path("launchbay-memory-logs")
        self.log_buffer_lines = log_buffer_lines
        self.clock = clock
        self.published: list[dict[str, Any]] = []
        self._streams: dict[str, list[dict[str, Any]]] = {}
        self._logs: dict[str, list[LogLine]] = {}
        self._flags: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # ------------------------------------------------------------ Events

    def publish(self, job_id: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        with self._changed:
            ts = self.clock().isoformat()
            entry_id = f"{next(self._ids)}-0"
            # Stored as JSON, as Redis stores it: readers get what a reader would get.
            stored = json.loads(json.dumps(data, default=str))
            event = {"id": entry_id, "job_id": job_id, "type": type_, "ts": ts, "data": stored}
            self._streams.setdefault(job_id, []).append(event)
            self.published.append(event)
            self._changed.notify_all()
        return {"id": entry_id, "job_id": job_id, "type": type_, "ts": ts, "data": data}

    def read_events(
        self, job_id: str, after: str | None = None, count: int = 1000
    ) -> list[dict[str, Any]]:
        floor = _entry_number(after) if after else 0
        with self._lock:
            stream = self._streams.get(job_id, [])
            return [e for e in stream if _entry_number(e["id"]) > floor][:count]

    def append_logs(self, job_id: str, lines: list[tuple[str, str | None, str]]) -> int:
        with self._changed:
            kept = self._logs.setdefault(job_id, [])
            if not lines:
                return len(kept)
            ts = self.clock().isoformat()
            records: list[LogLine] = []
            for stream, step, line in lines:
                records.append(
                    {"seq": len(kept) + 1, "ts": ts, "stream": stream, "step": step, "line": line}
                )
                kept.append(records[-1])
            seq = len(kept)
            self.published.append(
                {
                    "id": None,
                    "job_id": job_id,
                    "type": EventType.log.value,
                    "ts": ts,
                    "data": {"seq": seq, "lines": records},
                }
            )
            self._changed.notify_all()
            return seq

    def log_is_new(self, job_id: str) -> None:
        """Nothing cached (see :meth:`forget`)."""

    def forget(self, job_id: str) -> None:
        """Nothing cached: the memory is the truth, as Redis is for the real one."""

    def job_ids_with_data(self) -> set[str]:
        with self._lock:
            return set(self._streams) | set(self._logs) | set(self._flags)

    def purge(self, job_id: str) -> None:
        with self._lock:
            self._streams.pop(job_id, None)
            self._logs.pop(job_id, None)
            self._flags.discard(job_id)

    def flag_cancel(self, job_id: str, ttl_s: int = 86400) -> None:
        with self._lock:
            self._flags.add(job_id)

    def cancel_flagged(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._flags

    # ------------------------------------------------------------ for tests

    def types(self, job_id: str) -> list[str]:
        """The types of the job's events, in order."""
        return [e["type"] for e in self.read_events(job_id, count=1 << 30)]

    def logs(self, job_id: str) -> list[LogLine]:
        """The job's log records, in order."""
        with self._lock:
            return list(self._logs.get(job_id, []))

    def lines(self, job_id: str) -> list[str]:
        """The text of the job's log lines, in order."""
        return [r["line"] for r in self.logs(job_id)]

    def timeline(self, job_id: str) -> list[dict[str, Any]]:
        """Everything published about the job on ``lb:events`` (logs too), in order."""
        with self._lock:
            return [m for m in self.published if m["job_id"] == job_id]

    def wait_for(self, check: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Block until ``check()`` holds after something was published (False on timeout).

        ``check`` runs with the events' lock held: read ``published`` or the store, not
        this object's locked methods.
        """
        with self._changed:
            return self._changed.wait_for(check, timeout)

    def wait_event(self, job_id: str, type_: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """The job's first event of ``type_``, waiting up to ``timeout`` for it."""

        def first() -> dict[str, Any] | None:
            stream = self._streams.get(job_id, [])
            return next((e for e in stream if e["type"] == type_), None)

        with self._changed:
            self._changed.wait_for(lambda: first() is not None, timeout)
            return first()


def _entry_number(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


# ---------------------------------------------------------------- celery


@dataclass(frozen=True)
class SentTask:
    """One ``send_task`` call."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]  # task_id, queue, countdown, expires…

    @property
    def task_id(self) -> str | None:
        return self.options.get("task_id")

    @property
    def countdown(self) -> float | None:
        return self.options.get("countdown")


@dataclass(frozen=True)
class Revoke:
    """One ``control.revoke`` call."""

    task_id: str
    terminate: bool
    signal: str | None


class _RecordingControl:
    def __init__(self, owner: RecordingCelery) -> None:
        self._owner = owner

    def revoke(self, task_id: str, terminate: bool = False, signal: str | None = None) -> None:
        with self._owner._lock:
            self._owner.revoked.append(Revoke(task_id, terminate, signal))


class _RecordingProducer:
    @contextlib.contextmanager
    def batch(self, max_size: int = 1000) -> Iterator[None]:
        yield


class RecordingCelery:
    """What the dispatcher asks of its Celery app, recorded. Set :attr:`down` to an
    exception to make every ``send_task`` raise it (a broker that is away)."""

    def __init__(self) -> None:
        self.sent: list[SentTask] = []
        self.revoked: list[Revoke] = []
        self.down: Exception | None = None
        self.control = _RecordingControl(self)
        self._lock = threading.Lock()

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> SentTask:
        with self._lock:
            if self.down is not None:
                raise self.down
            sent = SentTask(name, tuple(args or ()), dict(kwargs or {}), options)
            self.sent.append(sent)
            return sent

    @contextlib.contextmanager
    def producer_or_acquire(self, producer: Any = None) -> Iterator[Any]:
        """A producer for several sends (a batch submit's); ``send_task`` records each."""
        yield producer or _RecordingProducer()

    def sent_for(self, job_id: str) -> list[SentTask]:
        """The messages sent for ``job_id``, in order."""
        with self._lock:
            return [s for s in self.sent if s.args and s.args[0] == job_id]

    def revoked_ids(self) -> list[str]:
        with self._lock:
            return [r.task_id for r in self.revoked]


# ---------------------------------------------------------------- the core


@dataclass
class MemoryCore:
    """The core on in-memory parts: the dispatcher, and the fakes behind it, typed."""

    dispatcher: Dispatcher
    events: MemoryEvents
    celery: RecordingCelery
    clock: ManualClock
    keys: MemoryRedis
    runners: RunnerRegistry = field(init=False)

    def __post_init__(self) -> None:
        ttl = self.settings.runner_heartbeat_s * 3
        self.runners = RunnerRegistry(cast(redis.Redis, self.keys), ttl_s=ttl)

    @property
    def settings(self) -> Settings:
        return self.dispatcher.settings

    @property
    def store(self) -> JobStore:
        return self.dispatcher.store

    @property
    def lifecycle(self) -> Lifecycle:
        return self.dispatcher.lifecycle

    def close(self) -> None:
        self.store.dispose()


def memory_core(
    settings: Settings | None = None,
    *,
    clock: ManualClock | None = None,
    listeners: Iterable[Listener] = (),
) -> MemoryCore:
    """The whole core in memory: ``JobStore("sqlite://")`` on ``clock``, :class:`MemoryEvents`
    and :class:`RecordingCelery` behind a :class:`~orchestrator.dispatch.Dispatcher`.

    ``settings`` defaults to ``Settings()``; the core itself writes nothing under its
    ``home``, but attempts run on it make their workspaces there.
    """
    settings = settings or Settings()
    clock = clock or ManualClock()
    keys = MemoryRedis(clock)
    events = MemoryEvents(
        logs_dir=settings.logs_dir,
        log_buffer_lines=settings.log_buffer_lines,
        keys=keys,
        clock=clock,
    )
    celery = RecordingCelery()
    dispatcher = Dispatcher(
        settings,
        JobStore("sqlite://", clock=clock),
        events,
        cast(Celery, celery),
        extra_listeners=list(listeners),
    )
    return MemoryCore(dispatcher, events, celery, clock, keys)
