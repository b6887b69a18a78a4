"""A typed, synchronous HTTP client for the Launchbay API (used by the CLI and remote agents).

Every failure is one of the :class:`ClientError` types below, whose message is one readable
line: callers print ``str(exc)`` and never show a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from orchestrator.artifacts import atomic_file
from orchestrator.job import TERMINAL_STATUSES, Artifact, Job, JobStatus
from orchestrator.problems import problems_of

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Artifact",
    "CleanupResult",
    "ClientError",
    "Conflict",
    "InvalidRequest",
    "Job",
    "JobPage",
    "LaunchbayClient",
    "LogLine",
    "LogPage",
    "NotFound",
    "ServerUnreachable",
    "Unauthorized",
    "WorkerInfo",
]


# ---------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of every error the client raises; ``str()`` is one readable line."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all: refused, DNS, timeout, broken connection."""

    def __init__(self, url: str, cause: BaseException) -> None:
        reason = str(cause) or type(cause).__name__
        super().__init__(f"cannot reach Launchbay at {url} ({reason})")
        self.url = url


class ApiError(ClientError):
    """The server answered with an error status; ``message`` is its ``error`` text."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        fields: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or []
        self.body = body


class InvalidRequest(ApiError):
    """422 (or 400): the spec or a parameter was refused; ``fields`` names them."""


class NotFound(ApiError):
    """404: unknown job, artifact or route."""


class Conflict(ApiError):
    """409: e.g. cancelling a job that already ended."""


class Unauthorized(ApiError):
    """401/403: missing or wrong bearer token (set LAUNCHBAY_TOKEN)."""


class BadResponse(ClientError):
    """The server answered 2xx with something this client cannot read."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
}


# ---------------------------------------------------------------- response models


class _Open(BaseModel):
    # Newer servers may add fields; an older client must still read the answer.
    model_config = ConfigDict(extra="allow")


class JobPage(_Open):
    items: list[Job]
    total: int
    limit: int
    offset: int


class LogLine(_Open):
    seq: int
    ts: str | float | None = None
    stream: str = "stdout"
    step: str | None = None
    line: str = ""


class LogPage(_Open):
    items: list[LogLine]
    next_since: int
    job_status: JobStatus | None = None


class WorkerInfo(_Open):
    id: str
    kind: str = "celery"
    hostname: str = ""
    executors: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    capacity: int = 0
    active: int = 0


class CleanupResult(_Open):
    removed: int = 0
    jobs: list[Any] = Field(default_factory=list)
    artifact_files: int = 0
    cutoff: str | None = None


_ARTIFACTS = TypeAdapter(list[Artifact])
_WORKERS = TypeAdapter(list[WorkerInfo])
_JOBS = TypeAdapter(list[Job])


def _error_of(resp: httpx.Response) -> ApiError:
    body: Any = None
    message = f"HTTP {resp.status_code}"
    fields: list[dict[str, Any]] = []
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip().splitlines()
        if text:
            message = f"HTTP {resp.status_code}: {text[0][:200]}"
    if isinstance(body, dict):
        err = body.get("error") or body.get("detail")
        if isinstance(err, str) and err:
            message = err
        raw = body.get("fields")
        if isinstance(raw, list):
            fields = [f for f in raw if isinstance(f, dict)]
    cls = _BY_STATUS.get(resp.status_code, ApiError)
    return cls(resp.status_code, message, fields=fields, body=body)


# ---------------------------------------------------------------- client


