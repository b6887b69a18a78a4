"""Job events and log lines on Redis.

* ``lb:events`` (pub/sub): every event, for live fan-out. Each API process holds one
  subscription to it.
* ``lb:job:{id}:events`` (stream, auto ids): the job's events, for replay and resume.
* ``lb:job:{id}:logs`` (stream, id ``{seq}-0``): the live tail of the job's log, trimmed to
  ``log_buffer_lines``. Stream ids are line numbers, so ``since=`` resumes exactly.
* ``{home}/logs/{id}.jsonl``: the whole log, written as it comes, read once the job ended
  or when a reader has fallen behind the live buffer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote  # (json.dumps of a str, in C)
from pathlib import Path
from typing import Any, TypedDict

import redis

from orchestrator.errors import ParamError
from orchestrator.job import EventType, as_utc, utcnow

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "lb:events"
EVENTS_MAXLEN = 5000
# Every job's events (not log lines) in one stream, in publish order: the firehose
# (``GET /api/v1/events``) resumes from it and the webhook deliverer consumes it.
FIREHOSE_STREAM = "lb:firehose"
FIREHOSE_MAXLEN = 20000
# Log line numbers are Redis stream ids ``{seq}-0``: a client's ``since`` above this is
# no line there can ever be (and past 2**64 - 1 Redis refuses the id).
MAX_LOG_SEQ = 2**63 - 1


# ---------------------------------------------------------------- long lines


def cut_marker(total: int) -> str:
    """What ends a line that was cut: how long it was."""
    return f" … [line cut: {total} bytes]"


_UTF8_LEADS = ((2, 0b110), (3, 0b1110), (4, 0b11110))  # (length, the lead byte's top bits)


def whole_chars(raw: bytes) -> bytes:
    """``raw`` without a UTF-8 sequence cut short at its end."""
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b & 0xC0 != 0x80:  # ASCII or a lead byte: how long its sequence is
            need = next((n for n, lead in _UTF8_LEADS if b >> (7 - n) == lead), 1)
            return raw if need <= back else raw[:-back]
    return raw


def clip_line(line: str, limit: int) -> str:
    """``line``, or its first ``limit`` UTF-8 bytes and :func:`cut_marker` when longer."""
    if len(line) * 4 <= limit:
        return line  # (cheap: no character is longer than 4 bytes)
    raw = line.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return line
    kept = whole_chars(raw[:limit]).decode("utf-8", "replace")
    return kept + cut_marker(len(raw))


JOB_KEYS_PREFIX = "lb:job:"
JOB_KEYS_PATTERN = JOB_KEYS_PREFIX + "*"


def parse_log_since(text: str, field: str = "since") -> int | datetime:
    """A log ``since``: a line number, or an ISO 8601 time (UTC unless it names a zone).

    Raises :class:`ParamError` (a ``ValueError``) naming ``field``; the API answers it with
    a 422, the CLI with one line and exit 2.
    """
    text = text.strip()
    if text.isascii() and text.isdigit():
        return parse_log_seq(text, field)
    try:
        return as_utc(datetime.fromisoformat(text))
    except OverflowError:  # (year 1 or 9999 with a zone: not a time UTC can hold)
        raise ParamError(
            field, f"{field} is out of range: give a time between years 1 and 9999 in UTC"
        ) from None
    except ValueError:
        raise ParamError(
            field,
            f"{field} must be a log line number (0 or more) or an ISO 8601 time "
            f"(like 2026-01-31T12:00:00Z), got {text[:100]!r}",
        ) from None


def parse_log_seq(text: str, field: str = "since") -> int:
    """A log line number, 0 to :data:`MAX_LOG_SEQ`; ParamError naming ``field`` else."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ParamError(
            field, f"{field} must be a log line number (0 or more), got {text[:100]!r}"
        )
    if len(text) > len(str(MAX_LOG_SEQ)) or int(text) > MAX_LOG_SEQ:
        raise ParamError(field, f"{field} must be a log line number of at most {MAX_LOG_SEQ}")
    return int(text)


def job_events_key(job_id: str) -> str:
    return f"lb:job:{job_id}:events"


def job_logs_key(job_id: str) -> str:
    return f"lb:job:{job_id}:logs"


def cancel_key(job_id: str) -> str:
    return f"lb:job:{job_id}:cancel"


def runner_key(runner_id: str) -> str:
    return f"lb:runners:{runner_id}"


def drain_key(runner_id: str) -> str:
    """Set while a worker drains: the Unix time its running jobs must be handed back."""
    return f"lb:drain:{runner_id}"


