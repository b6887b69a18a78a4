"""The HTTP channel: a remote agent's attempt reports through the ``/launcher`` API.

Bodies are the wire models of ``orchestrator/protocol.py``, the same ones the API
validates. Leases are renewed in bulk by the agent's heartbeat (one request for all its
jobs); what the heartbeat and each report's answer say about a job — cancel asked, no
longer held — is kept here, so ``renew`` and ``cancel_requested`` cost no request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.client import ApiError, Conflict, LaunchbayClient, NotFound, ServerUnreachable
from orchestrator.job import Job
from orchestrator.lifecycle import Renewal
from orchestrator.protocol import (
    Claim,
    EndIn,
    LogLineIn,
    LogsIn,
    ProgressIn,
    StartedIn,
    Verdict,
)
from workers.channels import LogBatch, Lost, Unreachable

log = logging.getLogger("launchbay.agent")

# How long a report that must arrive (started, the end) keeps being retried while the
# server is unreachable; past that the lease expires and the reconciler takes over.
_FINAL_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)
_CHUNK = 1 << 16


class HttpChannel:
    flush_s = 0.25
    cancel_poll_s = 0.05  # a set lookup: the heartbeat and report answers fill it

    def __init__(self, client: LaunchbayClient, runner_id: str, heartbeat_s: float) -> None:
        self.client = client
        self.runner_id = runner_id
        self.renew_s = heartbeat_s
        self._lock = threading.Lock()
        self._drain_deadline: float | None = None
        # What was heard is about one attempt: a job's next attempt may run on this agent
        # too, and must not inherit "lost" or "cancel" from the one before.
        self._running: dict[str, int] = {}  # job id → the attempt this agent runs of it
        self._cancel: set[tuple[str, int]] = set()
        self._lost: set[tuple[str, int]] = set()

    # -------------------------------------------------- what the heartbeat learnt

    def heard(self, cancel: Iterable[str], lost: Iterable[str]) -> None:
        """Record the heartbeat's answer for the attempts this agent runs; an answer about
        a job it runs no attempt of any more (it arrived late) is dropped."""
        with self._lock:
            self._cancel.update((j, self._running[j]) for j in cancel if j in self._running)
            self._lost.update((j, self._running[j]) for j in lost if j in self._running)

    def forget(self, job_id: str, attempt: int | None = None) -> None:
        """Drop what is known about the job's ``attempt`` (all of its attempts: ``None``)."""
        with self._lock:
            if attempt is None or self._running.get(job_id) == attempt:
                self._running.pop(job_id, None)
            for known in (self._cancel, self._lost):
                known.difference_update(
                    [k for k in known if k[0] == job_id and attempt in (None, k[1])]
                )

    def _key(self, job: Job) -> tuple[str, int]:
        """``(job id, attempt)``, noted as running here unless a later attempt is."""
        with self._lock:
            if job.attempt >= self._running.get(job.id, 0):
                self._running[job.id] = job.attempt
        return job.id, job.attempt

    # -------------------------------------------------- the channel

    def started(self, job: Job, handle: str | None = None) -> Job:
        body = StartedIn(**self._claim(job).model_dump(), handle=handle)
        answer = self._post(job, "started", body, final=True)
        return Job.model_validate(answer) if answer else job

    def logs(self, job: Job, lines: LogBatch) -> None:
        body = LogsIn(
            **self._claim(job).model_dump(),
            lines=[LogLineIn(stream=s, step=st, line=ln) for s, st, ln in lines],
        )
        self._note_cancel(job, self._post(job, "logs", body))

    def progress(self, job: Job, percent: float, message: str, *, last: bool = False) -> None:
        # (``last`` changes nothing here: the API stores what an agent reports as it comes.)
        body = ProgressIn(**self._claim(job).model_dump(), percent=percent, message=message)
        self._note_cancel(job, self._post(job, "progress", body))

    def renew(self, job: Job) -> Renewal:
        key = self._key(job)
        with self._lock:
            return Renewal(held=key not in self._lost, cancel=key in self._cancel)

    def cancel_requested(self, job: Job) -> bool:
        key = self._key(job)
        with self._lock:
            return key in self._cancel

    def drain(self, within_s: float) -> None:
        """The agent is draining: running attempts are handed back after ``within_s``."""
        deadline = time.monotonic() + within_s
        with self._lock:
            if self._drain_deadline is None or deadline < self._drain_deadline:
                self._drain_deadline = deadline

    def hand_back_due(self, job: Job) -> bool:
        with self._lock:
            return self._drain_deadline is not None and time.monotonic() >= self._drain_deadline

    def hand_back(self, job: Job) -> Job | None:
        try:
            answer = self._post(job, "release", self._claim(job), final=True)
        except (Lost, Unreachable) as exc:
            log.warning("job %s: could not hand it back (%s); its lease will expire", job.id, exc)
            return None
        finally:
            self.forget(job.id, job.attempt)
        return Job.model_validate(answer) if answer else None

    def upload_artifact(self, job: Job, name: str, path: Path) -> None:
        self.client.request(
            "POST",
            f"/launcher/jobs/{job.id}/artifacts",
            params={"launcher_id": self.runner_id, "attempt": job.attempt, "name": name},
            content=_chunks(path),
            headers={"content-type": "application/octet-stream"},
            timeout=300,
        )

    def together(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # (each report is its own request)

    def finish(self, job: Job, verdict: Verdict) -> Job | None:
        body = EndIn(**self._claim(job).model_dump(), **verdict.model_dump())
        try:
            answer = self._post(job, "end", body, final=True)
        except Lost:
            return None
        except Unreachable as exc:
            log.error("job %s: could not report its end (%s); its lease will expire", job.id, exc)
            return None
        finally:
            self.forget(job.id, job.attempt)
        return Job.model_validate(answer) if answer else None

    # -------------------------------------------------- HTTP

    def _claim(self, job: Job) -> Claim:
        return Claim(launcher_id=self.runner_id, attempt=job.attempt)

    def _note_cancel(self, job: Job, answer: dict[str, Any] | None) -> None:
        if answer and answer.get("cancel"):
            key = self._key(job)
            with self._lock:
                self._cancel.add(key)

    def _post(
        self, job: Job, what: str, body: BaseModel, *, final: bool = False
    ) -> dict[str, Any] | None:
        """POST ``/launcher/jobs/{id}/{what}``. Raises :class:`Lost` when the job is no
        longer ours, :class:`Unreachable` when the server cannot take it (after retries,
        for a ``final`` report)."""
        delays: Iterator[float] = iter(_FINAL_RETRY_DELAYS if final else ())
        while True:
            try:
                return self.client.request_json(  # type: ignore[no-any-return]
                    "POST", f"/launcher/jobs/{job.id}/{what}", json=body.model_dump(mode="json")
                )
            except (Conflict, NotFound) as exc:
                log.warning("job %s: %s refused: %s", job.id, what, exc)
                key = self._key(job)
                with self._lock:
                    self._lost.add(key)
                raise Lost(str(exc)) from exc
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise Unreachable(str(exc)) from exc
                log.warning("job %s: %s failed (%s); retrying in %g s", job.id, what, exc, delay)
                time.sleep(delay)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
