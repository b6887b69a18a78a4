"""Sending webhooks, off the job path.

Nothing on the job path knows about webhooks: every job event already goes to the
firehose stream (``lb:firehose``, appended by the same script that publishes it; see
:mod:`orchestrator.events`). A :class:`Deliverer` — a thread of each API process — reads
that stream through a Redis consumer group (``webhooks``), so each event is handled by one
process, and a process that dies leaves its unacknowledged entries for another to claim.

For each event and each webhook that wants it, a delivery row is written (unique per
webhook and event: a re-read never sends twice) and then acknowledged; the send runs on a
small thread pool, retried with exponential backoff and jitter (tenacity) until a 2xx or
``webhook_max_tries``. Every try records the last response. A pending delivery whose
sender died is taken again by the sweep (a compare-and-set on its last try time).

While no webhook is active (the common case) the reader reads nothing: twice a second it
looks whether the set changed and moves the group to the stream's end (:func:`skip_to_end`),
so a webhook made later gets the events from about then (at most half a second before it
was made), not a backlog of every event since the server started.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import redis
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from orchestrator.events import FIREHOSE_STREAM
from orchestrator.job import utcnow
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.webhooks import Webhook, WebhookStore, sign

log = logging.getLogger(__name__)

GROUP = "webhooks"
_BODY_KEPT = 2000  # characters of a receiver's answer kept in the delivery log
_SWEEP_S = 15.0
_STALE_S = 120.0  # a pending delivery untouched this long lost its sender
_CLAIM_IDLE_MS = 60_000  # an unacknowledged entry this old lost its consumer
_IDLE_S = 0.5  # with no active webhook: how often to look for one
_UNREAD = object()
HOOKS_VERSION = "lb:webhooks:version"  # bumped whenever a webhook is made or removed

# KEYS[1] the firehose, KEYS[2] the hooks version; ARGV[1] the group, ARGV[2] the version
# the caller saw ('' for none). The group skips to the stream's end only if the version is
# still the one the caller saw: a process that has not yet noticed a new webhook must not
# skip events that another process, which has, is to deliver.
_SKIP_TO_END = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], '$')
return 1
"""


def hooks_changed(r: redis.Redis) -> None:
    r.incr(HOOKS_VERSION)


def skip_to_end(r: redis.Redis, seen_version: str | bytes | None) -> bool:
    """Move the group past every event in the firehose, unless the webhooks changed since
    ``seen_version`` (the :data:`HOOKS_VERSION` read while none was active); whether it
    moved. Raises the ``NOGROUP``/missing-key error when there is no group yet."""
    script = r.register_script(_SKIP_TO_END)  # (hashed here; EVALSHA, loaded on a miss)
    moved = script(keys=[FIREHOSE_STREAM, HOOKS_VERSION], args=[GROUP, seen_version or ""])
    return bool(moved)


def _no_group(exc: redis.ResponseError) -> bool:
    """Whether ``exc`` says the stream or its group is missing (a flush, or never made)."""
    text = str(exc)
    return "NOGROUP" in text or "requires the key to exist" in text


class _TryAgain(Exception):
    pass


