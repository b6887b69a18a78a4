"""FastAPI dependencies as ``Annotated`` aliases. (Coroutines: they only read attributes,
and a plain function would cost a thread hop per request.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from api.state import AppState
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import ParamError
from orchestrator.job import MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS
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

# A filter on the jobs' labels (runs, the event firehose, the overview): ``label=k=v``,
# repeated; a job matches when it carries every pair.
LabelFilter = Annotated[
    list[str] | None,
    Query(max_length=MAX_LABELS, description="key=value; repeat for several (all must hold)."),
]


def label_filter(pairs: list[str] | None) -> dict[str, str]:
    """``LabelFilter``'s pairs as a dict; a 422 naming ``label`` for a malformed one."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParamError("label", f"label filter {pair[:100]!r} is not key=value")
        if len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            raise ParamError(
                "label",
                f"a label filter's key has at most {MAX_LABEL_KEY} characters and its value "
                f"at most {MAX_LABEL_VALUE}",
            )
        out[key] = value
    return out


Store = Annotated[JobStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
