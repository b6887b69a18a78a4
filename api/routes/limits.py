"""Keyed concurrency limits (issue 14): the maximum running jobs per ``concurrency_key``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep

router = APIRouter(prefix="/limits", tags=["limits"], route_class=StrictJSONRoute)

Key = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:/@-]{1,200}$")]


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_running: int = Field(ge=0, le=100_000, description="Jobs of the key running at once.")


class LimitOut(BaseModel):
    key: str
    max_running: int | None = Field(description="Null: no limit set.")
    running: int
    waiting: int = Field(description="Queued jobs held because the key is full.")


@router.get("", response_model=list[LimitOut], operation_id="limits-list", summary="All keys")
def list_limits(dispatcher: DispatcherDep) -> Any:
    return [lim.public() for lim in dispatcher.flow.limits()]


@router.get("/{key}", response_model=LimitOut, operation_id="limits-get", summary="One key")
def get_limit(key: Key, dispatcher: DispatcherDep) -> Any:
    return dispatcher.flow.limit(key).public()


@router.put("/{key}", response_model=LimitOut, operation_id="limits-set", summary="Set a limit")
def set_limit(key: Key, body: Annotated[LimitIn, Body()], dispatcher: DispatcherDep) -> Any:
    return dispatcher.flow.set_limit(key, body.max_running).public()


@router.delete(
    "/{key}", response_model=LimitOut, operation_id="limits-delete", summary="Remove a limit"
)
def delete_limit(key: Key, dispatcher: DispatcherDep) -> Any:
    return dispatcher.flow.set_limit(key, None).public()