# The ids of the registered runners (a set): the registry lists them from here instead of
# scanning every key in Redis for ``lb:runners:*``, which grew with every job's streams.
RUNNERS_INDEX = "lb:runner-ids"

# One call sends a batch of operations, in order. KEYS[1] the firehose, KEYS[2] the metrics
# hash, then one key per ``e`` and ``l`` operation. ARGV[1] the channel, ARGV[2] the events'
# maxlen, ARGV[3] the firehose's, then the operations:
#   e, type, ts, data (JSON), the message's JSON without its closing brace (id, gid and data
#      are appended here), job id — appended to the job's stream and the firehose, published
#      with the stream id it got (only known in here); ``gid`` is its id in the firehose;
#   c | f, field, n — HINCRBY | HINCRBYFLOAT of the metrics hash;
#   l, maxlen, ts, the first line's number, how many lines, a (stream, step, line) triple per
#      line, the wake-up message — log lines with ids ``{seq}-0`` (line numbers);
#   q, message — a Celery task message LPUSHed onto its queue's list (its key is the
#      operation's key; orchestrator/broker.py ``TaskMessages``).
# Returns the event ids, in order.
_SEND_LUA = """
local chan, emax, fmax = ARGV[1], ARGV[2], ARGV[3]
local ids, i, k = {}, 4, 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'e' then
    k = k + 1
    local id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', emax, '*',
                          'type', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
    local gid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', fmax, '*', 'job_id', ARGV[i + 5],
                           'id', id, 'type', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
    redis.call('PUBLISH', chan, ARGV[i + 4] .. ', "id": "' .. id .. '", "gid": "' .. gid
               .. '", "data": ' .. ARGV[i + 3] .. '}')
    ids[#ids + 1] = id
    i = i + 6
  elseif op == 'c' then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'f' then
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'l' then
    k = k + 1
    local seq, j = tonumber(ARGV[i + 3]), i + 5
    -- A batch sent again after a call whose answer was lost (Redis stopped between
    -- running it and replying) finds its lines there already: add only the missing ones.
    local top, last = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1), 0
    if #top > 0 then last = tonumber(string.match(top[1][1], '^(%d+)')) end
    for _ = 1, tonumber(ARGV[i + 4]) do
      if seq > last then
        redis.call('XADD', KEYS[k], string.format('%d-0', seq), 'ts', ARGV[i + 2],
                   'stream', ARGV[j], 'step', ARGV[j + 1], 'line', ARGV[j + 2])
      end
      seq, j = seq + 1, j + 3
    end
    redis.call('XTRIM', KEYS[k], 'MAXLEN', ARGV[i + 1])
    redis.call('PUBLISH', chan, ARGV[j])
    i = j + 1
  elseif op == 'q' then
    k = k + 1
    redis.call('LPUSH', KEYS[k], ARGV[i + 1])
    i = i + 2
  else
    return redis.error_reply('launchbay: unknown operation ' .. tostring(op))
  end
end
return ids
"""
_SEND_SHA = hashlib.sha1(_SEND_LUA.encode()).hexdigest()
# The job counters (orchestrator/metrics.py): the outbox adds to them with the events.
METRICS_KEY = "lb:metrics"

# How long the outbox's thread lets what ``flush_soon`` staged wait for a flush that is
# coming anyway: a short job's claim events then leave with its end's, in one Redis call
# instead of two (and the thread's wake-up no longer takes the GIL from the job while it
# runs). Throughput bench, 3 runs each: 317–330 → 332–353 jobs/s; Valkey CPU per job
# 0.35–0.38 → 0.28–0.33 ms. While hand-overs keep coming, the thread looks once per
# SOON_S instead of being woken for each (:meth:`Outbox._send_soon`): so SOON_S is also
# the longest a long job's claim events wait, and one look covers the claims of every job
# that started in it (at 250 jobs/s a pool child, 0.4 looks a job, against two wake-ups a
# job before: pool CPU per job -7 %, its context switches 15.5 → 10.5).
SOON_S = 0.01


class _Sent:
    """One staged event: its stream id once sent, or why it was not."""

    __slots__ = ("id", "error")

    def __init__(self) -> None:
        self.id: str | None = None
        self.error: Exception | None = None

    def check(self) -> None:
        """Raise unless it was sent (after a flush: another thread's call may have taken
        it, and failed)."""
        if self.id is None:
            raise self.error or redis.RedisError("not sent")


class Outbox:
    """What this process has yet to send to one Redis: job events, metric increments and
    log batches, sent in order by ONE script call per batch.

    Staging costs no round trip. :meth:`flush` sends everything staged so far; while one
    call is in flight, whatever other threads stage meanwhile waits and goes out in the
    next call, together (no added wait when nothing is in flight). One call at a time, in
    staging order: a job's events reach its stream and ``lb:events`` in the order they
    were staged, and an event never overtakes a log batch sent before it (or the other
    way round), in time stamp or in publish order.

    One per Redis client (:func:`outbox_of`): the events publisher and the metrics
    recorder of a process share it, so a transition's event and its counters are one
    round trip.
    """

    def __init__(self, client: redis.Redis) -> None:
        # Weak: the registry below maps the client to its outbox, and a value that held
        # its key would keep both alive for ever.
        self._client = weakref.ref(client)
        self._lock = threading.Lock()  # the staged operations
        self._sending = threading.Lock()  # one call in flight
        self._keys: list[str] = []
        self._args: list[str | int | float] = []
        self._sent: list[_Sent] = []  # the staged events, in order
        self._queued: list[_Sent] = []  # the staged task messages
        self._soon = threading.Event()  # wakes the outbox's thread (:meth:`flush_soon`)
        self._thread: tuple[int, threading.Thread] | None = None

    def event(self, job_id: str, type_: str, data: dict[str, Any] | str) -> tuple[str, _Sent]:
        """Stage one job event (``data``: a dict, or its JSON already); its time stamp, and
        where its id will be."""
        payload = data if isinstance(data, str) else json.dumps(data, default=str)
        sent = _Sent()
        with self._lock:
            ts = utcnow().isoformat()
            body = f'{{"job_id": {_quote(job_id)}, "type": {_quote(type_)}, "ts": "{ts}"'
            self._keys.append(job_events_key(job_id))
            self._args += ("e", type_, ts, payload, body, job_id)
            self._sent.append(sent)
        return ts, sent

    def message(self, key: str, raw: str) -> _Sent:
        """Stage one task message for the list ``key`` (a broker queue); its ``_Sent``
        gets an id (``"queued"``) once the call that pushed it returned."""
        sent = _Sent()
        with self._lock:
            self._keys.append(key)
            self._args += ("q", raw)
            self._queued.append(sent)
        return sent

    def count(self, fields: dict[str, float]) -> None:
        """Stage metric increments (``…|sum`` fields by a float, the others by an int)."""
        with self._lock:
            for key, n in fields.items():
                if key.endswith("|sum"):
                    self._args += ("f", key, repr(float(n)))
                else:
                    self._args += ("c", key, int(n))

    def flush(self, logs: Callable[[str], tuple[str, list[str | int]]] | None = None) -> None:
        """Send what is staged, and ``logs(ts)``'s batch after it (the log key and its
        ``l`` operation, built for the time stamp ``ts`` under the staging lock). Raises
        the Redis error when the call fails: staged events are then lost (logged), as a
        failed publish always was; a log batch is the caller's to send again."""
        with self._sending:
            with self._lock:
                keys, args, sent, queued = self._keys, self._args, self._sent, self._queued
                if logs is not None:
                    key, op = logs(utcnow().isoformat())
                    keys.append(key)
                    args += op
                if not args:
                    return
                self._keys, self._args, self._sent, self._queued = [], [], [], []
            try:
                ids = self._call([FIREHOSE_STREAM, METRICS_KEY, *keys], args)
            except Exception as exc:
                for s in (*sent, *queued):
                    s.error = exc
                if sent:
                    log.warning("%d job event(s) not published: %s", len(sent), exc)
                raise
            # (Still in the call's lock: a publish whose event this call took reads its id
            # once the lock is free.)
            for s, entry_id in zip(sent, ids, strict=False):
                s.id = entry_id
            for s in queued:
                s.id = "queued"

    def flush_soon(self) -> None:
        """Have what is staged sent by this outbox's own thread within ``SOON_S``, without
        waiting for it: in order with every other flush (one call at a time, in staging
        order), so a later :meth:`flush` or log batch still goes out after it — and takes
        what is staged with it, if it comes first. A failure is logged, as a failed
        :meth:`flush`'s events are."""
        with self._lock:
            if not self._args:
                return
            pid = os.getpid()
            if self._thread is None or self._thread[0] != pid:  # (threads die with a fork)
                thread = threading.Thread(target=self._send_soon, name="outbox", daemon=True)
                self._thread = (pid, thread)
                thread.start()
        self._soon.set()

    def _send_soon(self) -> None:
        """The outbox's thread: idle (waiting on ``_soon``) until something is handed
        over, then one look per SOON_S for as long as hand-overs keep coming. Between
        looks it sleeps rather than waits, so a hand-over then (``_soon.set()`` with no
        waiter) costs no wake-up: under a stream of short jobs the thread wakes once per
        SOON_S, not once or twice per job."""
        while True:
            self._soon.wait()
            self._soon.clear()  # (what was handed over goes with the first look)
            handed = True
            while handed:
                time.sleep(SOON_S)  # (a flush of the caller's meanwhile takes it all along)
                handed = self._soon.is_set()  # (a hand-over since the last look)
                self._soon.clear()  # (one set just now is taken by the flush below)
                try:
                    self.flush()
                except Exception as exc:  # (flush logged the events it lost)
                    log.debug("outbox: a flush failed: %s", exc)

    def _call(self, keys: list[str], ops: list[str | int | float]) -> list[str]:
        client = self._client()
        if client is None:
            raise redis.ConnectionError("the Redis client of this outbox is gone")
        argv = [EVENTS_CHANNEL, EVENTS_MAXLEN, FIREHOSE_MAXLEN, *ops]
        try:
            return client.evalsha(_SEND_SHA, len(keys), *keys, *argv)  # type: ignore[no-any-return]
        except redis.exceptions.NoScriptError:  # (a restarted or flushed Redis)
            client.script_load(_SEND_LUA)
            return client.evalsha(_SEND_SHA, len(keys), *keys, *argv)  # type: ignore[no-any-return]


