"""One behaviour table, run through a real Celery worker and a real ``launchbay agent``.

Both channels run every attempt through ``workers/attempt.py`` and end it through the
core (``orchestrator/lifecycle.py``), so each row must end with the same status, attempt
number and error text on both. Each channel gets a runner of its own, started here and
reached through a tag unique to the test, so the session stack's worker takes none of
these jobs; the SIGKILL row kills that runner and starts a fresh one to finish the job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Stack, TaggedWorker, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# A process that ignores SIGTERM, so a stop has to wait out the grace and kill it: the
# window in which a second stop reason (here the run-time limit) arrives.
_DEAF = ["sh", "-c", 'trap "" TERM; sleep 30 & wait; sleep 30']


def _rows() -> dict[str, dict[str, Any]]:
    """name → (spec, expected (status, attempt, error))."""
    return {
        "success": {
            "spec": {"executor": "process", "command": ["sh", "-c", "echo hello"]},
            "want": ("succeeded", 1, None),
        },
        "failure, 3 attempts": {
            "spec": {
                "executor": "process",
                "command": ["sh", "-c", "exit 3"],
                "max_attempts": 3,
                "retry_backoff_s": 0,
            },
            "want": ("failed", 3, "exited with code 3"),
        },
        "launch failure, 3 attempts": {
            "spec": {
                "executor": "process",
                "command": ["/nonexistent/launchbay-no-such-program"],
                "max_attempts": 3,
                "retry_backoff_s": 0,
            },
            # No such program is permanent: another attempt would fail the same way.
            "want": (
                "failed",
                1,
                "process launcher failed on launch attempt 1: FileNotFoundError: [Errno 2] "
                "No such file or directory: '/nonexistent/launchbay-no-such-program'",
            ),
        },
        "timeout": {
            "spec": {"executor": "process", "command": ["sleep", "30"], "timeout_s": 1},
            "want": ("timed_out", 1, "timed out after 1 s"),
        },
        "cancel while running": {
            "spec": {"executor": "process", "command": ["sleep", "30"]},
            "cancel": True,
            "want": ("cancelled", 1, "cancelled"),
        },
        "timeout racing cancel": {
            # Cancelled as soon as it runs; the job ignores SIGTERM, so its run-time limit
            # passes during the grace period. The first reason to stop wins. (The limit
            # leaves the cancel — an agent hears it with its next heartbeat — 8 s to land
            # first, even on a loaded machine.)
            "spec": {"executor": "process", "command": _DEAF, "timeout_s": 8, "grace_s": 12},
            "cancel": True,
            "want": ("cancelled", 1, "cancelled"),
        },
    }


class _Agent:
    """A ``python -m workers.agent`` subprocess with a home of its own."""

    def __init__(self, stack: Stack, tag: str, tmp: Path) -> None:
        self.stack, self.tag, self.tmp = stack, tag, tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> str:
        hostname = f"agent-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
        argv = [sys.executable, "-m", "workers.agent", "--url", self.stack.url]
        argv += ["--executors", "builtin,process", "--tags", self.tag, "--capacity", "6"]
        argv += ["--hostname", hostname]
        with (self.tmp / f"{hostname}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**env, "LAUNCHBAY_HOME": str(self.tmp / hostname)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(self.proc)

        def listed() -> str | None:
            assert self.proc is not None and self.proc.poll() is None, "agent exited early"
            for w in self.stack.http.get("/api/v1/workers").json():
                if w["hostname"] == hostname:
                    return str(w["id"])
            return None

        return wait_until(listed, timeout=30, interval=0.1, what=f"{hostname} to register")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def _wait_listed(stack: Stack, runner_id: str) -> None:
    wait_until(
        lambda: any(w["id"] == runner_id for w in stack.http.get("/api/v1/workers").json()),
        timeout=60,
        interval=0.2,
        what=f"runner {runner_id} to register",
    )


@pytest.fixture
def runners(stack: Stack, tmp_path: Path) -> Iterator[dict[str, TaggedWorker | _Agent]]:
    """A Celery worker and an agent, each reached through a tag of its own."""
    made: dict[str, TaggedWorker | _Agent] = {
        "celery": TaggedWorker(stack, f"agree-{uuid.uuid4().hex[:10]}"),
        "agent": _Agent(stack, f"agree-{uuid.uuid4().hex[:10]}", tmp_path),
    }
    try:
        yield made
    finally:
        for r in made.values():
            r.stop()


def _outcome(job: dict[str, Any]) -> tuple[Any, ...]:
    return (job["status"], job["attempt"], job["error"])


def test_the_behaviour_table_is_the_same_on_both_channels(
    runners: dict[str, TaggedWorker | _Agent], stack: Stack
) -> None:
    rows = _rows()
    first = {ch: r.start() for ch, r in runners.items()}
    ids = {
        (ch, name): stack.submit({**row["spec"], "demands": {"tags": [r.tag]}})["id"]
        for ch, r in runners.items()
        for name, row in rows.items()
    }
    # Killed mid-run below: attempt 1 runs until then, a later attempt ends at once.
    slow_first = 'if [ "$LAUNCHBAY_ATTEMPT" = 1 ]; then sleep 120; fi'
    lost = {
        ch: stack.submit(
            {
                "executor": "process",
                "command": ["sh", "-c", slow_first],
                "demands": {"tags": [r.tag]},
            }
        )["id"]
        for ch, r in runners.items()
    }
    to_cancel = {job_id for (_ch, name), job_id in ids.items() if rows[name].get("cancel")}
    while to_cancel:  # each as soon as it runs, whichever channel comes first
        running = {j for j in to_cancel if stack.job(j)["status"] == "running"}
        for job_id in running:
            resp = stack.http.post(f"/api/v1/jobs/{job_id}/cancel")
            assert resp.status_code == 200, (resp.text, stack.job(job_id))  # (how it ended, if so)
        to_cancel -= running
        if to_cancel:
            wait_until(
                lambda left=frozenset(to_cancel): any(  # type: ignore[misc]
                    stack.job(j)["status"] != "queued" for j in left
                ),
                timeout=30,
                what="the jobs to cancel to start",
            )
    got: dict[str, dict[str, tuple[Any, ...]]] = {ch: {} for ch in runners}
    for (ch, name), job_id in ids.items():
        got[ch][name] = _outcome(stack.wait_status(job_id, timeout=60))

    # The runner is SIGKILLed mid-run: a lost runner is the platform's failure, so the
    # job is re-queued on its loss budget and a fresh runner finishes it as attempt 2.
    for ch, r in runners.items():
        assert stack.wait_status(lost[ch], "running", timeout=30)["runner_id"] == first[ch]
        r.kill()
    for ch in runners:
        back = stack.wait_status(lost[ch], "queued", timeout=30)
        assert back["losses"] == 1 and "lease expired" in back["error"]
    second = {ch: r.start() for ch, r in runners.items()}
    for ch in runners:
        done = stack.wait_status(lost[ch], timeout=60)
        assert done["runner_id"] == second[ch]
        got[ch]["runner SIGKILLed mid-run"] = _outcome(done)
        record = stack.http.get(f"/api/v1/runs/{lost[ch]}").json()
        assert [(a["attempt"], a["runner_id"], a["outcome"]) for a in record["attempts"]] == [
            (1, first[ch], "lost"),
            (2, second[ch], "succeeded"),
        ]

    want = {name: row["want"] for name, row in rows.items()}
    want["runner SIGKILLed mid-run"] = ("succeeded", 2, None)
    assert got["celery"] == got["agent"]
    assert got["celery"] == want
