"""One behaviour table, run through both channels of an attempt on the in-memory core:
the direct channel (a Celery worker's) and the HTTP channel (a remote agent's), the latter
talking to the real ``/launcher`` routes in-process. Each row must end the same way on
both: the same status, attempt number, error text, attempt outcomes and artifacts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
import pytest
from celery import Celery
from fastapi import FastAPI

from api import errors
from api.app import API_PREFIX
from api.routes import launcher as launcher_routes
from api.state import AppState
from orchestrator.agent_keys import AgentKeys
from orchestrator.artifacts import ArtifactStore
from orchestrator.client import LaunchbayClient
from orchestrator.errors import RunnerLaunchError
from orchestrator.job import Job
from orchestrator.lifecycle import Renewal
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from workers.attempt import Attempt
from workers.channels.direct import DirectChannel
from workers.channels.http import HttpChannel
from workers.testing import Run, ScriptedLauncher

WAIT_S = 2.0
TICK_S = 0.005  # how often an attempt flushes and looks for a cancel, instead of 0.05–0.25

During = Callable[[MemoryCore, ScriptedLauncher, str], None]


# ---------------------------------------------------------------- the table


def _cancel_while_running(core: MemoryCore, launcher: ScriptedLauncher, job_id: str) -> None:
    assert launcher.wait_following(timeout=WAIT_S)
    core.dispatcher.cancel(job_id)


def _cancel_in_the_timeouts_grace(
    core: MemoryCore, launcher: ScriptedLauncher, job_id: str
) -> None:
    assert launcher.wait_stopped(timeout=WAIT_S)  # the run-time limit stopped it
    core.dispatcher.cancel(job_id)
    launcher.release()


def _lose_the_runner(core: MemoryCore, launcher: ScriptedLauncher, job_id: str) -> None:
    assert launcher.wait_following(timeout=WAIT_S)
    assert core.lifecycle.lose(core.store.get(job_id)) is not None


@dataclass(frozen=True)
class Row:
    spec: dict[str, Any]
    status: str
    attempt: int
    error: str | None
    outcomes: list[str]  # of every attempt, in order
    runs: tuple[Run, ...] = (Run(),)
    launch_errors: tuple[BaseException, ...] = ()
    during: During | None = None  # what happens while the first attempt runs
    artifacts: list[str] = field(default_factory=list)
    lines: list[str] | None = None


TABLE: dict[str, Row] = {
    "success": Row(
        spec={"artifacts": ["*.txt"]},
        runs=(Run(lines=["hi", "::progress 50 half"], artifacts={"out.txt": b"ok"}),),
        status="succeeded",
        attempt=1,
        error=None,
        outcomes=["succeeded"],
        artifacts=["out.txt"],
        lines=["hi", "::progress 50 half"],
    ),
    "failure-with-max-attempts-3": Row(
        spec={"max_attempts": 3, "retry_backoff_s": 0},
        runs=(Run(exit_code=2),),
        status="failed",
        attempt=3,
        error="exited with code 2",
        outcomes=["retried", "retried", "failed"],
    ),
    "transient-launch-failure-outlasting-the-retries": Row(
        spec={"max_attempts": 2, "retry_backoff_s": 0},
        launch_errors=(RunnerLaunchError("scripted", 1, "503", transient=True),) * 3,
        status="succeeded",
        attempt=2,
        error=None,
        outcomes=["retried", "succeeded"],
    ),
    "permanent-launch-failure-with-max-attempts-3": Row(
        spec={"max_attempts": 3},
        launch_errors=(RunnerLaunchError("scripted", 1, "no such image"),),
        status="failed",
        attempt=1,
        error="scripted launcher failed on launch attempt 1: no such image",
        outcomes=["failed"],
    ),
    "timeout": Row(
        spec={"timeout_s": 0.05, "max_attempts": 3},
        runs=(Run(until_stopped=True),),
        status="timed_out",
        attempt=1,
        error="timed out after 0.05 s",
        outcomes=["timed_out"],
    ),
    "cancel-while-running": Row(
        spec={"max_attempts": 3},
        runs=(Run(until_stopped=True),),
        during=_cancel_while_running,
        status="cancelled",
        attempt=1,
        error="cancelled",
        outcomes=["cancelled"],
    ),
    "cancel-in-the-timeouts-grace": Row(
        spec={"timeout_s": 0.05},
        runs=(Run(until_stopped=True, exit_after_stop_s=None),),
        during=_cancel_in_the_timeouts_grace,
        status="timed_out",
        attempt=1,
        error="timed out after 0.05 s",
        outcomes=["timed_out"],
    ),
    # The cancel must be heard before the run-time limit for this row: the agent hears it
    # from a heartbeat answer (every 10 ms here), which took over 0.15 s once on a loaded
    # CI machine; the run then exits after the limit, in the cancel's grace.
    "timeout-in-the-cancels-grace": Row(
        spec={"timeout_s": 0.6},
        runs=(Run(until_stopped=True, exit_after_stop_s=0.9),),
        during=_cancel_while_running,
        status="cancelled",
        attempt=1,
        error="cancelled",
        outcomes=["cancelled"],
    ),
    "lost-runner": Row(
        spec={},
        runs=(Run(until_stopped=True), Run()),
        during=_lose_the_runner,
        status="succeeded",
        attempt=2,
        error=None,
        outcomes=["lost", "succeeded"],
    ),
}


# ---------------------------------------------------------------- the two channels


class Runner(Protocol):
    def run(self, job_id: str, attempt: int, launcher: ScriptedLauncher) -> str:
        """Take the job's attempt and run it to its end; the attempt's outcome."""


@dataclass
class Direct:
    """A Celery worker's side: the task claims the attempt its message names."""

    core: MemoryCore
    artifacts: ArtifactStore

    def run(self, job_id: str, attempt: int, launcher: ScriptedLauncher) -> str:
        channel = DirectChannel(self.core.dispatcher, "runner-0123456789ab", self.artifacts)
        channel.flush_s = channel.cancel_poll_s = TICK_S
        return channel.run(job_id, attempt, launcher.launchers())


