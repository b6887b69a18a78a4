"""Traces (the otel extra), with the SDK's in-memory exporter: one trace from submit to
the end, and ``TRACEPARENT`` in the job's environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.artifacts import ArtifactStore
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from orchestrator.tracing import Tracing, TracingListener, tracing_for
from workers.channels.direct import DirectChannel
from workers.launchers import LauncherSet

RUNNER = "runner-0123456789ab"


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[MemoryCore, InMemorySpanExporter, Settings]]:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    core = memory_core(settings)
    tracing = Tracing(provider.get_tracer("test"))
    core.dispatcher.tracing = tracing  # as LAUNCHBAY_TRACING=1 does, on a tracer of ours
    core.dispatcher.listeners.add(TracingListener(tracing))
    yield core, exporter, settings
    core.close()


def test_one_trace_from_submit_to_the_end_and_traceparent_in_the_env(traced) -> None:  # type: ignore[no-untyped-def]
    core, exporter, settings = traced
    job = core.dispatcher.submit(
        {"executor": "process", "command": ["sh", "-c", 'echo "tp=$TRACEPARENT"']}
    )
    channel = DirectChannel(core.dispatcher, RUNNER, ArtifactStore(settings.artifacts_dir))
    assert channel.run(job.id, 1, LauncherSet(settings)) == "succeeded"

    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == ["launchbay.submit", "launchbay.queued", "launchbay.launch", "launchbay.run"]
    submit = spans[0]
    assert {s.context.trace_id for s in spans} == {submit.context.trace_id}
    assert all(
        s.parent is not None and s.parent.span_id == submit.context.span_id for s in spans[1:]
    )
    run = spans[-1]
    assert run.attributes["launchbay.job_id"] == job.id
    assert run.attributes["launchbay.status"] == "succeeded"
    assert run.attributes["launchbay.exit_code"] == 0
    # The job got the submit span's context, and printed it.
    ctx = submit.context
    tp = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert core.store.get(job.id).spec.env["TRACEPARENT"] == tp
    assert f"tp={tp}" in core.events.lines(job.id)


def test_a_client_traceparent_makes_the_submit_its_child(traced) -> None:  # type: ignore[no-untyped-def]
    core, exporter, _ = traced
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = core.dispatcher.submit(
        {"executor": "process", "command": ["true"], "env": {"TRACEPARENT": theirs}}
    )
    (submit,) = exporter.get_finished_spans()
    assert f"{submit.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{submit.parent.span_id:016x}" == "b7ad6b7169203331"
    assert job.spec.env["TRACEPARENT"].split("-")[2] == f"{submit.context.span_id:016x}"


def test_off_by_default_costs_nothing(tmp_path: Path) -> None:
    assert tracing_for(Settings(home=tmp_path).tracing) is None
    core = memory_core(Settings(home=tmp_path))
    try:
        job = core.dispatcher.submit({"executor": "process", "command": ["true"]})
        assert "TRACEPARENT" not in job.spec.env
        assert core.dispatcher.tracing is None
    finally:
        core.close()
