"""Restart recovery: stop every Launchbay process, start them again on the same home.

One stack of our own (not the session ``stack``): API, worker and beat as real
subprocesses. Valkey (the session server) keeps running, as an external Redis would; what
restarts is Launchbay. Sequence, done once for the module:

1. stack 1: a process job that makes two artifacts ends; two builtin countdowns of 30 s
   (one may retry, one may not) are running when the whole stack is stopped;
2. the API alone (no worker): a job is submitted and stays queued; stopped again;
3. stack 2 on the same home — the tests below look at what it shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_artifacts import TRAVERSAL, raw_get
from tests.conftest import stack_settings
from tests.support import TERMINAL, Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.slow

TWO_FILES = {
    "executor": "process",
    "command": [
        "sh",
        "-c",
        "mkdir -p out && echo aaa > out/a.txt && echo bbb > out/b.txt && echo made two",
    ],
    "artifacts": ["out/*.txt"],
}
_OWN_DB = 7
LONG = {"executor": "builtin", "type": "countdown", "params": {"seconds": 30}}


@pytest.fixture(scope="module")
def restarted(
    tmp_path_factory: pytest.TempPathFactory, valkey_url: str
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("restart-home")
    # Our own Redis database: the session stack's worker must not take (and drop) our tasks.
    redis_url = valkey_url.rsplit("/", 1)[0] + f"/{_OWN_DB}"
    # A short lease so the reconciler notices the lost runner within seconds.
    settings = stack_settings(home, redis_url, lease_s=3)
    settings.ensure_dirs()
    seen: dict[str, Any] = {"settings": settings}

    first = start_stack(settings)
    try:
        first.wait_for_workers(1)
        done = first.submit(TWO_FILES)
        seen["done"] = first.wait_status(done["id"], timeout=60)
        # A lost runner spends the loss budget, not max_attempts (1 for both): the first
        # is re-queued, the second must never run twice.
        retry = first.submit(LONG)
        once = first.submit({**LONG, "max_lost": 0})
        seen["retry"] = first.wait_status(retry["id"], "running", timeout=60)
        seen["once"] = first.wait_status(once["id"], "running", timeout=60)
    finally:
        stop_stack(first)

    api_only = start_stack(settings, worker=False, beat=False)
    try:
        seen["queued"] = api_only.submit(
            {"executor": "builtin", "type": "fibonacci", "params": {"count": 10}}
        )
        assert api_only.job(seen["queued"]["id"])["status"] == "queued"
        # Still running in the store: nobody is left to say otherwise until beat returns.
        assert api_only.job(seen["retry"]["id"])["status"] == "running"
    finally:
        stop_stack(api_only)

    second = start_stack(settings)
    seen["stack"] = second
    try:
        yield seen
    finally:
        for key in ("retry", "once"):
            second.http.post(f"/api/v1/jobs/{seen[key]['id']}/cancel")
        stop_stack(second)


def test_ended_job_lists_and_serves_its_artifacts_after_restart(restarted: dict[str, Any]) -> None:
    stack: Stack = restarted["stack"]
    done = restarted["done"]
    assert done["status"] == "succeeded", done
    rec = stack.http.get(f"/api/v1/runs/{done['id']}").json()
    assert rec["status"] == "succeeded"
    listed = {a["name"]: a for a in rec["artifacts"]}
    assert set(listed) == {"out/a.txt", "out/b.txt"}
    assert listed == {a["name"]: a for a in done["artifacts"]}
    for name, content in (("out/a.txt", b"aaa\n"), ("out/b.txt", b"bbb\n")):
        r = stack.http.get(f"/api/v1/jobs/{done['id']}/artifacts/{name}")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == listed[name]["sha256"]
        assert listed[name]["sha256"] == hashlib.sha256(content).hexdigest()
    for name in TRAVERSAL:
        status, _, body = raw_get(stack, f"/api/v1/jobs/{done['id']}/artifacts/{name}")
        assert status == 400, (name, status)
        assert b"root:" not in body
    # Its log outlived the processes that wrote it.
    assert rec["log_lines"] == 1
    assert (Path(restarted["settings"].logs_dir) / f"{done['id']}.jsonl").exists()
    logs = stack.http.get(rec["links"]["logs"]).json()
    assert [ln["line"] for ln in logs["items"]] == ["made two"]
    # And it is still in the history.
    page = stack.http.get("/api/v1/runs", params={"status": "succeeded"}).json()
    assert done["id"] in [j["id"] for j in page["items"]]


def test_running_job_is_requeued_with_a_higher_attempt(restarted: dict[str, Any]) -> None:
    stack: Stack = restarted["stack"]
    job_id = restarted["retry"]["id"]
    assert restarted["retry"]["attempt"] == 1

    def moved_on() -> dict[str, Any] | None:
        j = stack.job(job_id)
        return j if j["attempt"] >= 2 or j["status"] in TERMINAL else None

    j = wait_until(moved_on, timeout=90, interval=0.2, what="the lost attempt to be re-queued")
    assert j["attempt"] == 2, j
    assert not (j["status"] == "running" and j["attempt"] == 1)
    rec = stack.http.get(f"/api/v1/runs/{job_id}").json()
    first = rec["attempts"][0]
    assert (first["attempt"], first["outcome"]) == (1, "lost")
    assert "lost" in first["error"]
    # The new attempt is delivered to the new worker.
    again = stack.wait_status(job_id, ["running", *TERMINAL], timeout=60)
    assert again["attempt"] == 2


def test_running_job_that_must_not_run_twice_is_failed(restarted: dict[str, Any]) -> None:
    stack: Stack = restarted["stack"]
    job = stack.wait_status(restarted["once"]["id"], TERMINAL, timeout=90)
    assert (job["status"], job["attempt"]) == ("failed", 1)
    assert "lost" in job["error"]


def test_job_queued_while_workers_were_down_is_delivered(restarted: dict[str, Any]) -> None:
    stack: Stack = restarted["stack"]
    job = stack.wait_status(restarted["queued"]["id"], timeout=90)
    assert job["status"] == "succeeded"
    assert job["result"]["count"] == 10
