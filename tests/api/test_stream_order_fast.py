"""The order of a job's items when its follower reads, in process (fast tier): the real hub
and follower over an in-memory stand-in for the hub's Redis reads (XRANGE, XREVRANGE,
EXISTS, MULTI/EXEC) and its messages handed to the hub as its subscription would.

A replay merges one snapshot of both streams by time stamp; a live follower must send the
same items in the same order. The CI failure (a countdown's ``3...`` sent before its
``3 seconds remaining...``): the job had no line in Redis when the snapshot was taken, the
worker's next call (the progress event, then the line) landed just after it, and the hub
took the line from the log file, which it read after the snapshot. See also
test_stream_order.py (the same against a real Valkey and publisher).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from api import fanout
from api.fanout import Hub
from api.follower import Cursor, Item, JobFollower
from orchestrator.events import LogLine, job_events_key, job_logs_key
from orchestrator.job import utcnow

pytestmark = pytest.mark.anyio
WAIT_S = 10
JOB = "j-order"


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def _in_range(entry_id: str, low: str, high: str) -> bool:
    if low != "-":
        bound, open_ = (low[1:], True) if low.startswith("(") else (low, False)
        bound = bound if "-" in bound else f"{bound}-0"
        if _key(entry_id) < _key(bound) or (open_ and _key(entry_id) == _key(bound)):
            return False
    return high == "+" or _key(entry_id) <= _key(high if "-" in high else f"{high}-0")


class Streams:
    """Redis streams in memory, read as redis.asyncio reads them (decoded)."""

    def __init__(self) -> None:
        self.data: dict[str, list[tuple[str, dict[str, str]]]] = {}
        # Called once a MULTI/EXEC's answer is made, before the hub gets it.
        self.after_snapshot: Callable[[], None] | None = None

    def _xrange(self, key: str, min: str = "-", max: str = "+", count: int | None = None) -> Any:
        out = [(i, dict(f)) for i, f in self.data.get(key, []) if _in_range(i, min, max)]
        return out[:count] if count is not None else out

    def _xrevrange(self, key: str, max: str = "+", min: str = "-", count: int | None = None) -> Any:
        out = self._xrange(key, min, max)[::-1]
        return out[:count] if count is not None else out

    def _exists(self, *keys: str) -> int:
        return sum(1 for k in keys if k in self.data)

    async def xrange(self, *args: Any, **kwargs: Any) -> Any:
        return self._xrange(*args, **kwargs)

    async def xrevrange(self, *args: Any, **kwargs: Any) -> Any:
        return self._xrevrange(*args, **kwargs)

    async def exists(self, *keys: str) -> int:
        return self._exists(*keys)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self)


class Pipeline:
    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.calls: list[Callable[[], Any]] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        do = getattr(self.streams, f"_{name}")
        return lambda *a, **kw: self.calls.append(lambda: do(*a, **kw))

    async def execute(self) -> list[Any]:
        out = [call() for call in self.calls]  # (all at once: nothing lands in between)
        then, self.streams.after_snapshot = self.streams.after_snapshot, None
        if then is not None:
            then()
        return out


class Publisher:
    """What orchestrator/events.py does for one job: each call appends to the streams and
    publishes, events with auto ids, log lines with ids ``{seq}-0`` (Redis first, then the
    whole-log file); the messages go to the hub as its subscription hands them on."""

    def __init__(self, streams: Streams, hub: Hub, logs_dir: Path) -> None:
        self.streams, self.hub, self.logs_dir = streams, hub, logs_dir
        self.ids = itertools.count(1)
        self.seq = 0

    def event(self, type_: str, data: dict[str, Any]) -> str:
        eid, ts = f"{1000 + next(self.ids)}-0", utcnow().isoformat()
        fields = {"type": type_, "ts": ts, "data": json.dumps(data)}
        self.streams.data.setdefault(job_events_key(JOB), []).append((eid, fields))
        msg = {"job_id": JOB, "type": type_, "ts": ts, "id": eid, "gid": eid, "data": data}
        self.hub._deliver(json.dumps(msg))
        return eid

    def lines(self, *texts: str) -> None:
        ts = utcnow().isoformat()
        records: list[LogLine] = []
        for text in texts:
            self.seq += 1
            records.append(
                {"seq": self.seq, "ts": ts, "stream": "stdout", "step": None, "line": text}
            )
            fields = {"ts": ts, "stream": "stdout", "step": "", "line": text}
            self.streams.data.setdefault(job_logs_key(JOB), []).append((f"{self.seq}-0", fields))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / f"{JOB}.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        msg: dict[str, object] = {"id": None, "job_id": JOB, "type": "log", "ts": ts}
        msg["data"] = {"seq": self.seq, "lines": records}
        self.hub._deliver(json.dumps(msg))


def _shape(items: list[Item]) -> list[tuple[str, str, str]]:
    return [(k, p.get("line") or p["type"], c.encode()) for k, p, c in items]


async def test_a_line_the_snapshot_did_not_hold_is_not_taken_from_the_log_file(
    tmp_path: Path,
) -> None:
    streams = Streams()
    hub = Hub("redis://unused", logs_dir=tmp_path)
    hub.r = streams  # type: ignore[assignment]  # (the reads only: nothing is started)
    pub = Publisher(streams, hub, tmp_path)
    started = pub.event("started", {"status": "running"})
    sub = hub.subscribe(JOB)
    hub.seed(hub.epoch, JOB, started)
    follower = JobFollower(hub, sub, JOB, Cursor(started, 0), poll_s=30)

    def worker_call() -> None:  # one script call: the progress event, then the line
        pub.event("progress", {"percent": 0, "message": "3 seconds remaining..."})
        pub.lines("3...")

    streams.after_snapshot = worker_call  # (lands right after the follower's first read)
    live: list[Item] = []
    two, done = anyio.Event(), anyio.Event()

    async def follow() -> None:
        async for batch in follower.batches():
            live.extend(batch)
            if len(live) >= 2:
                two.set()
        done.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await two.wait()
            pub.event("succeeded", {"status": "succeeded"})
            await done.wait()
    assert streams.after_snapshot is None  # (the call did land after the snapshot)

    replay: list[Item] = []
    with anyio.fail_after(WAIT_S):
        async for batch in JobFollower(hub, hub.subscribe(JOB), JOB, Cursor(started, 0)).batches():
            replay.extend(batch)
    assert [s[:2] for s in _shape(replay)] == [
        ("event", "progress"),
        ("log", "3..."),
        ("event", "succeeded"),
    ]
    assert _shape(live) == _shape(replay)


# ---------------------------------------------------------------- where a read is cut


def _ev(n: int, ts: str) -> dict[str, Any]:
    return {"id": f"{n}-0", "job_id": JOB, "type": "progress", "ts": ts, "data": {}}


def _ln(seq: int, ts: str) -> LogLine:
    return {"seq": seq, "ts": ts, "stream": "stdout", "step": None, "line": f"l{seq}"}


def test_a_full_page_of_lines_keeps_back_the_events_after_its_next_line() -> None:
    evs = [_ev(1, "t1"), _ev(2, "t3"), _ev(3, "t5")]
    lines = [_ln(1, "t2"), _ln(2, "t4"), _ln(3, "t4")]  # (the third: the next page's first)
    got_evs, got_lines = fanout._consistent(evs, lines, count=10, limit=2, last=3)
    assert [e["id"] for e in got_evs] == ["1-0", "2-0"]  # 3-0 comes after line 3
    assert [ln["seq"] for ln in got_lines] == [1, 2]


def test_a_tie_with_the_next_line_waits_for_it() -> None:
    # Ties go to the line (JobFollower._merge): an event as old as the next line follows it.
    got_evs, got_lines = fanout._consistent([_ev(1, "t2")], [_ln(1, "t1"), _ln(2, "t2")], 10, 1, 2)
    assert (got_evs, [ln["seq"] for ln in got_lines]) == ([], [1])


def test_a_full_page_of_events_keeps_back_the_lines_after_its_last_event() -> None:
    evs = [_ev(1, "t1"), _ev(2, "t3")]
    lines = [_ln(1, "t2"), _ln(2, "t3"), _ln(3, "t4")]
    got_evs, got_lines = fanout._consistent(evs, lines, count=2, limit=10, last=3)
    assert [e["id"] for e in got_evs] == ["1-0", "2-0"]
    assert [ln["seq"] for ln in got_lines] == [1, 2]  # (line 3 may follow event 3)


def test_a_log_file_behind_the_snapshot_keeps_back_the_events_not_before_its_last_line() -> None:
    evs = [_ev(1, "t1"), _ev(2, "t3")]
    got_evs, got_lines = fanout._consistent(evs, [_ln(1, "t2")], count=10, limit=10, last=5)
    assert [e["id"] for e in got_evs] == ["1-0"]
    assert [ln["seq"] for ln in got_lines] == [1]


def test_a_read_that_reaches_the_end_of_both_is_not_cut() -> None:
    evs = [_ev(1, "t1"), _ev(2, "t9")]
    lines = [_ln(1, "t2"), _ln(2, "t3")]
    assert fanout._consistent(evs, lines, count=10, limit=10, last=2) == (evs, lines)


async def test_lines_the_log_file_lacks_yet_come_from_the_buffer_or_wait(tmp_path: Path) -> None:
    """The buffer rolled past the cursor, and the file (written just after Redis) does not
    hold the buffer's newest lines yet: they are taken from the buffer when it reaches back
    to them; else the events that may come after the first missing line wait."""
    streams = Streams()
    hub = Hub("redis://unused", logs_dir=tmp_path)
    hub.r = streams  # type: ignore[assignment]
    pub = Publisher(streams, hub, tmp_path)
    pub.lines("one", "two", "three")  # (t1)
    early = pub.event("progress", {"percent": 10})
    pub.lines("four", "five")  # (t2)
    late = pub.event("progress", {"percent": 50})
    logs = streams.data[job_logs_key(JOB)]
    path = tmp_path / f"{JOB}.jsonl"
    whole = path.read_text().splitlines(keepends=True)

    # The buffer holds lines 4-5 only; the file has lines 1-3: together, all of them.
    del logs[:3]
    path.write_text("".join(whole[:3]))
    evs, lines = await hub.read_both(JOB, "0-0", 0)
    assert [e["id"] for e in evs] == [early, late]
    assert [ln["line"] for ln in lines] == ["one", "two", "three", "four", "five"]

    # The buffer holds line 5 only; the file lines 1-3: line 4 is not to be had yet, and
    # the events not before line 3 wait with it (line 4's time is not known: both).
    del logs[:1]
    evs, lines = await hub.read_both(JOB, "0-0", 0)
    assert evs == []
    assert [ln["line"] for ln in lines] == ["one", "two", "three"]


async def test_a_job_without_a_line_in_the_snapshot_has_none_from_the_file(
    tmp_path: Path,
) -> None:
    streams = Streams()
    hub = Hub("redis://unused", logs_dir=tmp_path)
    hub.r = streams  # type: ignore[assignment]
    pub = Publisher(streams, hub, tmp_path)
    pub.event("started", {})

    def worker_call() -> None:
        pub.event("progress", {})
        pub.lines("3...")

    streams.after_snapshot = worker_call
    evs, lines = await hub.read_both(JOB, "0-0", 0)
    assert [e["type"] for e in evs] == ["started"] and lines == []
