"""OpenTelemetry traces (the ``otel`` extra; off unless ``LAUNCHBAY_TRACING=1``).

One trace per job:

* ``launchbay.submit`` — in the API, around storing the job and handing it to the broker.
  Its context is written into the job's environment as ``TRACEPARENT`` (W3C trace
  context), so the job itself can continue the trace, and every later span finds its
  parent in the job it is about, whichever process or host handles it: no side channel.
  A client that submits ``env.TRACEPARENT`` makes the submit a child of its own trace.
* ``launchbay.queued`` (submit → claim: the broker and the wait for a runner),
  ``launchbay.launch`` (claim → started), ``launchbay.run`` (started → end, with the
  outcome), and a ``launchbay.requeued`` span for each re-queue — emitted by
  :class:`TracingListener` on the core's listener seam, with the job's own times.

Exporting is the SDK's business: install a TracerProvider (the standard ``OTEL_*``
variables with ``opentelemetry-instrument``, or :func:`configure`). Tests use the SDK's
in-memory exporter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from orchestrator.job import TERMINAL_STATUSES, EventType, Job
from orchestrator.listeners import Listener

TRACEPARENT = "TRACEPARENT"


def available() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def configure(service_name: str) -> None:
    """Give the process an SDK TracerProvider when none is set, exporting with OTLP if its
    exporter is installed, else to the console when ``OTEL_TRACES_EXPORTER=console``."""
    import os

    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter: Any = None
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        exporter = ConsoleSpanExporter()
    else:
        with contextlib.suppress(ImportError):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _ns(when: datetime | None) -> int | None:
    return int(when.timestamp() * 1e9) if when is not None else None


class Tracing:
    """The submit span, and the listener that adds the rest of a job's trace."""

    def __init__(self, tracer: Any = None) -> None:
        from opentelemetry import trace

        self.tracer = tracer or trace.get_tracer("launchbay")

    @contextlib.contextmanager
    def submit(self, spec: Any) -> Iterator[Any]:
        """Open ``launchbay.submit``; yields ``spec`` with its ``TRACEPARENT`` set."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        prop = TraceContextTextMapPropagator()
        env = dict((spec.get("env") if isinstance(spec, dict) else spec.env) or {})
        parent = prop.extract({"traceparent": env[TRACEPARENT]}) if TRACEPARENT in env else None
        with self.tracer.start_as_current_span("launchbay.submit", context=parent) as span:
            carrier: dict[str, str] = {}
            prop.inject(carrier)
            env[TRACEPARENT] = carrier["traceparent"]
            stamped = (
                {**spec, "env": env}
                if isinstance(spec, dict)
                else spec.model_copy(update={"env": env})
            )
            executor = stamped.get("executor") if isinstance(stamped, dict) else stamped.executor
            span.set_attribute("launchbay.executor", str(executor))
            yield stamped

    def span(self, name: str, job: Job, start: datetime | None, end: datetime | None) -> None:
        """A finished span of ``job``'s trace, from ``start`` to ``end``."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent_tp = job.spec.env.get(TRACEPARENT)
        if parent_tp is None:
            return
        parent = TraceContextTextMapPropagator().extract({"traceparent": parent_tp})
        span = self.tracer.start_span(name, context=parent, start_time=_ns(start))
        span.set_attribute("launchbay.job_id", job.id)
        span.set_attribute("launchbay.attempt", job.attempt)
        span.set_attribute("launchbay.executor", job.executor)
        span.set_attribute("launchbay.status", job.status.value)
        if job.runner_id:
            span.set_attribute("launchbay.runner_id", job.runner_id)
        if job.exit_code is not None:
            span.set_attribute("launchbay.exit_code", job.exit_code)
        if job.error:
            span.set_attribute("launchbay.error", job.error[:500])
        span.end(end_time=_ns(end))


class TracingListener(Listener):
    """Adds the queued, launch, run and requeued spans of each job's trace."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def transition(self, job: Job, event: EventType) -> None:
        t = self.tracing
        if event == EventType.claimed:
            t.span("launchbay.queued", job, job.not_before or job.created_at, job.claimed_at)
        elif event == EventType.started:
            t.span("launchbay.launch", job, job.claimed_at, job.started_at)
        elif event == EventType.requeued:
            t.span("launchbay.requeued", job, None, None)
        elif job.status in TERMINAL_STATUSES and event.value == job.status.value:
            t.span("launchbay.run", job, job.started_at or job.created_at, job.finished_at)


def tracing_for(enabled: bool) -> Tracing | None:
    """A :class:`Tracing` when asked for and the SDK is installed; else None (no cost)."""
    if not enabled or not available():
        return None
    configure("launchbay")
    return Tracing()
