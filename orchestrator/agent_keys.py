"""Agents' own keys, in the job store's database (table ``agent_keys``): see
``orchestrator/credentials.py`` for who may do what."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.job import utcnow
from orchestrator.schema import agent_keys

AGENT_KEY_PREFIX = "lba."


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AgentKeys:
    """Agents' own keys in the job store's database (table ``agent_keys``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def issue(self, agent_id: str) -> str:
        """A new key for ``agent_id`` (any earlier key of that id stops working)."""
        secret = secrets.token_urlsafe(32)
        row = {"agent_id": agent_id, "secret_sha256": _digest(secret), "created_at": utcnow()}
        with self.engine.begin() as c:
            c.execute(sa.delete(agent_keys).where(agent_keys.c.agent_id == agent_id))
            c.execute(sa.insert(agent_keys).values(**row))
        return f"{AGENT_KEY_PREFIX}{agent_id}.{secret}"

    def exists(self, agent_id: str) -> bool:
        with self.engine.connect() as c:
            q = sa.select(agent_keys.c.agent_id).where(agent_keys.c.agent_id == agent_id)
            return c.execute(q).first() is not None

    def verify(self, key: str) -> str | None:
        """The agent id ``key`` belongs to, or None."""
        if not key.startswith(AGENT_KEY_PREFIX):
            return None
        agent_id, _, secret = key[len(AGENT_KEY_PREFIX) :].partition(".")
        if not agent_id or not secret or len(key) > 256:
            return None
        with self.engine.connect() as c:
            q = sa.select(agent_keys.c.secret_sha256).where(agent_keys.c.agent_id == agent_id)
            stored = c.execute(q).scalar()
        if stored is None or not hmac.compare_digest(stored, _digest(secret)):
            return None
        return agent_id

    def revoke(self, agent_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(agent_keys).where(agent_keys.c.agent_id == agent_id))
