"""Idempotent submits (issue 14): ``POST /jobs`` with an ``Idempotency-Key`` makes at most
one job per key. The key's row (the body's SHA-256, the job id) is inserted before the job
is made, so of two requests racing with one key only one inserts; the other answers the
job the first made (same body) or a 409 (another body). Keys are kept
``LAUNCHBAY_IDEMPOTENCY_TTL_S``; the reconciler sweeps expired ones."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from orchestrator.errors import LaunchbayError
from orchestrator.job import Job
from orchestrator.schema import idempotency_keys
from orchestrator.store import new_job_id

if TYPE_CHECKING:
    from orchestrator.dispatch import Dispatcher

_WAIT_FOR_FIRST_S = 10.0  # how long a second request waits for the first one's job


class IdempotencyConflict(LaunchbayError):
    """An Idempotency-Key already used with a different body."""

    status_code = 409


def body_sha256(body: Any) -> str:
    """The hash an Idempotency-Key is kept with: of the JSON body, keys sorted."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def submit_once(d: Dispatcher, key: str, body: Any, spec: Any) -> tuple[Job, bool]:
    """``(job, created)``: the job this key made, or a new one; IdempotencyConflict when
    the key was used with another body."""
    store = d.store
    digest = body_sha256(body)
    ttl = timedelta(seconds=d.settings.idempotency_ttl_s)
    deadline = time.monotonic() + _WAIT_FOR_FIRST_S
    while True:
        now = store.now()
        job_id = new_job_id()
        try:
            with store.engine.begin() as c:
                c.execute(
                    idempotency_keys.delete().where(
                        idempotency_keys.c.key == key, idempotency_keys.c.expires_at < now
                    )
                )
                c.execute(
                    idempotency_keys.insert().values(
                        key=key,
                        body_sha256=digest,
                        job_id=job_id,
                        created_at=now,
                        expires_at=now + ttl,
                    )
                )
        except sa.exc.IntegrityError:
            with store.engine.connect() as c:
                row = c.execute(
                    sa.select(idempotency_keys).where(idempotency_keys.c.key == key)
                ).first()
            if row is None:
                continue  # expired and removed meanwhile: take it
            if row.body_sha256 != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used with a different body (for job {row.job_id})"
                ) from None
            job = store.find(row.job_id)
            if job is not None:
                return job, False
            if time.monotonic() > deadline:  # the first submit failed: the key is free again
                with store.engine.begin() as c:
                    c.execute(
                        idempotency_keys.delete().where(
                            idempotency_keys.c.key == key, idempotency_keys.c.job_id == row.job_id
                        )
                    )
                continue
            time.sleep(0.05)  # the first request is making the job right now
            continue
        try:
            return d.submit(spec, job_id=job_id), True
        except BaseException:
            with store.engine.begin() as c:
                c.execute(idempotency_keys.delete().where(idempotency_keys.c.job_id == job_id))
            raise
