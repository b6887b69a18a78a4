"""``launchbay jobs status ID --wait S``: the answer comes once the job has ended (the
server long-polls; the CLI does not poll), or as it stands after S seconds."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli
from tests.support import Stack

COUNTDOWN = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}
UNMATCHED = {**COUNTDOWN, "demands": {"tags": ["nobody-has-it"]}, "match_timeout_s": 600}


def test_status_wait_answers_the_ended_job(cli: Cli, stack: Stack) -> None:
    job = stack.submit(COUNTDOWN)
    r = cli("jobs", "status", job["id"], "--wait", "30", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["status"] == "succeeded"


def test_status_wait_that_runs_out_answers_the_job_as_it_stands(cli: Cli, stack: Stack) -> None:
    job = stack.submit(UNMATCHED)
    try:
        r = cli("jobs", "status", job["id"], "--wait", "0.5", "--json")
        assert r.code == 0, r
        assert json.loads(r.out)["status"] == "queued"
    finally:
        stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_a_negative_wait_is_a_usage_error(cli: Cli, stack: Stack) -> None:
    job = stack.submit(COUNTDOWN)
    r = cli("jobs", "status", job["id"], "--wait", "-1")
    assert r.code == 2, r
    assert "--wait" in r.err
