"""FastAPI dependencies as ``Annotated`` aliases. (Coroutines: they only read attributes,
and a plain function would cost a thread hop per request.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from api.state import AppState
from orchestrator.dispatch import Dispatcher
from orchestrator.settings import Settings
from orchestrator.store import JobStore


async def get_state(request: Request) -> AppState:
    return request.app.state.lb  # type: ignore[no-any-return]


State = Annotated[AppState, Depends(get_state)]


async def get_store(state: State) -> JobStore:
    return state.store


async def get_dispatcher(state: State) -> Dispatcher:
    return state.dispatcher


async def get_settings(state: State) -> Settings:
    return state.settings


# Paging: a page of at most 1000 items, after at most a billion (the store takes any
# offset up to 2**63 - 1; past that it could not answer, and no listing is that long).
MAX_OFFSET = 1_000_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]

Store = Annotated[JobStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