class InProcess(httpx.BaseTransport):
    """A synchronous transport into an ASGI app in this process: each request runs on one
    event loop in a thread of its own, through httpx's ASGI transport. Thread-safe."""

    def __init__(self, app: FastAPI) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asgi", daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()  # an upload's generator, drained here on the caller's thread
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def send() -> httpx.Response:
            answer = await self._asgi.handle_async_request(copy)
            content = await answer.aread()
            return httpx.Response(answer.status_code, headers=answer.headers, content=content)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout=WAIT_S)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=WAIT_S)
        self._loop.close()


class Http:
    """A remote agent's side: it registers, polls for the job and heartbeats while the
    attempt runs, as ``workers/agent/daemon.py`` does, over the real routes."""

    def __init__(self, core: MemoryCore, transport: InProcess) -> None:
        self.core = core
        self.client = LaunchbayClient("http://launchbay.test", transport=transport)
        got = self.client.request_json(
            "POST", "/launcher/register", json={"executors": ["process"], "capacity": 2}
        )
        self.id: str = got["launcher_id"]
        self.client.set_token(got["agent_key"])  # every later call, as this agent
        self.heartbeat_s = float(got["heartbeat_interval_s"])
        self.channel = HttpChannel(self.client, self.id, self.heartbeat_s)
        self.channel.flush_s = self.channel.cancel_poll_s = TICK_S

    def run(self, job_id: str, attempt: int, launcher: ScriptedLauncher) -> str:
        answer = self.client.request(
            "GET", "/launcher/jobs", params={"launcher_id": self.id, "wait": 0}
        )
        assert answer.status_code == 200, "the agent was handed no job"
        job = Job.model_validate(answer.json()["job"])
        assert (job.id, job.attempt) == (job_id, attempt)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, done), daemon=True)
        beat.start()
        try:
            return Attempt(self.channel, launcher.launchers(), self.core.settings, job).run()
        finally:
            done.set()
            beat.join(timeout=WAIT_S)

    def _heartbeat(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            got = self.client.request_json(
                "POST", "/launcher/heartbeat", json={"launcher_id": self.id, "jobs": [job_id]}
            )
            self.channel.heard(got["cancel"], got["lost"])


def _app(core: MemoryCore, artifacts: ArtifactStore) -> FastAPI:
    """The launcher routes as the API serves them, on the memory core."""
    app = FastAPI()
    app.state.lb = AppState(
        settings=core.settings,
        store=core.store,
        events=core.events,
        celery=cast(Celery, core.celery),
        dispatcher=core.dispatcher,
        runners=core.runners,
        artifacts=artifacts,
        agent_keys=AgentKeys(core.store.engine),
    )
    errors.install(app)
    app.include_router(launcher_routes.router, prefix=API_PREFIX)
    return app


@dataclass
class Bench:
    core: MemoryCore
    runner: Runner


@pytest.fixture(params=["direct", "http"])
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    settings = Settings(
        home=tmp_path / "home",
        launch_retries=3,
        launch_backoff_s=0.001,
        # Leases renewed every 10 ms: the direct channel renews every lease_s/3, the agent
        # heartbeats (and so hears of cancels and losses) every min(that, runner_heartbeat_s).
        lease_s=0.03,
        runner_heartbeat_s=0.01,
    )
    settings.ensure_dirs()
    core = memory_core(settings)
    artifacts = ArtifactStore(settings.artifacts_dir)
    try:
        if request.param == "direct":
            yield Bench(core, Direct(core, artifacts))
        else:
            transport = InProcess(_app(core, artifacts))
            try:
                yield Bench(core, Http(core, transport))
            finally:
                transport.close()
    finally:
        core.close()


@pytest.mark.parametrize("row", list(TABLE.values()), ids=list(TABLE))
def test_the_behaviour_table(bench: Bench, row: Row) -> None:
    core = bench.core
    job = core.dispatcher.submit({"executor": "process", "command": ["x"], **row.spec})
    launcher = ScriptedLauncher(*row.runs, launch_errors=row.launch_errors)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(bench.runner.run, job.id, 1, launcher)
        if row.during is not None:
            row.during(core, launcher, job.id)
        first.result(timeout=WAIT_S)
    for _ in range(5):  # the next attempts, while it is queued again
        now = core.store.get(job.id)
        if now.status != "queued":
            break
        bench.runner.run(job.id, now.attempt, launcher)
    final = core.store.get(job.id)
    assert (final.status, final.attempt, final.error) == (row.status, row.attempt, row.error)
    assert [a.outcome for a in core.store.attempts(job.id)] == row.outcomes
    assert [a.name for a in final.artifacts] == row.artifacts
    if row.lines is not None:
        assert core.events.lines(job.id) == row.lines


# ---------------------------------------------------------------- the HTTP channel's memory


def test_what_the_agent_heard_about_one_attempt_does_not_stop_the_next(tmp_path: Path) -> None:
    # One agent runs attempt 1, loses it, and is handed attempt 2 of the same job (the only
    # agent there is); or its heartbeat's answer, sent while attempt 1 ran, arrives once
    # attempt 1 has reported its end. Neither may stop attempt 2.
    core = memory_core(Settings(home=tmp_path / "home"))
    try:
        first = core.dispatcher.submit({"executor": "process", "command": ["x"]})
        second = first.model_copy(update={"attempt": 2})
        with LaunchbayClient("http://launchbay.test") as client:
            lost = HttpChannel(client, "runner-0123456789ab", heartbeat_s=1)
            lost.cancel_requested(first)  # attempt 1 runs here
            lost.heard(cancel=[], lost=[first.id])
            assert not lost.renew(first).held
            assert lost.renew(second).held

            late = HttpChannel(client, "runner-0123456789ab", heartbeat_s=1)
            late.cancel_requested(first)
            late.forget(first.id)  # attempt 1 reported its end
            late.heard(cancel=[first.id], lost=[first.id])  # a heartbeat answer, late
            assert late.renew(second) == Renewal(held=True, cancel=False)
            assert not late.cancel_requested(second)
    finally:
        core.close()