class LaunchbayClient:
    """``LaunchbayClient(url, token)``: one method per API call, typed answers.

    ``url`` is the server root (``http://host:8000``); ``token`` is sent as a bearer token.
    Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> LaunchbayClient:
        """URL and token from the arguments, else LAUNCHBAY_URL / LAUNCHBAY_TOKEN."""
        return cls(
            url or os.environ.get("LAUNCHBAY_URL") or DEFAULT_URL,
            token or os.environ.get("LAUNCHBAY_TOKEN") or None,
        )

    def set_token(self, token: str | None) -> None:
        """Send ``token`` from now on (an agent switches to its own key once registered)."""
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        else:
            self._http.headers.pop("Authorization", None)

    @property
    def token(self) -> str | None:
        header = self._http.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LaunchbayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; ``path`` is relative to ``/api/v1``. Raises a ClientError on failure."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # connect, read, timeouts, protocol
            raise ServerUnreachable(self.url, exc) from None
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp

    @contextlib.contextmanager
    def _stream(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """GET ``path`` as a stream: an error answer raises its ApiError before any body is
        read, and a transport failure, also mid-body, is ServerUnreachable."""
        try:
            with self._http.stream("GET", path, **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_of(resp)
                yield resp
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, exc) from None

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise BadResponse(f"{method} {path}: the server did not answer JSON") from None

    @staticmethod
    def _parse(model: Any, data: Any, what: str) -> Any:
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(data)
            return model.model_validate(data)
        except ValidationError as exc:
            first = problems_of(exc.errors(), whole=what)[0]
            raise BadResponse(
                f"unexpected {what} from the server: {first['field']}: {first['message']}"
            ) from None

    # ------------------------------------------------------------ jobs

    def submit(self, spec: dict[str, Any], *, wait: float = 0) -> Job:
        """POST /jobs; InvalidRequest (with ``fields``) when the spec is refused. With
        ``wait`` (at most 30 s): submit and wait in one request, the job once it has ended
        or as it stands after ``wait`` seconds (:meth:`wait_job` waits on from there)."""
        if not wait:
            return self._parse(Job, self.request_json("POST", "/jobs", json=spec), "job")
        data = self.request_json(
            "POST",
            "/jobs",
            json=spec,
            params={"wait": f"{wait:g}"},
            timeout=httpx.Timeout(self._http.timeout.connect, read=wait + 30),
        )
        return self._parse(Job, data, "job")

    def submit_batch(self, specs: list[dict[str, Any]]) -> list[Job]:
        """POST /jobs/batch: the jobs made, in order; InvalidRequest naming ``jobs[i].…``
        (and no job made) when a spec is refused."""
        data = self.request_json("POST", "/jobs/batch", json={"jobs": specs})
        if not isinstance(data, dict):
            raise BadResponse("unexpected batch answer from the server: not an object")
        return self._parse(_JOBS, data.get("jobs"), "jobs")

    def jobs(self, *, status: list[str] | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        params: list[tuple[str, str | int]] = [("limit", limit), ("offset", offset)]
        params += [("status", s) for s in status or []]
        return self._parse(JobPage, self.request_json("GET", "/jobs", params=params), "job page")

    def job(self, job_id: str, *, wait: float = 0) -> Job:
        """GET /jobs/{id}; with ``wait`` (at most 30 s), once the job has ended or after
        ``wait`` seconds, whichever comes first (a long-poll: no polling)."""
        if not wait:
            return self._parse(Job, self.request_json("GET", f"/jobs/{_seg(job_id)}"), "job")
        data = self.request_json(
            "GET",
            f"/jobs/{_seg(job_id)}",
            params={"wait": f"{wait:g}"},
            timeout=httpx.Timeout(self._http.timeout.connect, read=wait + 30),
        )
        return self._parse(Job, data, "job")

    def wait_job(self, job_id: str, wait_s: float) -> Job:
        """The job once it has ended, or as it stands after ``wait_s`` seconds: long-polls
        of at most 30 s each."""
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            job = self.job(job_id, wait=min(max(left, 0), 30))
            if is_ended(job) or left <= 0:
                return job

    def cancel(self, job_id: str) -> Job:
        """Ask for a cancel; Conflict when the job already ended."""
        return self._parse(Job, self.request_json("POST", f"/jobs/{_seg(job_id)}/cancel"), "job")

    # ------------------------------------------------------------ logs

    def logs(self, job_id: str, since: int | str = 0, limit: int = 1000) -> LogPage:
        """Log lines with ``seq > since`` (or written after the ISO time ``since``);
        ``next_since`` resumes exactly."""
        data = self.request_json(
            "GET", f"/jobs/{_seg(job_id)}/logs", params={"since": since, "limit": limit}
        )
        return self._parse(LogPage, data, "log page")

    def log_seq_at(self, job_id: str, since: int | str) -> int:
        """The line number ``since`` stands for: itself, or for an ISO time the last line
        written at or before it (the server decides, with the lines' own times)."""
        if isinstance(since, int):
            return since
        got = self.logs(job_id, since=since, limit=1)
        return got.items[0].seq - 1 if got.items else got.next_since

    def iter_logs(self, job_id: str, since: int = 0, page: int = 1000) -> Iterator[LogLine]:
        """Every line stored so far after ``since``, page by page."""
        while True:
            got = self.logs(job_id, since=since, limit=page)
            yield from got.items
            if not got.items or got.next_since <= since:
                return
            since = got.next_since

    # ------------------------------------------------------------ artifacts and runs

    def artifacts(self, job_id: str) -> list[Artifact]:
        try:
            data = self.request_json("GET", f"/jobs/{_seg(job_id)}/artifacts")
        except NotFound:
            # Unknown job -> job() raises NotFound with the server's message; a server
            # without the artifacts route still lists what the job record holds.
            return self.job(job_id).artifacts
        if isinstance(data, dict) and "items" in data:
            data = data["items"]
        return self._parse(_ARTIFACTS, data, "artifact list")  # type: ignore[no-any-return]

    def download(self, job_id: str, name: str, out: BinaryIO) -> tuple[int, str | None]:
        """Stream one artifact into ``out``; returns (bytes, sha256 checked or None).

        When the server sends an ETag (the sha256), the bytes are checked against it.
        """
        path = f"/jobs/{_seg(job_id)}/artifacts/{quote(name, safe='/')}"
        digest = hashlib.sha256()
        size = 0
        with self._stream(path) as resp:
            etag = resp.headers.get("etag", "").strip('"').removeprefix("W/").strip('"')
            for chunk in resp.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if len(etag) == 64 and etag != got:
            raise BadResponse(f"artifact {name!r}: sha256 {got} does not match the server's {etag}")
        return size, (got if len(etag) == 64 else None)

    def download_to(self, job_id: str, name: str, dest: Path) -> tuple[int, str | None]:
        """Download into ``dest`` atomically: a partial file never takes its place."""
        with atomic_file(dest, "wb") as fh:
            return self.download(job_id, name, fh)

    def run_record(self, job_id: str) -> dict[str, Any]:
        """The full run record (``GET /runs/{id}``): the job plus attempts, log size, links."""
        return self.request_json("GET", f"/runs/{_seg(job_id)}")  # type: ignore[no-any-return]

    def export_runs(self, out: TextIO, **filters: Any) -> int:
        """Stream ``GET /runs?format=jsonl`` into ``out``, one record per line, never
        holding the whole history; returns how many records were written.

        ``filters`` are the route's: ``status`` and ``label`` (lists), ``executor``,
        ``since``, ``until``, ``limit``.
        """
        params = httpx.QueryParams({"format": "jsonl"})
        for key, value in filters.items():
            for v in value if isinstance(value, list | tuple) else [value]:
                if v is not None:
                    params = params.add(key, str(v))
        written = 0
        with self._stream("/runs", params=params) as resp:
            for line in resp.iter_lines():
                if line.strip():
                    out.write(line + "\n")
                    written += 1
        return written

    def cleanup(self, older_than: str) -> CleanupResult:
        data = self.request_json("POST", "/runs/cleanup", json={"older_than": older_than})
        return self._parse(CleanupResult, data, "cleanup result")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ meta

    def workers(self) -> list[WorkerInfo]:
        return self._parse(_WORKERS, self.request_json("GET", "/workers"), "worker list")  # type: ignore[no-any-return]

    def job_types(self) -> list[dict[str, Any]]:
        return self.request_json("GET", "/job-types")  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self.request_json("GET", "/stats")  # type: ignore[no-any-return]

    def healthz(self) -> dict[str, Any]:
        return self.request_json("GET", "/healthz")  # type: ignore[no-any-return]

    def vocabulary(self) -> dict[str, Any]:
        return self.request_json("GET", "/meta")  # type: ignore[no-any-return]

    def delete_run(self, job_id: str) -> dict[str, Any]:
        """Remove an ended run with its logs and artifacts (``DELETE /runs/{id}``)."""
        return self.request_json("DELETE", f"/runs/{_seg(job_id)}")  # type: ignore[no-any-return]

    def iter_events(self, job_id: str) -> Iterator[tuple[str, str]]:
        """``(event, data)`` of the job's SSE stream (``GET /jobs/{id}/events``) until the
        server closes it, which it does after the job's end."""
        yield from self.iter_sse(f"/jobs/{_seg(job_id)}/events")

    def iter_sse(self, path: str, **kwargs: Any) -> Iterator[tuple[str, str]]:
        """``(event, data)`` of an SSE stream until the server closes it."""
        event = ""
        with self._stream(path, timeout=None, **kwargs) as resp:
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    yield event, line.partition(":")[2].strip()
                elif not line:
                    event = ""

    def metrics_text(self) -> str:
        """The Prometheus exposition (``GET /metrics``, beside the API's prefix)."""
        try:
            resp = self._http.get(f"{self.url}/metrics")
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, exc) from None
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp.text

    # ------------------------------------------------------------ sessions (issue 16)

    def sessions(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset}
        return self.request_json("GET", "/sessions", params=params)  # type: ignore[no-any-return]

    def session(self, ref: str) -> dict[str, Any]:
        return self.request_json("GET", f"/sessions/{_seg(ref)}")  # type: ignore[no-any-return]

    def delete_session(self, ref: str) -> dict[str, Any]:
        return self.request_json("DELETE", f"/sessions/{_seg(ref)}")  # type: ignore[no-any-return]


def is_ended(job: Job) -> bool:
    return job.status in TERMINAL_STATUSES


def _seg(value: str) -> str:
    """One URL path segment: an id typed by a person cannot add path parts."""
    return quote(value, safe="")
