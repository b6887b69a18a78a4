"""Every error becomes JSON ``{"error": ..., "code": ...}`` here, and only here; and the
OpenAPI document lists, for each route, the problems it can answer with."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import agent_caller, authorize, enrolling_caller
from orchestrator.errors import LaunchbayError, ParamError
from orchestrator.problems import problems_of, summary
from orchestrator.store import STORE_DOWN

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    field: str = Field(description="The dotted field, query parameter or header at fault.")
    message: str


class Problem(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="What is wrong, for people.")
    code: int = Field(description="The HTTP status.")
    field: str | None = Field(default=None, description="The one field at fault, when one is.")
    fields: list[FieldProblem] | None = Field(
        default=None, description="Every field at fault (422 of a refused body or query)."
    )


_MEANING: dict[int, str] = {
    400: "A name that would leave its folder (traversal), or a bad job id.",
    401: "Missing or wrong bearer token (when LAUNCHBAY_TOKEN or LAUNCHBAY_TOKENS is set).",
    403: "The token lacks the scope this route needs, an agent acts for another, or a "
    "browser's cross-site request (Origin not allowed).",
    404: "No such job, run, artifact or agent.",
    409: "The job is not in a state that allows it (or the agent does not hold it).",
    413: "The request body is larger than this route takes (LAUNCHBAY_MAX_BODY_BYTES).",
    422: "A field, query parameter or header is refused; `fields` names each one.",
    503: "The job store or the broker is unavailable; try again (Retry-After).",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these problem statuses (one shared schema)."""
    return {code: {"model": Problem, "description": _MEANING[code]} for code in codes}


def document(app: FastAPI) -> None:
    """List on every route the problems any route of its kind can answer with, once for the
    app: 422 where it takes parameters or a body, 413 where it takes a body, 401 behind the
    token, 404 where it names a job, 503 where it reads the store. What only some routes
    answer (400, 409, another 404) each route names with :func:`answers`."""
    for route in iter_route_contexts(app.routes):
        original = route.original_route
        if not isinstance(original, APIRoute):
            continue
        dependant: Dependant = route.dependant  # (with the dependencies of its routers)
        codes = {503}
        if _has_params(dependant) or original.body_field is not None:
            codes.add(422)
        if original.body_field is not None:
            codes.add(413)
        if any(_uses(dependant, c) for c in (authorize, agent_caller, enrolling_caller)):
            codes.update((401, 403))
        if re.search(r"\{\w*id\}", route.path or ""):  # names a job, schedule, session...
            codes.add(404)
        # The route as declared and as included (the include merges its routers' maps).
        for responses in {id(r): r for r in (original.responses, route.responses)}.values():
            for code, entry in answers(*sorted(codes)).items():
                responses.setdefault(code, entry)


def _has_params(dependant: Dependant) -> bool:
    own = (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
    )
    return bool(own) or any(_has_params(d) for d in dependant.dependencies)


def _uses(dependant: Dependant, call: Any) -> bool:
    return dependant.call is call or any(_uses(d, call) for d in dependant.dependencies)


# ---------------------------------------------------------------- answers


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
        if not isinstance(exc, ParamError):
            return problem(exc.status_code, str(exc))
        # Named as a request validation names its fields, and as ``field`` (older clients).
        named = [{"field": exc.field, "message": str(exc)}]
        return problem(exc.status_code, str(exc), field=exc.field, fields=named)

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

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug of ours: say so in the same shape (the traceback goes to the log).
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, f"internal error ({type(exc).__name__}); see the API log")