_outboxes: weakref.WeakKeyDictionary[redis.Redis, Outbox] = weakref.WeakKeyDictionary()
_outboxes_lock = threading.Lock()


def outbox_of(client: redis.Redis) -> Outbox:
    """The process's outbox for ``client`` (made on first use; one per client)."""
    with _outboxes_lock:
        box = _outboxes.get(client)
        if box is None:
            box = _outboxes[client] = Outbox(client)
        return box


class LogLine(TypedDict):
    seq: int
    ts: str
    stream: str
    step: str | None
    line: str


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def decode_event(job_id: str, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as the event dict ``{id, job_id, type, ts, data}``."""
    return {
        "id": entry_id,
        "job_id": job_id,
        "type": fields["type"],
        "ts": fields["ts"],
        "data": json.loads(fields["data"]),
    }


def decode_log(entry_id: str, fields: dict[str, str]) -> LogLine:
    return {
        "seq": int(entry_id.split("-", 1)[0]),
        "ts": fields["ts"],
        "stream": fields["stream"],
        "step": fields.get("step") or None,
        "line": fields["line"],
    }


class Events:
    """Publishes job events and appends log lines (sync; used by workers and the API)."""

    def __init__(self, client: redis.Redis, *, logs_dir: Path, log_buffer_lines: int = 1000):
        self.r = client
        self.logs_dir = logs_dir
        self.log_buffer_lines = log_buffer_lines
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._outbox = outbox_of(client)

    # ---------------------------------------------------------- events

    # ``None`` in a subclass that sends nothing through Redis (orchestrator.testing's
    # MemoryEvents): :meth:`post` then publishes at once.
    _outbox: Outbox | None = None

    def publish(self, job_id: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        """Publish one event now (with whatever else is staged); the event with its id."""
        if self._outbox is None:
            raise NotImplementedError
        ts, sent = self._outbox.event(job_id, type_, data)
        self._outbox.flush()
        sent.check()
        return {"id": sent.id, "job_id": job_id, "type": type_, "ts": ts, "data": data}

    def post(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        """Stage one event: sent, in order, by the next :meth:`flush` (or log batch, or
        :meth:`publish`) of this process, with whatever else is staged by then."""
        if self._outbox is None:
            self.publish(job_id, type_, data)
        else:
            self._outbox.event(job_id, type_, data)

    def post_job(self, job_id: str, type_: str, job: Any) -> None:
        """:meth:`post` with the job (a :class:`~orchestrator.job.Job`) as the event's data:
        pydantic writes its JSON itself (half the time of ``json.dumps(job.public())``)."""
        if self._outbox is None:
            self.publish(job_id, type_, job.public())
        else:
            self._outbox.event(job_id, type_, job.model_dump_json())

    @property
    def sends_messages(self) -> bool:
        """Whether :meth:`stage_message` works (a real Redis behind an outbox)."""
        return self._outbox is not None

    def stage_message(self, key: str, raw: str) -> _Sent:
        """Stage a task message for the broker's list ``key``: pushed by the next flush,
        in the same call as the events staged around it (``_Sent.check`` after it)."""
        assert self._outbox is not None
        return self._outbox.message(key, raw)

    def flush(self) -> None:
        """Send what is staged (:meth:`post`, metric increments); raises a Redis error."""
        if self._outbox is not None:
            self._outbox.flush()

    def flush_soon(self) -> None:
        """Have what is staged sent without waiting for it (:meth:`Outbox.flush_soon`)."""
        if self._outbox is not None:
            self._outbox.flush_soon()

    def read_events(
        self, job_id: str, after: str | None = None, count: int = 1000
    ) -> list[dict[str, Any]]:
        start = f"({after}" if after else "-"
        entries = self.r.xrange(job_events_key(job_id), min=start, max="+", count=count)
        return [decode_event(job_id, eid, f) for eid, f in entries]

    # ---------------------------------------------------------- logs

    def log_path(self, job_id: str) -> Path:
        return self.logs_dir / f"{job_id}.jsonl"

    def _next_seq(self, job_id: str) -> int:
        if job_id not in self._seq:
            last = self.r.xrevrange(job_logs_key(job_id), count=1)
            seq = int(last[0][0].split("-", 1)[0]) if last else 0
            if not seq:  # the live buffer is gone: the stored log says how far we got
                seq = self._stored_lines(job_id)
            self._seq[job_id] = seq
        return self._seq[job_id]

    def append_logs(self, job_id: str, lines: list[tuple[str, str | None, str]]) -> int:
        """Append ``(stream, step, line)`` tuples; returns the last sequence number."""
        if not lines:
            return self._next_seq(job_id)
        with self._lock:
            first = self._next_seq(job_id) + 1
            seq = first + len(lines) - 1
            encoded: list[str] = []

            def batch(ts: str) -> tuple[str, list[str | int]]:
                # Each record is encoded once, for the stored log and the wake-up message
                # alike; the batch is one operation of the outbox's one script call (with
                # whatever events were staged before it, so none is overtaken by it).
                args: list[str | int] = ["l", self.log_buffer_lines, ts, first, len(lines)]
                dumps, qts = json.dumps, json.dumps(ts)
                heads: dict[tuple[str, str | None], str] = {}  # (stream, step) → JSON, once
                for n, (stream, step, line) in enumerate(lines, start=first):
                    args += (stream, step or "", line)
                    head = heads.get((stream, step))
                    if head is None:
                        head = heads[(stream, step)] = (
                            f'"ts": {qts}, "stream": {dumps(stream)}, "step": {dumps(step)}'
                        )
                    encoded.append(f'{{"seq": {n}, {head}, "line": {_quote(line)}}}')
                args.append(
                    f'{{"id": null, "job_id": {dumps(job_id)}, "type": "{EventType.log}", '
                    f'"ts": {qts}, "data": {{"seq": {seq}, "lines": [{", ".join(encoded)}]}}}}'
                )
                return job_logs_key(job_id), args

            # Redis first: when it is down the batch is retried whole, and the stored
            # log must not get its lines twice.
            assert self._outbox is not None
            self._outbox.flush(logs=batch)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with self.log_path(job_id).open("a", encoding="utf-8") as f:
                f.write("\n".join(encoded) + "\n")
            self._seq[job_id] = seq
            return seq

    def log_is_new(self, job_id: str) -> None:
        """The job's log has no line yet (its first attempt was just claimed here; only an
        attempt's runner writes its log): its first batch needs no look for where to go on."""
        with self._lock:
            self._seq.setdefault(job_id, 0)

    def forget(self, job_id: str) -> None:
        """Drop the cached sequence number once this process is done with a job."""
        self._seq.pop(job_id, None)

    def _stored_lines(self, job_id: str) -> int:
        try:
            with self.log_path(job_id).open(encoding="utf-8") as f:
                return sum(1 for raw in f if raw.strip())
        except FileNotFoundError:
            return 0

    def job_ids_with_data(self) -> set[str]:
        """Every job id that has a stream or flag in Redis or a stored log file here."""
        ids = set()
        for key in self.r.scan_iter(match=JOB_KEYS_PATTERN, count=1000):
            job_id = key[len(JOB_KEYS_PREFIX) :].rpartition(":")[0]
            if job_id:
                ids.add(job_id)
        ids.update(p.stem for p in self.logs_dir.glob("*.jsonl"))
        return ids

    def purge(self, job_id: str) -> None:
        """Remove a job's streams, flags and stored log."""
        self.r.delete(job_events_key(job_id), job_logs_key(job_id), cancel_key(job_id))
        self.log_path(job_id).unlink(missing_ok=True)
        self.forget(job_id)

    # ---------------------------------------------------------- cancel flag

    def flag_cancel(self, job_id: str, ttl_s: int = 86400) -> None:
        self.r.set(cancel_key(job_id), "1", ex=ttl_s)

    def cancel_flagged(self, job_id: str) -> bool:
        return bool(self.r.exists(cancel_key(job_id)))
