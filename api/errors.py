"""Every error becomes JSON ``{"error": ..., "code": ...}`` here, and only here."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import LaunchbayError, ParamError

_SKIP = {"body", "query", "path", "builtin", "process", "docker", "kubernetes"}


def _field_of(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if str(p) not in _SKIP]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        # The schema check names the parameter itself (params.seconds).
        return cause.field
    return ".".join(loc) or "body"


def problem(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, **extra}, status_code=code)


def install(app: FastAPI) -> None:
    @app.exception_handler(LaunchbayError)
    async def _lb(_: Request, exc: LaunchbayError) -> JSONResponse:
        extra = {"field": exc.field} if isinstance(exc, ParamError) else {}
        return problem(exc.status_code, str(exc), **extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            fields.append({"field": _field_of(err), "message": msg})
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return problem(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = problem(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp
