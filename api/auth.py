"""Authentication and authorization of HTTP and WebSocket calls (the rules are in
``orchestrator/credentials.py``; the README's "Security model" states them).

Every API route is behind :data:`Auth`: a safe method (GET, HEAD) needs the ``read``
scope, anything else ``submit``, unless the route names its own scope with
:func:`needs`. A browser's cross-site request that acts is refused by its ``Origin`` (the
API's own origin and ``LAUNCHBAY_ALLOWED_ORIGINS`` are allowed). Agent routes take only an
agent's own key (:data:`AgentAuth`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, WebSocket, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.state import AppState
from orchestrator.agent_keys import AGENT_KEY_PREFIX
from orchestrator.credentials import ANONYMOUS_ADMIN, Principal, Scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
F = TypeVar("F", bound=Callable[..., Any])


def needs(scope: Scope) -> Callable[[F], F]:
    """Mark a route's endpoint as needing ``scope`` instead of the method's default."""

    def mark(fn: F) -> F:
        fn.required_scope = scope  # type: ignore[attr-defined]
        return fn

    return mark


def _given(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return conn.query_params.get("token") or None


def _unauthorized(detail: str = "missing or wrong bearer token") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def principal_of(state: AppState, given: str | None) -> Principal | None:
    """Who ``given`` is: a configured token, an agent's key, the open API's anonymous admin
    (no token configured and none given), or None (a wrong token)."""
    if given:
        for token, who in state.tokens.items():
            if secrets.compare_digest(token.encode(), given.encode()):
                return who
        agent_id = state.agent_keys.verify(given)
        if agent_id is not None:
            return Principal(f"agent {agent_id}", frozenset(), agent_id)
    return None if state.tokens else ANONYMOUS_ADMIN


def _configured_admin(who: Principal) -> bool:
    """An admin token the operator set (the open API's anonymous admin is not one: agents'
    routes need a key even there)."""
    return who.agent_id is None and who is not ANONYMOUS_ADMIN and who.may(Scope.admin)


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    """No ``Origin`` (not a browser), the API's own origin, or one the operator allowed."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()


async def authorize(request: Request) -> Principal:
    """The router-wide check: who is calling, may they, from where. (A coroutine: only an
    agent's key needs the store, and only that goes to a thread; every other call is
    checked on the loop, without a thread hop per request.)"""
    state: AppState = request.app.state.lb
    given = _given(request)
    if given and given.startswith(AGENT_KEY_PREFIX):
        who = await run_in_threadpool(principal_of, state, given)
    else:
        who = principal_of(state, given)
    if who is None:
        raise _unauthorized()
    endpoint = request.scope.get("endpoint")
    need: Scope = getattr(endpoint, "required_scope", None) or (
        Scope.read if request.method in SAFE_METHODS else Scope.submit
    )
    if not who.may(need):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this token lacks the '{need}' scope this route needs"
        )
    if request.method not in SAFE_METHODS and not origin_allowed(
        request, state.settings.allowed_origins
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"cross-site request from {request.headers.get('origin')!r} refused "
            f"(allow it with LAUNCHBAY_ALLOWED_ORIGINS)",
        )
    request.state.principal = who
    return who


Auth = Depends(authorize)


def agent_caller(request: Request) -> Principal:
    """An agent route's caller: the agent whose key is presented (or an admin)."""
    who = principal_of(request.app.state.lb, _given(request))
    if who is None or (who.agent_id is None and not _configured_admin(who)):
        raise _unauthorized("an agent's own key is required (register to get one)")
    return who


AgentCaller = Annotated[Principal, Depends(agent_caller)]


def enrolling_caller(request: Request) -> Principal:
    """Who may register an agent: a token with the ``agent`` scope, an admin, the open API,
    or an agent registering itself again with its own key."""
    state: AppState = request.app.state.lb
    who = principal_of(state, _given(request))
    if who is None:
        raise _unauthorized()
    if who.agent_id is None and not who.may(Scope.agent):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "registering an agent needs a token with the 'agent' scope"
        )
    return who


EnrollingCaller = Annotated[Principal, Depends(enrolling_caller)]


def acting_as(who: Principal, launcher_id: str) -> None:
    """403 unless ``who`` is agent ``launcher_id`` (or an admin)."""
    if who.agent_id == launcher_id or _configured_admin(who):
        return
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"this key belongs to {who.agent_id or who.name}, not to {launcher_id}",
    )


def websocket_principal(websocket: WebSocket) -> tuple[Principal | None, str]:
    """Who opens ``websocket`` and, if refused, why: the token and the ``Origin``."""
    state: AppState = websocket.app.state.lb
    if not origin_allowed(websocket, state.settings.allowed_origins):
        return None, "cross-site WebSocket refused (allow its origin: LAUNCHBAY_ALLOWED_ORIGINS)"
    who = principal_of(state, _given(websocket))
    if who is None or not who.may(Scope.read):
        return None, "missing or wrong bearer token"
    return who, ""
