"""Sessions: list, one with its runs, delete with its workspace (issue 16)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.bodies import StrictJSONRoute
from api.deps import Offset, State
from api.errors import answers
from orchestrator.sessions import Session

router = APIRouter(prefix="/sessions", tags=["sessions"], route_class=StrictJSONRoute)


class SessionPage(BaseModel):
    items: list[Session]
    total: int
    limit: int
    offset: int


@router.get("", response_model=SessionPage, operation_id="sessions-list", summary="List sessions")
def list_sessions(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Any:
    items, total = state.dispatcher.sessions.list(limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get(
    "/{session_id}",
    response_model=Session,
    operation_id="sessions-get",
    summary="One session (by id, or the newest of a name) with its runs, oldest first",
    responses=answers(404),
)
def get_session(session_id: str, state: State) -> Any:
    sessions = state.dispatcher.sessions
    found = sessions.get(session_id)
    runs = [j for j in (state.store.find(i) for i in sessions.run_ids(found.id)) if j is not None]
    return found.model_copy(update={"runs": runs})


@router.delete(
    "/{session_id}",
    response_model=Session,
    operation_id="sessions-delete",
    summary="Remove a session and its workspace (409 while one of its runs is unfinished)",
    responses=answers(404, 409),
)
def delete_session(session_id: str, state: State) -> Any:
    return state.dispatcher.sessions.delete(session_id)
