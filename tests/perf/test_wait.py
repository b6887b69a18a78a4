"""``GET /jobs/{id}?wait=S``: the answer comes when the job ends (woken by the fan-out
hub, not by polling), or when the wait runs out; bad values are 422s naming ``wait``."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.support import Stack

COUNTDOWN = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}
# No worker has this tag: the job stays queued until its match deadline.
UNMATCHED = {"executor": "builtin", "type": "countdown", "demands": {"tags": ["nobody-has-it"]}}


def test_wait_answers_with_the_ended_job(stack: Stack, api: httpx.Client) -> None:
    job = stack.submit(COUNTDOWN)
    r = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}, timeout=40)
    assert r.status_code == 200
    assert r.json()["status"] == "succeeded"
    assert r.json()["result"]["message"] == "Countdown complete!"


def test_wait_on_an_ended_job_answers_it(stack: Stack, api: httpx.Client) -> None:
    job = stack.submit(COUNTDOWN)
    done = stack.wait_status(job["id"])
    r = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}, timeout=40)
    assert r.status_code == 200 and r.json() == done


def test_a_wait_that_runs_out_answers_the_job_as_it_stands(stack: Stack, api: httpx.Client) -> None:
    job = stack.submit({**UNMATCHED, "match_timeout_s": 600})
    try:
        r = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 0.3})
        assert r.status_code == 200 and r.json()["status"] == "queued"
    finally:
        api.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_a_cancel_wakes_the_waiter(stack: Stack, api: httpx.Client) -> None:
    """The waiter asks for 30 s: only the cancel's event can make it answer ``cancelled``
    (a wait that ran out would answer ``queued``)."""
    job = stack.submit({**UNMATCHED, "match_timeout_s": 600})
    got: dict[str, Any] = {}
    parked = threading.Event()

    def waiter() -> None:
        with httpx.Client(base_url=stack.url, timeout=60) as h:
            parked.set()
            got["job"] = h.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()

    t = threading.Thread(target=waiter)
    t.start()
    try:
        assert parked.wait(10)
        # The waiter may not be subscribed yet when the cancel lands: it then reads the
        # store after subscribing and sees the cancel there. Either way: cancelled.
        r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 200
    finally:
        t.join(60)
    assert not t.is_alive()
    assert got["job"]["status"] == "cancelled"


@pytest.mark.parametrize("value", ["-1", "31", "soon", "nan"])
def test_a_bad_wait_is_a_422_naming_the_field(api: httpx.Client, value: str) -> None:
    r = api.get("/api/v1/jobs/whatever", params={"wait": value})
    assert r.status_code == 422, r.text
    assert "wait" in r.text


def test_wait_on_an_unknown_job_is_a_404(api: httpx.Client) -> None:
    r = api.get("/api/v1/jobs/no-such-job", params={"wait": 5})
    assert r.status_code == 404
