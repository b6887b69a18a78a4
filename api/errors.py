"""Every error becomes JSON ``{"error": ..., "code": ...}`` here, and only here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import LaunchbayError, ParamError
from orchestrator.problems import problems_of, summary
from orchestrator.store import STORE_DOWN


def invalid(
    errors: Iterable[Mapping[str, Any]],
    *,
    under: str = "",
    whole: str = "body",
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """How bad input is refused, over HTTP (422) and the WebSocket alike: ``error``, a
    summary line, and ``fields``, one ``{"field", "message"}`` per problem (the keywords
    are :func:`~orchestrator.problems.problems_of`'s)."""
    fields = problems_of(errors, under=under, whole=whole, aliases=aliases)
    return {"error": summary(fields), "fields": fields}


def problem(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, **extra}, status_code=code)


def install(app: FastAPI) -> None:
    @app.exception_handler(LaunchbayError)
    async def _lb(_: Request, exc: LaunchbayError) -> JSONResponse:
        extra = {"field": exc.field} if isinstance(exc, ParamError) else {}
        return problem(exc.status_code, str(exc), **extra)

    async def _store_down(_: Request, exc: Exception) -> JSONResponse:
        # Nothing was kept: the client may send the same request again.
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        resp = problem(503, f"the job store is unavailable; try again shortly ({first})")
        resp.headers["Retry-After"] = "5"
        return resp

    for kind in STORE_DOWN:
        app.add_exception_handler(kind, _store_down)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        body = invalid(exc.errors())
        return problem(422, body["error"], fields=body["fields"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = problem(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp
