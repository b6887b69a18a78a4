"""The attempt runner's own duties, through the real stack."""

from __future__ import annotations

from datetime import datetime, timedelta

from orchestrator.events import Events
from tests.support import Stack


def test_coalesced_progress_still_delivers_the_last_update(stack: Stack) -> None:
    # Three updates within a few milliseconds: the runner coalesces them, but the last
    # one must still be what the job shows at the end (a failed one: a job that succeeds
    # ends at 100 % whatever it said last).
    job = stack.submit(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "echo '::progress 33 one'; echo '::progress 66 two'; echo '::progress 99 three';"
                " exit 1",
            ],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["progress"] == {"percent": 99.0, "message": "three"}


def test_failed_attempt_is_retried_up_to_max_attempts(stack: Stack) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "max_attempts": 2,
            "retry_backoff_s": 0,
            "command": ["sh", "-c", "echo attempt $LAUNCHBAY_ATTEMPT; exit 4"],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["attempt"] == 2 and done["exit_code"] == 4
    lines = [i["line"] for i in stack.http.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"]]
    assert lines == ["attempt 1", "attempt 2"]


def test_retry_that_succeeds_ends_succeeded(stack: Stack) -> None:
    # Fails on attempt 1, succeeds on attempt 2.
    job = stack.submit(
        {
            "executor": "process",
            "max_attempts": 3,
            "retry_backoff_s": 0,
            "command": ["sh", "-c", "test $LAUNCHBAY_ATTEMPT -ge 2"],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "succeeded" and done["attempt"] == 2


def test_a_retry_waits_out_its_backoff(stack: Stack, stack_events: Events) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "max_attempts": 2,
            "retry_backoff_s": 1.5,
            "command": ["sh", "-c", "exit 4"],
        }
    )
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "failed" and done["attempt"] == 2
    history = stack_events.read_events(job["id"])
    requeued = next(e for e in history if e["type"] == "requeued")
    claimed_again = next(e for e in history if e["type"] == "claimed" and e["data"]["attempt"] == 2)
    not_before = datetime.fromisoformat(requeued["data"]["not_before"])
    assert not_before - datetime.fromisoformat(requeued["ts"]) >= timedelta(seconds=1.4)
    # Never early (it may be late on a busy machine, so this is a lower bound only).
    assert datetime.fromisoformat(claimed_again["data"]["claimed_at"]) >= not_before