def ensure_group(r: redis.Redis) -> None:
    """Create the consumer group at the stream's end (events before it are not sent)."""
    try:
        r.xgroup_create(FIREHOSE_STREAM, GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Deliverer:
    """One process's share of webhook delivery: a reader thread and a pool of senders."""

    def __init__(
        self,
        settings: Settings,
        r: redis.Redis,
        hooks: WebhookStore,
        jobs: JobStore,
        *,
        consumer: str,
        senders: int = 4,
    ) -> None:
        self.settings = settings
        self.r = r
        self.hooks = hooks
        self.jobs = jobs
        self.consumer = consumer
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="launchbay-webhook")
        self._thread: threading.Thread | None = None
        self._labels: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._hooks: list[Webhook] = []
        self._hooks_version: Any = _UNREAD
        self._http = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def start(self) -> None:
        ensure_group(self.r)
        self._thread = threading.Thread(target=self._run, name="launchbay-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # ------------------------------------------------------------ reading

    def _run(self) -> None:
        last_sweep = 0.0
        fresh = False  # whether the last batch read the hook set, after its read
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_sweep > _SWEEP_S:
                    last_sweep = time.monotonic()
                    self._sweep()
                hooks = self._hooks if fresh else self._active_hooks()
                if hooks:
                    fresh = self._read()
                else:  # nobody to send to: read nothing, skip what went by
                    fresh = False
                    skip_to_end(self.r, self._hooks_version)
                    self._stop.wait(_IDLE_S)
            except redis.ResponseError as exc:
                fresh = False
                if _no_group(exc):  # the stream was deleted (a flush): start again
                    ensure_group(self.r)
                else:
                    log.exception("webhook reader failed; retrying")
                    self._stop.wait(1)
            except Exception:
                fresh = False
                log.exception("webhook reader failed; retrying")
                self._stop.wait(1)

    def _read(self) -> bool:
        """Read and handle one batch; whether there was one (its handling read the hooks)."""
        got = self.r.xreadgroup(GROUP, self.consumer, {FIREHOSE_STREAM: ">"}, count=100, block=500)
        handled = False
        for _stream, entries in got or []:
            if entries:
                self._handle(entries)
                handled = True
        return handled

    def _active_hooks(self) -> list[Webhook]:
        """The active webhooks, read from the store again only when the set changed (one
        Redis GET of :data:`HOOKS_VERSION`, bumped by every change): the reader sees every
        job event, and a batch must not cost a store read."""
        version = self.r.get(HOOKS_VERSION)
        if version != self._hooks_version:
            self._hooks = [h for h in self.hooks.list(with_secrets=True) if h.active]
            self._hooks_version = version
        return self._hooks

    def _handle(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        if not entries:
            return
        hooks = self._active_hooks()
        if hooks:
            for gid, fields in entries:
                self._fan_out(hooks, gid, fields)
        self.r.xack(FIREHOSE_STREAM, GROUP, *(gid for gid, _ in entries))  # one call

    def _fan_out(self, hooks: list[Webhook], gid: str, fields: dict[str, str]) -> None:
        data = json.loads(fields["data"])
        job_id, event_type = fields["job_id"], fields["type"]
        labels = self._labels_of(job_id, data)
        for hook in hooks:
            if not hook.wants(event_type, labels):
                continue
            delivery_id = self.hooks.add_delivery(hook.id, gid, event_type, job_id)
            if delivery_id is not None:
                body = _body(delivery_id, hook.id, gid, fields, data)
                self._pool.submit(self._send, delivery_id, hook, event_type, body)

    def _labels_of(self, job_id: str, data: dict[str, Any]) -> dict[str, str]:
        """A job's labels: from the event when it carries the job, else remembered."""
        spec = data.get("spec")
        if isinstance(spec, dict):
            labels = dict(spec.get("labels") or {})
            self._labels[job_id] = labels
            self._labels.move_to_end(job_id)
            if len(self._labels) > 10000:
                self._labels.popitem(last=False)
            return labels
        if job_id in self._labels:
            return self._labels[job_id]
        job = self.jobs.find(job_id)
        return dict(job.spec.labels) if job is not None else {}

    def _sweep(self) -> None:
        """Claim entries another consumer read and never acknowledged; resend deliveries
        whose sender died."""
        claimed = self.r.xautoclaim(
            FIREHOSE_STREAM, GROUP, self.consumer, min_idle_time=_CLAIM_IDLE_MS, count=100
        )
        self._handle(claimed[1] if len(claimed) > 1 else [])
        stale = self.hooks.take_stale(utcnow() - timedelta(seconds=_STALE_S))
        if not stale:
            return
        hooks = {h.id: h for h in self.hooks.list(with_secrets=True)}
        for d in stale:
            hook = hooks.get(d.webhook_id)
            if hook is None:
                continue
            found = self.r.xrange(FIREHOSE_STREAM, min=d.event_id, max=d.event_id, count=1)
            if found:
                fields = found[0][1]
            else:  # trimmed from the stream: send the job as it stands
                job = self.jobs.find(d.job_id)
                if job is None:
                    continue
                fields = {
                    "job_id": d.job_id,
                    "type": d.event_type,
                    "ts": utcnow().isoformat(),
                    "data": json.dumps(job.public()),
                }
            body = _body(d.id, hook.id, d.event_id, fields, json.loads(fields["data"]))
            self._pool.submit(self._send, d.id, hook, d.event_type, body)

    # ------------------------------------------------------------ sending

    def _send(self, delivery_id: str, hook: Webhook, event_type: str, body: bytes) -> None:
        tries = self.settings.webhook_max_tries
        retrying = Retrying(
            stop=stop_after_attempt(tries) | stop_when_event_set(self._stop),
            wait=wait_exponential_jitter(
                initial=self.settings.webhook_backoff_s,
                max=self.settings.webhook_max_backoff_s,
                jitter=self.settings.webhook_backoff_s,
            ),
            retry=retry_if_exception_type(_TryAgain),
            sleep=self._sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    last = attempt.retry_state.attempt_number >= tries
                    self._try(delivery_id, hook, event_type, body, last=last)
        except RetryError:
            pass  # the delivery log holds the last answer
        except Exception:
            log.exception("webhook delivery %s failed", delivery_id)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # (a stop cuts the backoff short)

    def _try(
        self, delivery_id: str, hook: Webhook, event_type: str, body: bytes, *, last: bool
    ) -> None:
        assert hook.secret is not None
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "launchbay-webhooks",
            "X-Launchbay-Event": event_type,
            "X-Launchbay-Delivery": delivery_id,
            "X-Launchbay-Timestamp": ts,
            "X-Launchbay-Signature": sign(hook.secret, ts, body),
        }
        code: int | None = None
        text: str | None = None
        error: str | None = None
        try:
            resp = self._http.post(hook.url, content=body, headers=headers)
            code, text = resp.status_code, resp.text[:_BODY_KEPT]
            ok = 200 <= code < 300
            if not ok:
                error = f"answered {code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"[:_BODY_KEPT]
        status = "delivered" if ok else ("failed" if last else "pending")
        self.hooks.record_try(
            delivery_id, status=status, response_status=code, response_body=text, error=error
        )
        if not ok:
            raise _TryAgain(error)


def _body(delivery_id: str, webhook_id: str, gid: str, fields: dict[str, str], data: Any) -> bytes:
    return json.dumps(
        {
            "delivery_id": delivery_id,
            "webhook_id": webhook_id,
            "event_id": gid,
            "event": fields["type"],
            "job_id": fields["job_id"],
            "ts": fields["ts"],
            "data": data,
        },
        separators=(",", ":"),
    ).encode()
