"""Every worker sweeps its host's leftover job processes (tasks/lifecycle.py).

Real processes, a real store, real workers: a process that escaped its job's group
outlives a SIGKILLed worker, and the next worker on the host kills it once the job is over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.lifecycle import sweep_host_processes
from tests.conftest import stack_settings
from tests.support import Stack, process_alive, start_stack, stop_stack, wait_until

_OWN_DB = 8


def _marked(job_id: str) -> subprocess.Popen[bytes]:
    """A process carrying a job's marks, as a step (or one it started) would."""
    env = {**os.environ, "LAUNCHBAY_JOB_ID": job_id, "LAUNCHBAY_ATTEMPT": "1"}
    return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def test_the_sweep_kills_only_processes_of_attempts_that_are_over(
    stack: Stack, spawned: list[subprocess.Popen[bytes]]
) -> None:
    live = stack.submit({"executor": "process", "command": ["sleep", "300"]})
    ended = stack.submit({"executor": "process", "command": ["true"]})
    assert stack.wait_status(ended["id"], timeout=60)["status"] == "succeeded"
    stack.wait_status(live["id"], "running", timeout=60)
    leftover = _marked(ended["id"])
    foreign = _marked(f"other-installation-{uuid.uuid4().hex}")  # not in this store
    spawned += [leftover, foreign]

    sweep_host_processes(stack.settings)

    assert leftover.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL)
    assert foreign.poll() is None
    assert stack.job(live["id"])["status"] == "running"  # its step was left alone
    stack.http.post(f"/api/v1/jobs/{live['id']}/cancel")
    assert stack.wait_status(live["id"], timeout=60)["status"] == "cancelled"


@pytest.mark.slow
def test_a_killed_workers_escaped_process_is_swept_by_the_next_worker(
    tmp_path_factory: pytest.TempPathFactory, valkey_url: str, tmp_path: Path
) -> None:
    home = tmp_path_factory.mktemp("sweep-home")
    # Our own Redis database: the session stack's worker must not take our tasks.
    settings = stack_settings(
        home, valkey_url.rsplit("/", 1)[0] + f"/{_OWN_DB}", lease_s=3, process_sweep_s=1
    )
    settings.ensure_dirs()
    tmp_path.chmod(0o1777)  # (as root, the job runs as an unprivileged user)
    pidfile = tmp_path / "escaped.pid"
    escaped = 0
    first = start_stack(settings)
    second: Stack | None = None
    try:
        first.wait_for_workers(1)
        job = first.submit(
            {
                "executor": "process",
                "command": [
                    "sh",
                    "-c",
                    f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' "
                    "</dev/null >/dev/null 2>&1 & exec sleep 300",
                ],
                "max_lost": 0,  # ends with its runner, instead of running again
            }
        )
        first.wait_status(job["id"], "running", timeout=60)
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30)
        escaped = int(pidfile.read_text())

        worker = next(s for s in first.supervisor.services if s.name == "worker")
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGKILL)  # the worker and its pool, at once
        worker.proc.wait(timeout=10)
        assert process_alive(escaped), "the escaped process should have outlived its worker"
        assert first.job(job["id"])["status"] == "running"  # nobody has noticed yet

        # A new worker on this host: it runs beat's reconcile, which ends the job (its
        # lease expired), and its next sweep kills what the job left behind.
        second = start_stack(settings, api=False, beat=False)
        lost = first.wait_status(job["id"], timeout=60)
        assert lost["status"] == "failed" and "lost" in (lost["error"] or ""), lost
        wait_until(lambda: not process_alive(escaped), timeout=30, what="the sweep to kill it")
    finally:
        if second is not None:
            stop_stack(second)
        stop_stack(first)
        if escaped and process_alive(escaped):
            os.kill(escaped, signal.SIGKILL)
