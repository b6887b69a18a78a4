"""The FastAPI application: ``uvicorn api.app:create_app --factory``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from api import errors
from api.access_log import AccessLog
from api.auth import Auth
from api.bodies import BodyLimit, StrictJSONRoute
from api.headers import AllowedMethods, SecurityHeaders
from api.routes import (
    artifacts,
    firehose,
    flow,
    insights,
    jobs,
    launcher,
    limits,
    meta,
    metrics,
    runs,
    schedules,
    sessions,
    streams,
    webhooks,
    websockets,
)
from api.state import AppState
from api.wire import SERVER_SEND
from orchestrator.hardening import harden_process
from orchestrator.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/api/v1"


class LaunchbayAPI(FastAPI):
    """FastAPI, keeping the server's own ``send`` in each HTTP request's and WebSocket's
    scope, for the live streams' direct writes and for resetting a stuck client's
    connection (api/wire.py); nothing else changes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    harden_process()  # (its environment holds the token and the store's credentials)
    state = AppState.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in app.state.startup_hooks:
            await hook(app)
        try:
            yield
        finally:
            for hook in reversed(app.state.shutdown_hooks):
                await hook(app)
            state.close()

    app = LaunchbayAPI(
        title="Launchbay",
        version="0.1.0",
        description="Run commands, containers, Kubernetes Jobs and built-in jobs; watch them live.",
        lifespan=lifespan,
    )
    app.state.lb = state
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    errors.install(app)

    public = APIRouter(prefix=API_PREFIX, route_class=StrictJSONRoute)
    public.add_api_route(
        "/healthz",
        meta.healthz,
        methods=["GET"],
        tags=["meta"],
        operation_id="meta-healthz",
        summary="Liveness and dependencies",
    )
    app.include_router(public)

    api = APIRouter(prefix=API_PREFIX, dependencies=[Auth])
    for module in (jobs, meta, streams, runs, artifacts, insights, sessions):
        api.include_router(module.router)
    app.include_router(api)
    # Observability (issue 15): the firehose and webhooks, and /metrics at the root.
    observe = APIRouter(prefix=API_PREFIX, dependencies=[Auth])
    observe.include_router(firehose.router)
    observe.include_router(webhooks.router)
    app.include_router(observe)
    # Flow control (issue 14): re-runs, concurrency limits, cron schedules.
    flow_api = APIRouter(prefix=API_PREFIX, dependencies=[Auth])
    for module in (flow, limits, schedules):
        flow_api.include_router(module.router)
    app.include_router(flow_api)
    app.include_router(metrics.router, dependencies=[Auth])
    # Agents present their own keys (api/auth.py), not the API's tokens.
    app.include_router(launcher.router, prefix=API_PREFIX)
    # WebSockets check the token themselves (browsers cannot send the header).
    app.include_router(websockets.router, prefix=API_PREFIX)
    # The streams hub starts first: the launcher's long polls listen to it.
    streams.setup(app)
    launcher.setup(app)
    metrics.setup(app)
    webhooks.setup(app)

    if STATIC_DIR.is_dir() and (STATIC_DIR / "index.html").exists():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
    errors.document(app)
    app.add_middleware(AllowedMethods, routes=app.router.routes, api_prefix=API_PREFIX)
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    app.add_middleware(SecurityHeaders, api_prefix=API_PREFIX)
    if settings.allowed_origins:  # browser front ends elsewhere (never "*")
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "last-event-id", "idempotency-key"],
            expose_headers=["x-request-id", "retry-after"],
        )
    app.add_middleware(AccessLog, enabled=settings.access_log)
    return app


_UPLOAD = re.compile(rf"^{API_PREFIX}/launcher/jobs/[^/]+/artifacts$")


def body_limits(settings: Settings) -> Callable[[str], int]:
    """How many bytes of body each path takes: an agent's artifact upload streams a file
    (LAUNCHBAY_MAX_ARTIFACT_BYTES), an agent's reports carry log batches
    (LAUNCHBAY_MAX_AGENT_BODY_BYTES), everything else LAUNCHBAY_MAX_BODY_BYTES."""
    agents = f"{API_PREFIX}/launcher/"

    def limit_for(path: str) -> int:
        if _UPLOAD.match(path):
            return settings.max_artifact_bytes
        if path.startswith(agents):
            return settings.max_agent_body_bytes
        return settings.max_body_bytes

    return limit_for
