"""Run history: every job, finished ones included; one run's full record; removal; cleanup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import needs
from api.bodies import StrictJSONRoute
from api.deps import LabelFilter, Offset, State, label_filter
from api.errors import answers
from orchestrator.credentials import Scope
from orchestrator.events import Events, job_logs_key
from orchestrator.job import (
    AttemptRecord,
    Executor,
    Job,
    JobStatus,
    UtcTime,
)
from orchestrator.retention import cleanup_older_than, parse_duration, remove_run
from orchestrator.store import JobStore

router = APIRouter(prefix="/runs", tags=["runs"], route_class=StrictJSONRoute)

API = "/api/v1"
_JSONL_PAGE = 500


class RunPage(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


class CleanupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than: str = Field(
        max_length=32,
        description="Remove ended runs that finished longer ago than this: 7d, 12h, 30m, 0s "
        "(at most 100 years).",
        examples=["7d"],
    )

    @field_validator("older_than")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)  # ValueError → 422 naming older_than
        return v


class CleanupResult(BaseModel):
    removed: int = Field(description="How many runs were removed.")
    jobs: list[str] = Field(description="Their ids.")
    artifact_files: int = Field(description="Artifact files deleted from disk.")
    cutoff: str = Field(description="Runs that ended before this instant were removed.")
    errors: int = Field(description="Runs that could not be removed (see the API log).")


class RunRecord(Job):
    """A job's full record plus its attempts, log size and links."""

    attempts: list[AttemptRecord] = Field(
        description="Every attempt a runner claimed, from the store (kept as long as the run)."
    )
    log_lines: int = Field(description="Lines the job has logged (all attempts).")
    links: dict[str, str]


class RemovedRun(BaseModel):
    id: str
    status: str
    artifact_files: int


# ------------------------------------------------------------------ list


@router.get(
    "",
    response_model=RunPage,
    operation_id="runs-list",
    summary="List runs, newest first (JSON page, or ?format=jsonl for one record per line)",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def list_runs(
    state: State,
    status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    executor: Executor | None = None,
    label: LabelFilter = None,
    since: Annotated[UtcTime | None, Query(description="Created at or after (ISO 8601)")] = None,
    until: Annotated[UtcTime | None, Query(description="Created before (ISO 8601)")] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"^[^\x00]*$",  # PostgreSQL takes no NUL in a string
            description="Search: part of the name (any case), or the start of the id",
        ),
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="Page size; 50, or all for jsonl")
    ] = None,
    offset: Offset = 0,
    format_: Annotated[Literal["json", "jsonl"], Query(alias="format")] = "json",
) -> Any:
    filters: dict[str, Any] = {
        "statuses": [s.value for s in status_ or []],
        "executor": executor,
        "labels": label_filter(label),
        "since": since,
        "until": until,
        "search": q,
    }
    if format_ == "jsonl":
        return _jsonl(state.store, filters, limit, offset)
    page = limit or 50
    items, total = state.store.list(**filters, limit=page, offset=offset)
    return {"items": [j.public() for j in items], "total": total, "limit": page, "offset": offset}


def _jsonl(
    store: JobStore, filters: dict[str, Any], limit: int | None, offset: int
) -> StreamingResponse:
    # Pin the window's upper end now, so jobs submitted while we stream do not shift the
    # offsets (newest first) and repeat a record.
    now = datetime.now(UTC) + timedelta(microseconds=1)
    filters = {**filters, "until": min(filters["until"] or now, now)}
    _, total = store.list(**filters, limit=1, offset=0)

    def lines() -> Iterator[str]:
        sent, at = 0, offset
        while limit is None or sent < limit:
            want = _JSONL_PAGE if limit is None else min(_JSONL_PAGE, limit - sent)
            items, _ = store.list(**filters, limit=want, offset=at)
            for job in items:
                yield json.dumps(job.public(), separators=(",", ":")) + "\n"
            sent += len(items)
            at += len(items)
            if len(items) < want:
                return

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers={"X-Total-Count": str(total)}
    )


# ------------------------------------------------------------------ cleanup


@router.post(
    "/cleanup",
    response_model=CleanupResult,
    operation_id="runs-cleanup",
    summary="Remove ended runs older than a duration, with logs and artifacts",
)
@needs(Scope.admin)
def cleanup_runs(
    state: State,
    body: Annotated[
        CleanupRequest | None,
        Body(description="Omit for the configured retention (LAUNCHBAY_RETENTION_DAYS)"),
    ] = None,
) -> Any:
    seconds = (
        parse_duration(body.older_than)
        if body is not None
        else state.settings.retention_days * 86400
    )
    return cleanup_older_than(
        state.store,
        state.events,
        state.artifacts,
        seconds,
        workspaces_dir=state.settings.workspaces_dir,
    )


# ------------------------------------------------------------------ one run


@router.get(
    "/{job_id}",
    response_model=RunRecord,
    operation_id="runs-get",
    summary="One run's full record: spec, timestamps, attempts, steps, result, "
    "artifacts, resource usage, log size",
)
def get_run(job_id: str, state: State) -> Any:
    job = state.store.get(job_id)
    return {
        **job.public(),
        "attempts": state.store.attempts(job_id),
        "log_lines": _log_lines(state.events, job_id),
        "links": {
            "self": f"{API}/runs/{job_id}",
            "job": f"{API}/jobs/{job_id}",
            "logs": f"{API}/jobs/{job_id}/logs",
            "events": f"{API}/jobs/{job_id}/events",
            "artifacts": f"{API}/jobs/{job_id}/artifacts",
        },
    }


@router.delete(
    "/{job_id}",
    response_model=RemovedRun,
    operation_id="runs-delete",
    summary="Remove an ended run with its logs and artifacts (409 until it ends)",
    responses=answers(409),
)
@needs(Scope.admin)
def delete_run(job_id: str, state: State) -> Any:
    return remove_run(
        state.store,
        state.events,
        state.artifacts,
        job_id,
        workspaces_dir=state.settings.workspaces_dir,
    )


def _log_lines(events: Events, job_id: str) -> int:
    """Lines logged so far: the live stream's last sequence number, else the stored file."""
    last = events.r.xrevrange(job_logs_key(job_id), count=1)
    if last:
        return int(last[0][0].split("-", 1)[0])
    path = events.log_path(job_id)
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())
