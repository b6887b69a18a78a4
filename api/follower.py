"""Following one job: the client's cursor and the loop that reads and merges its streams.

Pub/sub only wakes a follower (see :mod:`api.fanout`). The Redis streams are the truth:
after a wake-up :class:`JobFollower` reads its job's streams from its own :class:`Cursor`
(XRANGE with an exclusive start), so nothing is lost or repeated and the order is exactly
the stream's, even when pub/sub drops a message or two publishers race.

The reads are skipped when the messages provably continue the cursor: log lines whose
numbers follow the cursor's, and events whose ``prev`` (set by the hub) is the cursor's
event id. Anything else (a gap, an unknown ``prev``, a quiet poll, a resync) reads.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from api.fanout import Hub, Subscriber
from orchestrator.errors import ParamError
from orchestrator.events import LogLine, parse_log_seq
from orchestrator.job import STATUS_EVENTS, TERMINAL_STATUSES, EventType, Job, utcnow

TERMINAL_EVENTS = frozenset(STATUS_EVENTS[s] for s in TERMINAL_STATUSES)
_EVENT_ID = re.compile(r"^[0-9]+-[0-9]+$")


# ---------------------------------------------------------------------- cursors


@dataclass
class Cursor:
    """Where a client is in one job: the last event id and the last log line seen.

    Encoded as ``"{event_id}|{log_seq}"`` (opaque to clients) and used as the SSE event id,
    so ``Last-Event-ID`` resumes both streams exactly.
    """

    event_id: str = "0-0"
    log_seq: int = 0

    def encode(self) -> str:
        return f"{self.event_id}|{self.log_seq}"

    @classmethod
    def parse(cls, text: str, field: str = "since") -> Cursor:
        event_id, sep, seq = text.strip().partition("|")
        if not sep or not _EVENT_ID.fullmatch(event_id) or not _id_in_range(event_id):
            raise ParamError(
                field,
                f"{field} must be an event id from this stream "
                f"(like '1712345678901-0|42'), got {text[:100]!r}",
            )
        return cls(event_id, parse_log_seq(seq, field))

    def check_within(self, last_event_id: str | None, field: str) -> None:
        """ParamError naming ``field`` if the cursor's event is past the job's last one
        (it was not taken from this job's stream: following it would never end)."""
        last = last_event_id or "0-0"
        if _id_key(self.event_id) > _id_key(last):
            raise ParamError(
                field, f"{field} is past this job's last event ({last}): it is not from this job"
            )


def _id_in_range(event_id: str) -> bool:
    """Whether both parts of a stream id fit Redis's 64 bits."""
    return all(len(part) <= 20 and int(part) < 2**64 for part in event_id.split("-"))


def parse_seq(text: str, field: str = "since") -> int:
    return parse_log_seq(text, field)


async def resolve_log_since(hub: Hub, job_id: str, since: int | datetime) -> int:
    """The line number to read after: ``since`` itself, or the last line written at or
    before the time ``since``."""
    return since if isinstance(since, int) else await hub.seq_at(job_id, since)


# ---------------------------------------------------------------------- follower


Item = tuple[str, dict[str, Any], Cursor]  # ("event" | "log", payload, cursor after it)


class LiveWriter(Protocol):
    """Where a parked follower's live lane writes (the route's encoding on a wire)."""

    def ready(self) -> bool:
        """Whether items written now go out at once, after everything sent before."""

    def write(self, items: list[Item]) -> None:
        """Send ``items`` now (only after ``ready()``)."""


# How long after a job's end (its row's ``finished_at``) its terminal event may still be
# on its way: the end publishes it right after its commit, a round trip later.
END_EVENT_GRACE_S = 2.0


class JobFollower:
    """Reads one job's events and log lines from a cursor until the job has ended.

    ``batches()`` yields lists of ``(kind, payload, cursor)`` in order: log lines and
    events merged by time (each stream keeps its own exact order), the log drained completely
    before the terminal event, which comes last. Without ``emit_events`` only log lines are
    yielded (events are still read, to know when the job ended).
    """

    def __init__(
        self,
        hub: Hub,
        sub: Subscriber,
        job_id: str,
        cursor: Cursor,
        *,
        emit_events: bool = True,
        ended: Job | None = None,
        page: int = 1000,
        poll_s: float = 5.0,
    ) -> None:
        self.hub, self.sub, self.job_id = hub, sub, job_id
        self.cursor = Cursor(cursor.event_id, cursor.log_seq)
        self.emit_events = emit_events
        self.ended = ended
        self.page = page
        self.poll_s = poll_s
        self.final: dict[str, Any] | None = None  # the terminal event, once seen
        # Set by the route once its answer can be written to directly (api/wire.py).
        self.writer: LiveWriter | None = None

    async def batches(self) -> AsyncIterator[list[Item]]:
        read = True
        fresh: list[LogLine] = []
        published: list[dict[str, Any]] = []
        while True:
            if read:
                # Both streams, always, as one snapshot cut where both are known (see
                # Hub.read_both): a read of one alone may reach past the other, and send a
                # line before an event written before it (or the other way round).
                evs, logs = await self.hub.read_both(
                    self.job_id,
                    self.cursor.event_id,
                    self.cursor.log_seq,
                    count=self.page,
                    limit=self.page,
                )
                # A full page of either: there may be more, kept back until read.
                more = len(logs) >= self.page or len(evs) >= self.page
            else:
                # What the messages of one wake-up hold, as the streams have it: the events
                # that follow the cursor's, the lines that continue its line (``_wake``).
                evs, logs, more = published, fresh, False
            terminal = next((e for e in evs if e["type"] in TERMINAL_EVENTS), None)
            if terminal is not None:
                evs = evs[: evs.index(terminal)]
            batch = self._merge(logs, evs)
            if batch:
                yield batch
            if terminal is None and self.ended is not None:
                # The store said ended, its terminal event is not in the stream: it may
                # still be on its way (published just after the end's commit). Its id is
                # the cursor a client resumes from, so wait for it a moment.
                late = self._end_event_due()
                if late > 0:
                    read, fresh, published = self._wake(await self._wait(late))
                    continue
            if terminal is not None or self.ended is not None:
                async for rest in self._finish(terminal):
                    yield rest
                return
            if more:
                read, fresh, published = True, [], []
                continue  # more is waiting: no need to wait for a wake-up
            # (Lines taken from the published messages need no read for the next ones:
            # those were published too, and are waiting in the queue.)
            read, fresh, published = self._wake(await self._wait())

    async def _wait(self, at_most: float | None = None) -> list[dict[str, Any] | None]:
        # Parked at the live edge: everything so far was sent. Until this wakes, messages
        # that continue the cursor are written by the hub's task (``_take``).
        live = self._take if self.writer is not None else None
        wait = self.poll_s if at_most is None else min(self.poll_s, at_most)
        first = await self.sub.next(wait, live=live)
        return [first, *self.sub.pending()]

    def _end_event_due(self) -> float:
        """Seconds the terminal event of a job the store says ended may still take to be
        published (0: it would be here by now, or was lost; the end is then told from
        the store's row)."""
        finished = self.ended.finished_at if self.ended is not None else None
        if finished is None:
            return 0.0
        age = (utcnow() - finished).total_seconds()
        return min(END_EVENT_GRACE_S, max(0.0, END_EVENT_GRACE_S - age))  # (clocks skew)

    def _take(self, msg: dict[str, Any]) -> bool:
        """The live lane: write ``msg`` now if it provably continues the cursor (the same
        rules as :meth:`_wake`, one message at a time, in the channel's order), else say
        False and leave it to the usual path. The job's end always takes the usual path
        (the log is drained before the terminal event)."""
        writer = self.writer
        if writer is None or not writer.ready():
            return False
        kind = msg.get("type")
        if kind == EventType.log:
            fresh = self._continuing(msg.get("data", {}).get("lines", []))
            if fresh is None:
                return False  # a gap: read
            if fresh:
                writer.write(self._merge(fresh, []))
            return True
        if (
            kind in TERMINAL_EVENTS
            or kind == EventType.resync
            or msg.get("prev") != self.cursor.event_id
            or not isinstance(msg.get("id"), str)
        ):
            return False
        items = self._merge([], [_event_of(msg)])
        if items:
            writer.write(items)
        return True

    def _wake(
        self, msgs: list[dict[str, Any] | None]
    ) -> tuple[bool, list[LogLine], list[dict[str, Any]]]:
        """What a burst of messages asks for: (read both streams?, the lines that continue
        the cursor, the events that follow it); when a read is due, no lines or events."""
        read = False
        hint: list[LogLine] = []
        published: list[dict[str, Any]] = []
        head = self.cursor.event_id  # the last event we have, or will have from ``published``
        for msg in msgs:
            if msg is None or msg.get("type") == EventType.resync:
                # A quiet poll or a reconnect: re-read both streams to be sure.
                read = True
            elif msg.get("type") == EventType.log:
                hint.extend(msg.get("data", {}).get("lines", []))
            elif not read:  # (else a read is due anyway, and covers this event)
                if msg.get("prev") == head and isinstance(msg.get("id"), str):
                    # The very next entry of the stream, as published: no read needed (the
                    # hub sets ``prev`` from stream ids only, each before its event's id).
                    # Lines logged before it were published before it: they are in ``hint``.
                    published.append(_event_of(msg))
                    head = msg["id"]
                elif _is_after(msg.get("id"), head) is not False:
                    # A gap or an unknown predecessor: read both streams, as on a first
                    # connection (lines written just before the events come before them).
                    read = True
                # (else already ours: it landed between subscribing and a read)
        fresh = None if read else self._continuing(hint)
        if fresh is None:
            # A read is due, or a line is missing before them: read both streams. (The log
            # alone may already hold lines written after an event whose message has not
            # come yet.)
            return True, [], []
        return False, fresh, published

    def _continuing(self, lines: list[LogLine]) -> list[LogLine] | None:
        """The lines the cursor has not seen, if they continue it exactly (none: [] ); None
        when one is missing before them (a read is due)."""
        seq = self.cursor.log_seq
        fresh = [ln for ln in lines if ln["seq"] > seq]
        if all(ln["seq"] == seq + i for i, ln in enumerate(fresh, start=1)):
            return fresh
        return None

    def _merge(self, logs: list[LogLine], evs: list[dict[str, Any]]) -> list[Item]:
        out: list[Item] = []
        i = j = 0
        while i < len(logs) or j < len(evs):
            if j >= len(evs) or (i < len(logs) and logs[i]["ts"] <= evs[j]["ts"]):
                ln = logs[i]
                i += 1
                self.cursor = Cursor(self.cursor.event_id, ln["seq"])
                out.append(("log", dict(ln), self.cursor))
            else:
                ev = evs[j]
                j += 1
                self.cursor = Cursor(ev["id"], self.cursor.log_seq)
                if self.emit_events:
                    out.append(("event", ev, self.cursor))
        return out

    async def _finish(self, terminal: dict[str, Any] | None) -> AsyncIterator[list[Item]]:
        while True:
            rest = await self.hub.read_logs(self.job_id, self.cursor.log_seq, self.page)
            if not rest:
                break
            yield self._merge(rest, [])
        if terminal is None and self.ended is not None:
            job = self.ended
            terminal = {
                "id": self.cursor.event_id,
                "job_id": job.id,
                "type": job.status.value,
                "ts": (job.finished_at or job.created_at).isoformat(),
                "data": job.public(),
            }
        if terminal is None:
            return
        self.final = terminal
        self.cursor = Cursor(terminal["id"], self.cursor.log_seq)
        if self.emit_events:
            yield [("event", terminal, self.cursor)]


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _is_after(event_id: Any, head: str) -> bool | None:
    """Whether stream id ``event_id`` comes after ``head`` (None: not a stream id)."""
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        return None
    return _id_key(event_id) > _id_key(head)


def _event_of(msg: dict[str, Any]) -> dict[str, Any]:
    """A published event message as the stream read would give it."""
    return {k: msg[k] for k in ("id", "job_id", "type", "ts", "data")}
