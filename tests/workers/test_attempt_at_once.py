"""Issue 13: a Celery worker's built-in job is claimed and started in one write; the
attempt then reports no start of its own. Every other executor still claims, launches and
then starts. On the in-memory core, in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import RunnerLaunchError
from orchestrator.events import drain_key
from orchestrator.job import Job, JobStatus
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from workers.channels.direct import DirectChannel
from workers.launchers import LauncherSet
from workers.testing import Run, ScriptedLauncher

RUNNER = "runner-0123456789ab"
WAIT_S = 2.0  # the bound of every wait: far above what any of them takes
BUILTIN = {"executor": "builtin", "type": "fibonacci", "params": {"count": 10}}


class _Counting(DirectChannel):
    """The direct channel, counting the starts the attempt reports."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.flush_s = self.cancel_poll_s = 0.005
        self.started_calls: list[str | None] = []

    def started(self, job: Job, handle: str | None = None) -> Job:
        self.started_calls.append(handle)
        return super().started(job, handle)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    # A short lease: the in-memory core's cancel reaches a run through its lease renewal.
    settings = Settings(home=tmp_path / "home", launch_retries=1, lease_s=0.03)
    settings.ensure_dirs()
    c = memory_core(settings)
    yield c
    c.close()


@pytest.fixture
def channel(core: MemoryCore, tmp_path: Path) -> _Counting:
    return _Counting(core.dispatcher, RUNNER, ArtifactStore(tmp_path / "artifacts"))


def test_a_builtin_job_is_claimed_and_started_in_one_write(
    core: MemoryCore, channel: _Counting
) -> None:
    job = core.dispatcher.submit(BUILTIN)
    assert channel.run(job.id, 1, LauncherSet(core.settings)) == "succeeded"
    assert channel.started_calls == []  # its claim started it
    done = core.store.get(job.id)
    assert done.status == JobStatus.succeeded and done.result is not None
    assert done.started_at == done.claimed_at
    transitions = [t for t in core.events.types(job.id) if t != "progress"]
    assert transitions == ["created", "claimed", "started", "succeeded"]
    claimed, started = (
        e["data"] for e in core.events.read_events(job.id) if e["type"] in ("claimed", "started")
    )
    assert (claimed["status"], claimed["started_at"]) == ("claimed", None)
    assert started["status"] == "running" and started["started_at"] is not None
    [attempt] = core.store.attempts(job.id)
    assert attempt.outcome == "succeeded" and attempt.runner_id == RUNNER
    assert attempt.started_at == attempt.claimed_at
    assert attempt.handle == f"builtin:{job.id}:1"  # written with the end


def test_a_process_job_still_reports_its_start(core: MemoryCore, channel: _Counting) -> None:
    job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
    launcher = ScriptedLauncher(Run(lines=["hi"]))
    assert channel.run(job.id, 1, launcher.launchers()) == "succeeded"
    assert channel.started_calls == launcher.handles and len(launcher.handles) == 1
    assert core.events.types(job.id) == ["created", "claimed", "started", "succeeded"]
    [attempt] = core.store.attempts(job.id)
    assert attempt.started_at is not None and attempt.handle == launcher.handles[0]


def test_a_started_builtin_job_can_be_cancelled(core: MemoryCore, channel: _Counting) -> None:
    job = core.dispatcher.submit({**BUILTIN, "grace_s": 3})
    launcher = ScriptedLauncher(Run(until_stopped=True))
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(channel.run, job.id, 1, launcher.launchers())
        assert launcher.wait_following(timeout=WAIT_S)
        core.dispatcher.cancel(job.id)
        assert running.result(timeout=WAIT_S) == "cancelled"
    assert channel.started_calls == []
    assert launcher.stops == [(launcher.handles[0], 3.0)]
    done = core.store.get(job.id)
    assert (done.status, done.error) == (JobStatus.cancelled, "cancelled")
    assert [a.outcome for a in core.store.attempts(job.id)] == ["cancelled"]


def test_a_started_builtin_job_whose_launch_fails_ends_failed(
    core: MemoryCore, channel: _Counting
) -> None:
    job = core.dispatcher.submit({**BUILTIN, "max_attempts": 2, "retry_backoff_s": 0})
    broken = ScriptedLauncher(launch_errors=[RunnerLaunchError("scripted", 1, "no thread")])
    assert channel.run(job.id, 1, broken.launchers()) == "failed"
    done = core.store.get(job.id)
    assert done.status == JobStatus.failed and "no thread" in (done.error or "")
    assert [a.outcome for a in core.store.attempts(job.id)] == ["failed"]


def test_a_started_builtin_job_is_handed_back_by_a_draining_worker(
    core: MemoryCore, channel: _Counting
) -> None:
    core.events.r.set(drain_key(RUNNER), f"{time.time() - 1:.3f}")
    job = core.dispatcher.submit({**BUILTIN, "max_attempts": 1, "max_lost": 0})
    launcher = ScriptedLauncher(Run())
    assert channel.run(job.id, 1, launcher.launchers()) == "handed_back"
    assert launcher.starts == []
    back = core.store.get(job.id)
    assert (back.status, back.attempt, back.handbacks, back.own_attempts) == (
        JobStatus.queued,
        2,
        1,
        1,
    )


def test_a_stale_message_for_a_builtin_job_claims_nothing(
    core: MemoryCore, channel: _Counting
) -> None:
    job = core.dispatcher.submit(BUILTIN)
    assert channel.run(job.id, 2, LauncherSet(core.settings)).startswith("skipped")
    assert core.store.get(job.id).status == JobStatus.queued
    assert core.store.attempts(job.id) == []
