"""A job's artifacts: list them, download one (ETag = sha256, gzip when accepted)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import Field

from api.bodies import StrictJSONRoute
from api.deps import State
from api.errors import answers
from orchestrator.artifacts import safe_name
from orchestrator.errors import ArtifactNotFound
from orchestrator.job import Artifact

router = APIRouter(prefix="/jobs", tags=["artifacts"], route_class=StrictJSONRoute)

_CHUNK = 64 * 1024
# Already compressed: gzip would spend CPU to make them bigger.
_COMPRESSED = (
    "image/",
    "video/",
    "audio/",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-bzip2",
    "application/x-xz",
    "application/zstd",
    "application/x-7z-compressed",
    "application/x-rar",
    "application/pdf",
)


class ArtifactInfo(Artifact):
    url: str = Field(description="Where to download it.")


@router.get(
    "/{job_id}/artifacts",
    response_model=list[ArtifactInfo],
    operation_id="artifacts-list",
    summary="A job's artifacts",
)
def list_artifacts(job_id: str, state: State) -> Any:
    job = state.store.get(job_id)
    return [{**a.model_dump(), "url": _url(job_id, a.name)} for a in job.artifacts]


@router.head(
    "/{job_id}/artifacts/{name:path}", operation_id="artifacts-head", include_in_schema=False
)
@router.get(
    "/{job_id}/artifacts/{name:path}",
    operation_id="artifacts-download",
    summary="Download one artifact",
    response_class=FileResponse,
    responses={
        200: {"description": "The file, with its content type and ETag = sha256"},
        304: {"description": "If-None-Match matched"},
        **answers(400),
    },
)
def download_artifact(
    job_id: str,
    name: str,
    request: Request,
    state: State,
    accept_encoding: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    # The name is checked before anything is looked up, so a traversal attempt gets
    # the same 400 whether or not the job exists.
    wanted = safe_name(name).as_posix()
    job = state.store.get(job_id)
    art = next((a for a in job.artifacts if a.name == wanted), None)
    if art is None:
        raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
    path = state.artifacts.path(job_id, art.name)
    headers = {
        "ETag": f'"{art.sha256}"',
        "Vary": "Accept-Encoding",
        "Cache-Control": "private, no-cache",
        # Served from the dashboard's origin: never let a stored HTML file run there.
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if _etag_matches(if_none_match, art.sha256):
        return Response(status_code=304, headers=headers)
    filename = PurePosixPath(art.name).name
    if (
        request.method == "GET"
        and "range" not in request.headers
        and _accepts_gzip(accept_encoding)
        and not art.content_type.startswith(_COMPRESSED)
    ):
        headers["Content-Encoding"] = "gzip"
        headers["Content-Disposition"] = _attachment(filename)
        return StreamingResponse(_gzip(path), media_type=art.content_type, headers=headers)
    return FileResponse(path, media_type=art.content_type, filename=filename, headers=headers)


def _url(job_id: str, name: str) -> str:
    return f"/api/v1/jobs/{job_id}/artifacts/{quote(name)}"


def _attachment(filename: str) -> str:
    """``Content-Disposition`` as FileResponse writes it (RFC 6266 ``filename*`` if needed)."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def _accepts_gzip(header: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it; ``*`` allows it)."""
    if not header:
        return False
    explicit: float | None = None
    star: float | None = None
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            explicit = q
        elif coding == "*":
            star = q
    chosen = explicit if explicit is not None else star
    return chosen is not None and chosen > 0


def _etag_matches(header: str | None, sha256: str) -> bool:
    """Weak comparison, as RFC 9110 asks for If-None-Match."""
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False


def _gzip(path: Path) -> Iterator[bytes]:
    """The file gzip-compressed on the fly (wbits=31: a gzip header and trailer)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            out = comp.compress(chunk)
            if out:
                yield out
    yield comp.flush()
