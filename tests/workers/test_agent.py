"""The remote HTTP agent as a real subprocess against the real stack.

Jobs demand a tag unique to the test, so the stack's Celery worker (no tags) cannot take
them: only the agents started here can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.events import Events
from tests.support import Stack, wait_until

pytestmark = pytest.mark.slow  # real agents and leases: scheduled early under xdist
REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    id: str
    hostname: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _agents(stack: Stack) -> dict[str, dict[str, Any]]:
    return {
        w["hostname"]: w for w in stack.http.get("/api/v1/workers").json() if w["kind"] == "agent"
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def start_agent(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Start ``python -m workers.agent`` subprocesses; each is stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}

    def start(tags: list[str], executors: str = "builtin", capacity: int = 1) -> AgentProc:
        hostname = f"agent-{uuid.uuid4().hex[:8]}"
        home = tmp_path / hostname
        log = tmp_path / f"{hostname}.log"
        argv = [
            sys.executable,
            "-m",
            "workers.agent",
            "--url",
            stack.url,
            "--executors",
            executors,
            "--tags",
            ",".join(tags),
            "--capacity",
            str(capacity),
            "--hostname",
            hostname,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**env, "LAUNCHBAY_HOME": str(home)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)

        def registered() -> dict[str, Any] | None:
            assert proc.poll() is None, f"agent exited early:\n{log.read_text()}"
            return _agents(stack).get(hostname)

        info = wait_until(registered, timeout=30, interval=0.1, what=f"{hostname} to register")
        assert info["tags"] == sorted(tags)
        return AgentProc(proc, info["id"], hostname, log)

    yield start
    for proc in started:
        _stop(proc)


@pytest.fixture
def tag() -> str:
    return f"remote-{uuid.uuid4().hex[:10]}"


def countdown(tag: str, seconds: int, **extra: Any) -> dict[str, Any]:
    return {
        "executor": "builtin",
        "type": "countdown",
        "params": {"seconds": seconds},
        "demands": {"tags": [tag]},
        **extra,
    }


def log_lines(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    r = stack.http.get(f"/api/v1/jobs/{job_id}/logs")
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------ running jobs


def test_agent_runs_a_builtin_job_the_celery_worker_cannot_take(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str, stack_events: Events
) -> None:
    agent = start_agent([tag])
    job = stack.submit(countdown(tag, 2))
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "succeeded", (done, agent.output())
    assert done["runner_id"] == agent.id
    assert done["progress"] == {"percent": 100, "message": "Countdown complete!"}
    assert done["result"] == {"message": "Countdown complete!", "seconds": 2}
    assert [ln["line"] for ln in log_lines(stack, job["id"])] == ["2...", "1..."]
    types = [e["type"] for e in stack_events.read_events(job["id"])]
    assert types.count("claimed") == 1 and types.count("started") == 1
    assert "progress" in types and types[-1] == "succeeded"


def test_agent_runs_process_steps_with_progress_result_and_artifacts(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    agent = start_agent([tag], executors="builtin,process")
    job = stack.submit(
        {
            "executor": "process",
            "demands": {"tags": [tag]},
            "steps": [
                {
                    "name": "build",
                    "command": [
                        "sh",
                        "-c",
                        "echo building; "
                        "echo '::progress 50 half way'; mkdir -p out; "
                        "echo payload > out/report.txt",
                    ],
                },
                {
                    "name": "report",
                    "command": ["sh", "-c", "echo '::result {\"ok\": true}'; echo to-stderr >&2"],
                },
            ],
            "artifacts": ["out/*.txt"],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "succeeded", (done, agent.output())
    assert done["runner_id"] == agent.id
    assert done["result"] == {"ok": True}
    assert [(s["name"], s["exit_code"]) for s in done["steps"]] == [("build", 0), ("report", 0)]
    assert [a["name"] for a in done["artifacts"]] == ["out/report.txt"]
    got = stack.http.get(f"/api/v1/jobs/{job['id']}/artifacts/out/report.txt")
    assert got.status_code == 200 and got.content == b"payload\n"
    lines = {(ln["stream"], ln["line"]) for ln in log_lines(stack, job["id"])}
    assert ("stdout", "building") in lines and ("stderr", "to-stderr") in lines


def test_agent_reports_a_failing_process(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    start_agent([tag], executors="process")
    job = stack.submit(
        {
            "executor": "process",
            "demands": {"tags": [tag]},
            "command": ["sh", "-c", "echo oops >&2; exit 3"],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["exit_code"] == 3
    assert ("stderr", "oops") in {(ln["stream"], ln["line"]) for ln in log_lines(stack, job["id"])}


# ------------------------------------------------------------------ cancel and timeout


def test_cancel_stops_the_agent_job_and_frees_its_slot(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    agent = start_agent([tag], executors="builtin,process")
    job = stack.submit(
        {
            "executor": "process",
            "demands": {"tags": [tag]},
            "command": ["sh", "-c", "echo started; sleep 60"],
            "grace_s": 2,
        }
    )
    stack.wait_status(job["id"], "running", timeout=30)
    wait_until(lambda: log_lines(stack, job["id"]), timeout=15, what="the first log line")
    r = stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "cancelled", (done, agent.output())
    assert done["runner_id"] == agent.id
    # The capacity-1 agent is free again: the next job runs on it.
    nxt = stack.submit(countdown(tag, 1))
    assert stack.wait_status(nxt["id"], timeout=30)["status"] == "succeeded"


def test_agent_enforces_the_run_time_limit(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    start_agent([tag])
    job = stack.submit(countdown(tag, 30, timeout_s=1))
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "timed_out"
    assert done["error"] == "timed out after 1 s"


# ------------------------------------------------------------------ several agents


def test_two_agents_share_work_and_each_job_is_claimed_once(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str, stack_events: Events
) -> None:
    agents = {start_agent([tag]).id, start_agent([tag]).id}
    jobs = [stack.submit(countdown(tag, 1)) for _ in range(4)]
    for job in jobs:
        done = stack.wait_status(job["id"], timeout=60)
        assert done["status"] == "succeeded"
        assert done["runner_id"] in agents
        types = [e["type"] for e in stack_events.read_events(job["id"])]
        assert types.count("claimed") == 1 and types.count("started") == 1


def test_a_killed_agent_loses_its_jobs_to_the_reconciler(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    first = start_agent([tag], capacity=2)
    # A lost runner is the platform's failure: re-queued without spending max_attempts
    # (1 here), unless the job must never run twice.
    retried = stack.submit(countdown(tag, 8))
    once = stack.submit(countdown(tag, 8, max_lost=0))
    for job in (retried, once):
        assert stack.wait_status(job["id"], "running", timeout=30)["runner_id"] == first.id
    first.proc.send_signal(signal.SIGKILL)  # no heartbeat, no goodbye
    first.proc.wait(10)

    back = stack.wait_status(retried["id"], "queued", timeout=40)
    assert back["attempt"] == 2 and back["losses"] == 1 and "lease expired" in back["error"]
    failed = stack.wait_status(once["id"], timeout=40)
    assert failed["status"] == "failed" and "lease expired" in failed["error"]
    wait_until(
        lambda: first.hostname not in _agents(stack),
        timeout=30,
        what="the dead agent to leave the registry",
    )

    second = start_agent([tag])
    done = stack.wait_status(retried["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert done["attempt"] == 2 and done["runner_id"] == second.id


def test_sigterm_drains_then_unregisters(
    stack: Stack, start_agent: Callable[..., AgentProc], tag: str
) -> None:
    agent = start_agent([tag])
    job = stack.submit(countdown(tag, 3))
    stack.wait_status(job["id"], "running", timeout=30)
    agent.proc.send_signal(signal.SIGTERM)
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "succeeded"  # the running job was allowed to finish
    assert agent.proc.wait(30) == 0, agent.output()
    assert agent.hostname not in _agents(stack)


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--executors", "fortran"], "--executors"),
        (["--capacity", "0"], "--capacity"),
        (["--capacity", "many"], "--capacity"),
    ],
)
def test_bad_arguments_are_one_line_on_stderr(args: list[str], needle: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers.agent", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
