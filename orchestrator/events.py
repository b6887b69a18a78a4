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

import json
import threading
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote  # (json.dumps of a str, in C)
from pathlib import Path
from typing import Any, TypedDict

import redis

from orchestrator.errors import ParamError
from orchestrator.job import EventType, as_utc, utcnow

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


RUNNERS_PATTERN = "lb:runners:*"

# KEYS[1] the job's event stream, KEYS[2] the firehose; ARGV: maxlen, type, ts, data (JSON),
# channel, the published message's JSON without its closing brace (id, gid and data are
# appended here), job id, firehose maxlen. ``gid`` is the event's id in the firehose.
_PUBLISH_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'type', ARGV[2], 'ts', ARGV[3], 'data', ARGV[4])
local gid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'job_id', ARGV[7],
                       'id', id, 'type', ARGV[2], 'ts', ARGV[3], 'data', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ', "id": "' .. id .. '", "gid": "' .. gid
           .. '", "data": ' .. ARGV[4] .. '}')
return id
"""


# KEYS[1] the job's log stream; ARGV: maxlen, ts, the first line's number, then a
# (stream, step, line) triple per line. Ids are line numbers: ``{seq}-0``.
_APPEND_LOGS_LUA = """
local seq = tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  redis.call('XADD', KEYS[1], string.format('%d-0', seq), 'ts', ARGV[2],
             'stream', ARGV[i], 'step', ARGV[i + 1], 'line', ARGV[i + 2])
  seq = seq + 1
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
return seq - 1
"""


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
        self._publish_script = client.register_script(_PUBLISH_LUA)
        self._append_script = client.register_script(_APPEND_LOGS_LUA)

    # ---------------------------------------------------------- events

    def publish(self, job_id: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        # Under the log lock: an event (progress) never overtakes log lines that another
        # thread of this process is appending, in time stamp or in publish order.
        with self._lock:
            ts = utcnow().isoformat()
            payload = json.dumps(data, default=str)
            body = json.dumps({"job_id": job_id, "type": type_, "ts": ts}, default=str)
            # One round trip: the script appends to the stream and publishes the event with
            # the stream id it got (the id is only known inside Redis).
            entry_id = self._publish_script(
                keys=[job_events_key(job_id), FIREHOSE_STREAM],
                args=[
                    EVENTS_MAXLEN,
                    type_,
                    ts,
                    payload,
                    EVENTS_CHANNEL,
                    body[:-1],
                    job_id,
                    FIREHOSE_MAXLEN,
                ],
            )
        return {"id": entry_id, "job_id": job_id, "type": type_, "ts": ts, "data": data}

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
            ts = utcnow().isoformat()
            # Each record is encoded once, for the stored log and the wake-up message alike;
            # the whole batch is one script call (packing one XADD per line in the client
            # cost more than Redis spent adding them).
            args: list[str | int] = [self.log_buffer_lines, ts, first]
            encoded: list[str] = []
            dumps, qts = json.dumps, json.dumps(ts)
            heads: dict[tuple[str, str | None], str] = {}  # (stream, step) → its JSON, once
            for seq, (stream, step, line) in enumerate(lines, start=first):
                args += (stream, step or "", line)
                head = heads.get((stream, step))
                if head is None:
                    head = heads[(stream, step)] = (
                        f'"ts": {qts}, "stream": {dumps(stream)}, "step": {dumps(step)}'
                    )
                encoded.append(f'{{"seq": {seq}, {head}, "line": {_quote(line)}}}')
            seq = first + len(lines) - 1
            pipe = self.r.pipeline(transaction=False)
            self._append_script(keys=[job_logs_key(job_id)], args=args, client=pipe)
            pipe.publish(
                EVENTS_CHANNEL,
                f'{{"id": null, "job_id": {dumps(job_id)}, "type": "{EventType.log}", '
                f'"ts": {qts}, "data": {{"seq": {seq}, "lines": [{", ".join(encoded)}]}}}}',
            )
            # Redis first: when it is down the batch is retried whole, and the stored
            # log must not get its lines twice.
            pipe.execute()
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with self.log_path(job_id).open("a", encoding="utf-8") as f:
                f.write("\n".join(encoded) + "\n")
            self._seq[job_id] = seq
            return seq

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
