"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, WebSocket, status

from api.state import AppState
from orchestrator.dispatch import Dispatcher
from orchestrator.settings import Settings
from orchestrator.store import JobStore


def get_state(request: Request) -> AppState:
    return request.app.state.lb  # type: ignore[no-any-return]


State = Annotated[AppState, Depends(get_state)]


def get_store(state: State) -> JobStore:
    return state.store


def get_dispatcher(state: State) -> Dispatcher:
    return state.dispatcher


def get_settings(state: State) -> Settings:
    return state.settings


# Paging: a page of at most 1000 items, after at most a billion (the store takes any
# offset up to 2**63 - 1; past that it could not answer, and no listing is that long).
MAX_OFFSET = 1_000_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]

Store = Annotated[JobStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def token_ok(expected: str | None, given: str | None) -> bool:
    return expected is None or (given is not None and secrets.compare_digest(expected, given))


def require_token(request: Request) -> None:
    """Bearer token check when ``LAUNCHBAY_TOKEN`` is set (``?token=`` also accepted)."""
    expected = request.app.state.lb.settings.token
    header = request.headers.get("authorization", "")
    given = (
        header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token")
    )
    if not token_ok(expected, given):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def ws_token_ok(websocket: WebSocket) -> bool:
    expected = websocket.app.state.lb.settings.token
    header = websocket.headers.get("authorization", "")
    given = (
        header[7:] if header.lower().startswith("bearer ") else websocket.query_params.get("token")
    )
    return token_ok(expected, given)


Auth = Depends(require_token)
