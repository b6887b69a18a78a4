"""``GET /jobs/{id}?wait=S`` and ``POST /jobs?wait=S`` (submit and wait in one request):
the answer comes when the job ends (woken by the fan-out hub, not by polling), or when
the wait runs out; bad values are 422s naming ``wait``, and lose nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.services import free_port
from tests.support import Stack, private_api

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


def test_submit_and_wait_answers_the_ended_job(stack: Stack, api: httpx.Client) -> None:
    r = api.post("/api/v1/jobs", params={"wait": 30}, json=COUNTDOWN, timeout=40)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "succeeded"
    assert job["result"]["message"] == "Countdown complete!"
    assert api.get(f"/api/v1/jobs/{job['id']}").json() == job  # (as the store holds it)


def test_many_submit_and_waits_at_once_each_get_their_own_end(
    stack: Stack, api: httpx.Client
) -> None:
    """Trivial jobs end within a millisecond or two of their submit: an end published
    before the submit's thread came back must still reach its waiter."""
    spec = {"executor": "builtin", "type": "fibonacci", "params": {"count": 3}}
    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=stack.url, timeout=60) as h:
            for _ in range(10):
                r = h.post("/api/v1/jobs", params={"wait": 30}, json=spec)
                with lock:
                    got.append(r.json())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 40 and len({j["id"] for j in got}) == 40
    assert {j["status"] for j in got} == {"succeeded"}
    assert all(j["result"]["numbers"] == [1, 1, 2] for j in got)


def test_submit_and_wait_that_runs_out_answers_the_queued_job(
    stack: Stack, api: httpx.Client
) -> None:
    r = api.post("/api/v1/jobs", params={"wait": 0.3}, json={**UNMATCHED, "match_timeout_s": 600})
    assert r.status_code == 201 and r.json()["status"] == "queued"
    assert r.json()["waiting"]  # (why it waits, as a plain submit answers)
    plain = api.post("/api/v1/jobs", json={**UNMATCHED, "match_timeout_s": 600}).json()
    assert r.json()["warnings"] == plain["warnings"] != []  # (no live runner has the tag)
    for job in (r.json(), plain):
        api.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_submit_and_wait_with_an_idempotency_key_waits_for_the_first_job(
    stack: Stack, api: httpx.Client
) -> None:
    key = {"Idempotency-Key": f"wait-{threading.get_ident()}-{id(api)}"}
    first = api.post("/api/v1/jobs", params={"wait": 30}, json=COUNTDOWN, headers=key)
    assert first.status_code == 201 and first.json()["status"] == "succeeded"
    again = api.post("/api/v1/jobs", params={"wait": 30}, json=COUNTDOWN, headers=key)
    assert again.status_code == 200 and again.json() == first.json()


@pytest.mark.parametrize("value", ["-1", "31", "soon", "nan"])
def test_a_bad_submit_wait_is_a_422_and_submits_nothing(
    stack: Stack, api: httpx.Client, value: str
) -> None:
    before = api.get("/api/v1/stats").json()
    r = api.post("/api/v1/jobs", params={"wait": value}, json=COUNTDOWN)
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["fields"]] == ["wait"]
    after = api.get("/api/v1/stats").json()
    assert after["total"] == before["total"]


def test_the_api_holds_a_wait_no_longer_than_its_cap(stack: Stack, tmp_path: Path) -> None:
    """``LAUNCHBAY_LONG_POLL_MAX_S`` (behind a proxy with a shorter idle timeout): a wait
    of 30 s is answered, the job as it stands, once the cap runs out. This API's jobs
    never run (no worker reads its Valkey database): without the cap, each request below
    would be held its 30 s, past the client's 10 s timeout."""
    settings = stack.settings.model_copy(
        update={
            "home": tmp_path / "home",
            "database_url": None,
            "redis_url": stack.settings.effective_redis_url.rsplit("/", 1)[0] + "/7",
            "api_port": free_port(),
            "long_poll_max_s": 0.3,
        }
    )
    settings.ensure_dirs()
    with (
        private_api(settings, tmp_path / "logs") as url,
        httpx.Client(base_url=url, timeout=10) as h,
    ):
        r = h.post("/api/v1/jobs", params={"wait": 30}, json=COUNTDOWN)
        assert r.status_code == 201 and r.json()["status"] == "queued"
        r = h.get(f"/api/v1/jobs/{r.json()['id']}", params={"wait": 30})
        assert r.status_code == 200 and r.json()["status"] == "queued"
