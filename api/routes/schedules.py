"""Cron schedules (issue 14): create, list, get, update, pause/resume, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, status

from api.bodies import StrictJSONRoute
from api.deps import DispatcherDep
from orchestrator.job import Job
from orchestrator.schedules import Schedule, ScheduleIn, SchedulePatch, Schedules

router = APIRouter(prefix="/schedules", tags=["schedules"], route_class=StrictJSONRoute)


@router.post(
    "",
    response_model=Schedule,
    status_code=status.HTTP_201_CREATED,
    operation_id="schedules-create",
    summary="Create a cron schedule",
)
def create(body: Annotated[ScheduleIn, Body()], dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).create(body)


@router.get("", response_model=list[Schedule], operation_id="schedules-list", summary="All")
def list_(dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).list()


@router.get("/{schedule_id}", response_model=Schedule, operation_id="schedules-get")
def get(schedule_id: str, dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).get(schedule_id)


@router.patch(
    "/{schedule_id}",
    response_model=Schedule,
    operation_id="schedules-update",
    summary="Change a schedule",
)
def update(
    schedule_id: str, body: Annotated[SchedulePatch, Body()], dispatcher: DispatcherDep
) -> Any:
    return Schedules(dispatcher).update(schedule_id, body)


@router.post("/{schedule_id}/pause", response_model=Schedule, operation_id="schedules-pause")
def pause(schedule_id: str, dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).update(schedule_id, SchedulePatch(paused=True))


@router.post("/{schedule_id}/resume", response_model=Schedule, operation_id="schedules-resume")
def resume(schedule_id: str, dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).update(schedule_id, SchedulePatch(paused=False))


@router.get("/{schedule_id}/runs", response_model=list[Job], operation_id="schedules-runs")
def runs(schedule_id: str, dispatcher: DispatcherDep) -> Any:
    return [j.public() for j in Schedules(dispatcher).runs(schedule_id)]


@router.delete("/{schedule_id}", response_model=Schedule, operation_id="schedules-delete")
def delete(schedule_id: str, dispatcher: DispatcherDep) -> Any:
    return Schedules(dispatcher).delete(schedule_id)
