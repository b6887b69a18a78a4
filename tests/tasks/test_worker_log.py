"""A worker at INFO logs a job's attempt once as it starts and once as it ends (with its
outcome), not Celery's own line per task received and done as well (tasks/app.py): the
session stack's real worker, its log as the supervisor keeps it."""

from __future__ import annotations

import httpx

from tests.support import Stack, wait_until


def test_an_attempt_is_logged_as_it_starts_and_ends_and_no_more(
    api: httpx.Client, stack: Stack
) -> None:
    job = api.post(
        "/api/v1/jobs",
        json={"executor": "builtin", "type": "fibonacci", "params": {"count": 3}},
        params={"wait": 30},
    ).json()
    assert job["status"] == "succeeded"
    logs = sorted((stack.settings.home / "service-logs").glob("worker*.log"))
    assert logs, "the stack's worker keeps no log"

    def lines() -> list[str]:
        return [ln for f in logs for ln in f.read_text().splitlines() if job["id"] in ln]

    seen = wait_until(
        lambda: [ln for ln in lines() if "ended: succeeded" in ln] and lines(),
        what="the attempt's end in the worker's log",
    )
    assert any(f"job {job['id']} attempt 1: builtin" in ln for ln in seen), seen
    assert not any("received" in ln or "succeeded in" in ln for ln in seen), seen
    assert len(seen) == 2, seen
