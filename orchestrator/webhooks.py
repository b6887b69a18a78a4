"""Webhooks: which job events go to which URL, how they are signed, and the delivery log.

A delivery's body is JSON; it is signed with HMAC-SHA256 over ``"{timestamp}.{body}"``
with the webhook's secret, and sent with::

    X-Launchbay-Event: succeeded
    X-Launchbay-Delivery: <delivery id>
    X-Launchbay-Timestamp: <Unix seconds>
    X-Launchbay-Signature: sha256=<hex digest>

A receiver recomputes the digest with :func:`verify` (and refuses old timestamps, so a
captured delivery cannot be replayed later). Sending is :mod:`orchestrator.webhook_delivery`.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import time
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import LaunchbayError
from orchestrator.job import EventType, utcnow
from orchestrator.schema import webhook_deliveries, webhooks

# The events a webhook may ask for: every job event but log lines and the API's own resync.
WEBHOOK_EVENTS: tuple[str, ...] = tuple(
    e.value for e in EventType if e not in (EventType.log, EventType.resync)
)
DEFAULT_EVENTS: tuple[str, ...] = ("succeeded", "failed", "cancelled", "timed_out")
SIGNATURE_TOLERANCE_S = 300


class WebhookNotFound(LaunchbayError):
    """No webhook with that id."""

    status_code = 404

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"webhook {webhook_id} not found")


# ---------------------------------------------------------------- signatures


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``"{timestamp}.{body}"`` with ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` is ours for this body and time, and the time is recent."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


# ---------------------------------------------------------------- models


class WebhookSpec(BaseModel):
    """What a client registers."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2000,
        pattern=r"^https?://[^/?#\s]+",
        description="Where to POST: an http or https URL.",
    )
    events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description=f"Event types to send, of: {', '.join(WEBHOOK_EVENTS)}.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="Only jobs carrying all these labels (empty: every job).",
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        description="The signing secret; generated (and shown once) when omitted.",
    )
    description: str = Field(default="", max_length=200)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(WEBHOOK_EVENTS))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; use {', '.join(WEBHOOK_EVENTS)}")
        return sorted(set(v), key=WEBHOOK_EVENTS.index)


class Webhook(BaseModel):
    id: str
    url: str
    events: list[str]
    labels: dict[str, str]
    description: str = ""
    active: bool = True
    created_at: datetime
    secret: str | None = Field(default=None, description="Only in the answer that created it.")

    def wants(self, event_type: str, labels: dict[str, str]) -> bool:
        return event_type in self.events and all(labels.get(k) == v for k, v in self.labels.items())


class Delivery(BaseModel):
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    job_id: str
    status: str = Field(description="pending, delivered or failed (tries spent).")
    tries: int
    created_at: datetime
    last_try_at: datetime | None = None
    response_status: int | None = None
    response_body: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- store


class WebhookStore:
    """Webhooks and deliveries in the job store's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, spec: WebhookSpec) -> Webhook:
        secret = spec.secret or secrets.token_urlsafe(32)
        row = {
            "id": uuid.uuid4().hex,
            "url": spec.url,
            "secret": secret,
            "events": spec.events,
            "labels": spec.labels,
            "description": spec.description,
            "active": True,
            "created_at": utcnow(),
        }
        with self.engine.begin() as c:
            c.execute(webhooks.insert().values(**row))
        return Webhook.model_validate(row)  # with its secret: the one time a client sees it

    def list(self, *, with_secrets: bool = False) -> list[Webhook]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(webhooks).order_by(webhooks.c.created_at)).all()
        return [_webhook(r, with_secrets) for r in rows]

    def get(self, webhook_id: str) -> Webhook:
        with self.engine.connect() as c:
            row = c.execute(sa.select(webhooks).where(webhooks.c.id == webhook_id)).first()
        if row is None:
            raise WebhookNotFound(webhook_id)
        return _webhook(row, False)

    def secret_of(self, webhook_id: str) -> str:
        with self.engine.connect() as c:
            secret = c.execute(
                sa.select(webhooks.c.secret).where(webhooks.c.id == webhook_id)
            ).scalar()
        if secret is None:
            raise WebhookNotFound(webhook_id)
        return str(secret)

    def delete(self, webhook_id: str) -> None:
        with self.engine.begin() as c:
            gone = c.execute(webhooks.delete().where(webhooks.c.id == webhook_id)).rowcount
            c.execute(
                webhook_deliveries.delete().where(webhook_deliveries.c.webhook_id == webhook_id)
            )
        if not gone:
            raise WebhookNotFound(webhook_id)

    # ------------------------------------------------------------ deliveries

    def add_delivery(
        self, webhook_id: str, event_id: str, event_type: str, job_id: str
    ) -> str | None:
        """A new pending delivery's id; None when this event was already taken for it."""
        delivery_id = uuid.uuid4().hex
        try:
            with self.engine.begin() as c:
                c.execute(
                    webhook_deliveries.insert().values(
                        id=delivery_id,
                        webhook_id=webhook_id,
                        event_id=event_id,
                        event_type=event_type,
                        job_id=job_id,
                        status="pending",
                        tries=0,
                        created_at=utcnow(),
                    )
                )
        except sa.exc.IntegrityError:
            return None
        return delivery_id

    def record_try(
        self,
        delivery_id: str,
        *,
        status: str,
        response_status: int | None,
        response_body: str | None,
        error: str | None,
    ) -> None:
        with self.engine.begin() as c:
            c.execute(
                webhook_deliveries.update()
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    status=status,
                    tries=webhook_deliveries.c.tries + 1,
                    last_try_at=utcnow(),
                    response_status=response_status,
                    response_body=response_body,
                    error=error,
                )
            )

    def take_stale(self, older_than: datetime, limit: int = 100) -> builtins.list[Delivery]:
        """Pending deliveries nobody touched since ``older_than`` (their sender died),
        each taken with a compare-and-set on its last try time so one process resends it."""
        d = webhook_deliveries
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(d)
                .where(
                    d.c.status == "pending",
                    sa.func.coalesce(d.c.last_try_at, d.c.created_at) < older_than,
                )
                .limit(limit)
            ).all()
        taken = []
        for row in rows:
            with self.engine.begin() as c:
                won = c.execute(
                    d.update()
                    .where(d.c.id == row.id, d.c.status == "pending")
                    .where(
                        d.c.last_try_at.is_(None)
                        if row.last_try_at is None
                        else d.c.last_try_at == row.last_try_at
                    )
                    .values(last_try_at=utcnow())
                ).rowcount
            if won:
                taken.append(Delivery.model_validate(row._mapping))
        return taken

    def deliveries(
        self, webhook_id: str, *, limit: int = 100, offset: int = 0
    ) -> builtins.list[Delivery]:
        self.get(webhook_id)
        d = webhook_deliveries
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(d)
                .where(d.c.webhook_id == webhook_id)
                .order_by(d.c.created_at.desc(), d.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [Delivery.model_validate(r._mapping) for r in rows]

    def prune(self, before: datetime) -> int:
        """Forget deliveries made before ``before`` (retention); how many."""
        d = webhook_deliveries
        with self.engine.begin() as c:
            return int(c.execute(d.delete().where(d.c.created_at < before)).rowcount or 0)

    def delivery(self, delivery_id: str) -> Delivery | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
            ).first()
        return Delivery.model_validate(row._mapping) if row else None


def _webhook(row: Any, with_secret: bool) -> Webhook:
    m = dict(row._mapping)
    if not with_secret:
        m["secret"] = None
    return Webhook.model_validate(m)
