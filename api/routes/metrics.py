"""``GET /metrics``: Prometheus exposition of the cluster's and this API process's numbers.

Cluster-wide families (jobs, queues, workers) come from :mod:`orchestrator.metrics_scrape` and are
the same from every API replica; this process's live clients, drops and event lag are its
own (sum them over replicas). See the README's "Metrics" section.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from api.auth import needs
from api.state import AppState
from orchestrator.credentials import Scope
from orchestrator.metrics_scrape import ClusterCollector

router = APIRouter(tags=["meta"])

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class StreamCollector(Collector):
    """This process's live SSE/WebSocket clients and the clients it dropped as too slow."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        hub = self.state.extras.get("hub")
        clients = GaugeMetricFamily(
            "launchbay_stream_clients",
            "Live SSE and WebSocket clients of this API process.",
            labels=["transport"],
        )
        dropped = CounterMetricFamily(
            "launchbay_stream_dropped_clients",
            "Clients this API process disconnected as too slow.",
            labels=["transport"],
        )
        if hub is not None:
            by_kind = hub.clients_by_kind()
            for kind in sorted({"sse", "ws", *by_kind}):
                clients.add_metric([kind], by_kind.get(kind, 0))
            for kind in sorted({"sse", "ws", *hub.dropped_by_kind}):
                dropped.add_metric([kind], hub.dropped_by_kind.get(kind, 0))
        yield clients
        yield dropped


def setup(app: FastAPI) -> None:
    """Build this process's registry; after the hub starts, time every event it gets."""
    state: AppState = app.state.lb
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(state.events.r, state.store.engine, state.runners))
    registry.register(StreamCollector(state))
    lag = Histogram(
        "launchbay_event_lag_seconds",
        "From an event's publish to this API process's fan-out to its clients.",
        buckets=LAG_BUCKETS,
        registry=registry,
    )
    state.extras["metrics_registry"] = registry

    def time_event(msg: dict[str, Any]) -> None:
        ts = msg.get("ts")
        if isinstance(ts, str):
            with contextlib.suppress(ValueError):
                lag.observe(max(0.0, time.time() - datetime.fromisoformat(ts).timestamp()))

    async def start(app: FastAPI) -> None:
        hub = app.state.lb.extras.get("hub")
        if hub is not None:
            app.state.lb.extras["metrics_unlisten"] = hub.listen(time_event, logs=True)

    async def stop(app: FastAPI) -> None:
        unlisten = app.state.lb.extras.pop("metrics_unlisten", None)
        if unlisten is not None:
            unlisten()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


@router.get(
    "/metrics",
    operation_id="meta-metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
@needs(Scope.metrics)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.lb.extras["metrics_registry"]
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
