"""``/webhooks``: register URLs that get signed job events, and read their delivery log.

Managing webhooks needs the ``admin`` scope (a webhook's secret is shown once, when it is
created). The delivery itself is :mod:`orchestrator.webhook_delivery`, started here with
the app (one reader thread per API process, ``LAUNCHBAY_WEBHOOKS_ENABLED``).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from api.auth import needs
from api.bodies import StrictJSONRoute
from api.deps import Offset
from api.errors import answers
from api.state import AppState
from orchestrator.credentials import Scope
from orchestrator.webhook_delivery import Deliverer, hooks_changed
from orchestrator.webhooks import Delivery, Webhook, WebhookSpec, WebhookStore

router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=StrictJSONRoute)


def setup(app: FastAPI) -> None:
    """The webhook store for the routes; the deliverer thread with the app."""
    state: AppState = app.state.lb
    state.extras["webhooks"] = WebhookStore(state.store.engine)

    async def start(app: FastAPI) -> None:
        s: AppState = app.state.lb
        if not s.settings.webhooks_enabled:
            return
        deliverer = Deliverer(
            s.settings,
            s.events.r,
            s.extras["webhooks"],
            s.store,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
        )
        await run_in_threadpool(deliverer.start)
        s.extras["deliverer"] = deliverer

    async def stop(app: FastAPI) -> None:
        deliverer = app.state.lb.extras.pop("deliverer", None)
        if deliverer is not None:
            await run_in_threadpool(deliverer.stop)

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


def _hooks(request: Request) -> WebhookStore:
    return request.app.state.lb.extras["webhooks"]  # type: ignore[no-any-return]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Webhook,
    operation_id="webhooks-create",
    summary="Register a webhook (the answer is the only one that shows its secret)",
)
@needs(Scope.admin)
def create_webhook(spec: Annotated[WebhookSpec, Body()], request: Request) -> Any:
    made = _hooks(request).create(spec)
    hooks_changed(request.app.state.lb.events.r)
    return made


@router.get("", response_model=list[Webhook], operation_id="webhooks-list", summary="List webhooks")
@needs(Scope.admin)
def list_webhooks(request: Request) -> Any:
    return _hooks(request).list()


@router.get(
    "/{webhook_id}",
    response_model=Webhook,
    operation_id="webhooks-get",
    responses=answers(404),
    summary="One webhook",
)
@needs(Scope.admin)
def get_webhook(webhook_id: str, request: Request) -> Any:
    return _hooks(request).get(webhook_id)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="webhooks-delete",
    responses=answers(404),
    summary="Remove a webhook and its delivery log",
)
@needs(Scope.admin)
def delete_webhook(webhook_id: str, request: Request) -> Response:
    _hooks(request).delete(webhook_id)
    hooks_changed(request.app.state.lb.events.r)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=list[Delivery],
    operation_id="webhooks-deliveries",
    responses=answers(404),
    summary="The webhook's deliveries, newest first, with each one's last response",
)
@needs(Scope.admin)
def list_deliveries(
    webhook_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> Any:
    return _hooks(request).deliveries(webhook_id, limit=limit, offset=offset)
