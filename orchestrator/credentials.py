"""Who may call the API: scoped tokens from the settings, and each agent's own key.

Tokens come from the operator (``LAUNCHBAY_TOKEN`` is admin; ``LAUNCHBAY_TOKENS`` adds
scoped ones). An agent enrolls with a token that has the ``agent`` scope and is given a key
of its own, ``lba.<agent id>.<secret>``; only the secret's SHA-256 is stored
(``orchestrator/agent_keys.py``). Every later agent call presents that key and acts as that
agent only.
With no token configured at all the API is open (loopback development), but agents still
get and need their own keys, so one agent can never speak for another.
"""

from __future__ import annotations

import enum
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


class Scope(enum.StrEnum):
    admin = "admin"  # everything
    submit = "submit"  # create, cancel and read jobs
    read = "read"  # read jobs, runs, streams, artifacts
    agent = "agent"  # enroll agents (POST /launcher/register) and nothing else
    metrics = "metrics"  # scrape /metrics


# What each scope grants, itself included.
GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.admin: frozenset(Scope),
    Scope.submit: frozenset({Scope.submit, Scope.read}),
    Scope.read: frozenset({Scope.read}),
    Scope.agent: frozenset({Scope.agent}),
    Scope.metrics: frozenset({Scope.metrics}),
}


@dataclass(frozen=True)
class Principal:
    """Who a request is: a named token with its scopes, or one agent (no API scopes)."""

    name: str
    scopes: frozenset[Scope] = frozenset()
    agent_id: str | None = None

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


ANONYMOUS_ADMIN = Principal("open", GRANTS[Scope.admin])


class TokenConfigError(ValueError):
    pass


def parse_tokens(admin: str | None, scoped: str | None) -> dict[str, Principal]:
    """The configured tokens: ``admin`` (``LAUNCHBAY_TOKEN``) and ``scoped``, a comma-
    separated ``scope[+scope]=secret`` list (``LAUNCHBAY_TOKENS``)."""
    out: dict[str, Principal] = {}
    if admin:
        out[admin] = Principal("admin", GRANTS[Scope.admin])
    for n, entry in enumerate(p.strip() for p in (scoped or "").split(",")):
        if not entry:
            continue
        names, sep, secret = entry.partition("=")
        if not sep or len(secret) < 16:
            raise TokenConfigError(
                f"LAUNCHBAY_TOKENS entry {n + 1}: write scope[+scope]=secret, "
                f"with a secret of at least 16 characters"
            )
        try:
            scopes = frozenset().union(*(GRANTS[Scope(s.strip())] for s in names.split("+")))
        except ValueError:
            raise TokenConfigError(
                f"LAUNCHBAY_TOKENS entry {n + 1}: scopes are {', '.join(Scope)}, got {names!r}"
            ) from None
        out[secret] = Principal(names.strip(), scopes)
    return out


def local_secret(home: Path, name: str) -> str:
    """A secret generated once for this Launchbay home (``home/secrets/<name>``, mode 0600 in
    a 0700 folder): the embedded Valkey's password, Flower's when no token is set."""
    folder = home / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(24)
    try:  # O_EXCL: of two processes starting together, one writes and both read it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def redacted(url: str) -> str:
    """``url`` with its password shown as ``***`` (for printing)."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"
