"""Dead workers strand nothing: a message one took but never started, and a retry waiting
out its backoff, both reach a live worker.

Real stack (the session's API, beat and Valkey) and workers of the test's own, reached
through a tag unique to the test and SIGKILLed as a crash or an OOM kill would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from orchestrator.routing import queue_name
from tests.support import Stack, TaggedWorker, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def tag() -> str:
    return f"fault-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(stack: Stack, tag: str) -> Iterator[list[TaggedWorker]]:
    made: list[TaggedWorker] = []
    yield made
    for w in made:
        w.stop()


def test_a_message_a_dead_worker_took_but_never_started_is_sent_again(
    stack: Stack, tag: str, workers: list[TaggedWorker]
) -> None:
    # One slot: the first job runs, the second waits prefetched in the worker's memory
    # (taken from its queue, in no list of the broker). Then the worker dies. (Workers
    # take no message ahead by default since issue 14's priorities: this one is told to.)
    # The window is the same without prefetch, only milliseconds long: a message taken
    # and its job not claimed yet.
    first = TaggedWorker(stack, tag, concurrency=1, worker_prefetch=True)
    workers.append(first)
    first.start()
    spec: dict[str, Any] = {"executor": "process", "demands": {"tags": [tag]}}
    slow_first = 'if [ "$LAUNCHBAY_ATTEMPT" = 1 ]; then sleep 120; fi'
    running = stack.submit({**spec, "command": ["sh", "-c", slow_first]})
    waiting = stack.submit({**spec, "command": ["true"]})
    stack.wait_status(running["id"], "running", timeout=30)
    wait_until(
        lambda: _taken(stack, waiting["id"], queue_name("process", [tag])),
        timeout=30,
        what="the second job's message to be prefetched by the worker",
    )
    first.kill()
    t0 = time.monotonic()

    second = TaggedWorker(stack, tag, concurrency=2)
    workers.append(second)
    second.start()
    # The reconciler's lost-message sweep sends it again: the job is queued in the store
    # and its message in no queue (the session's stack: LAUNCHBAY_RESEND_AFTER_S=5).
    done = stack.wait_status(waiting["id"], timeout=60)
    assert (done["status"], done["attempt"], done["runner_id"]) == (
        "succeeded",
        1,
        second.runner_id,
    )
    assert time.monotonic() - t0 < 45
    # The running one was lost with its worker: re-queued on the loss budget.
    lost = stack.wait_status(running["id"], timeout=60)
    assert (lost["status"], lost["attempt"], lost["losses"]) == ("succeeded", 2, 1)


def _taken(stack: Stack, job_id: str, queue: str) -> bool:
    """Whether queued ``job_id``'s message was taken from ``queue`` by a worker."""
    from orchestrator.broker import held_task_ids
    from tests.support import events_of

    ev = events_of(stack)
    try:
        queued = stack.job(job_id)["status"] == "queued"
        return queued and job_id not in held_task_ids(ev.r, [queue])
    finally:
        ev.r.close()


def test_retries_waiting_out_their_backoff_survive_the_death_of_every_worker(
    stack: Stack, tag: str, workers: list[TaggedWorker], tmp_path: Path
) -> None:
    # Each job fails its first attempt and succeeds its second, 15 s later. While all
    # three wait out that backoff, every worker is killed; the retries are due times in
    # the store, not ETA messages in a dead worker's memory.
    w = TaggedWorker(stack, tag, concurrency=3)
    workers.append(w)
    w.start()
    jobs = []
    for n in range(3):
        flag = tmp_path / f"tried-{n}"
        script = f'[ -e "{flag}" ] && exit 0; touch "{flag}"; exit 1'
        jobs.append(
            stack.submit(
                {
                    "executor": "process",
                    "command": ["sh", "-c", script],
                    "demands": {"tags": [tag]},
                    "max_attempts": 2,
                    "retry_backoff_s": 15,
                }
            )
        )
    for job in jobs:
        back = stack.wait_status(job["id"], "queued", timeout=30)
        if back["attempt"] == 1:  # caught before the claim: wait for the retry

            def retried(j: dict[str, Any] = job) -> dict[str, Any] | Literal[False]:
                return (x := stack.job(j["id"]))["attempt"] == 2 and x

            back = wait_until(retried, timeout=30, what="the retry")
        assert back["not_before"] is not None
    w.kill()
    t0 = time.monotonic()
    again = TaggedWorker(stack, tag, concurrency=3)
    workers.append(again)
    again.start()
    for job in jobs:
        done = stack.wait_status(job["id"], timeout=120)
        assert (done["status"], done["attempt"], done["runner_id"]) == (
            "succeeded",
            2,
            again.runner_id,
        )
    assert time.monotonic() - t0 < 120


def test_sigterm_drains_a_worker_finishing_what_fits_and_handing_back_the_rest(
    stack: Stack, tag: str, workers: list[TaggedWorker]
) -> None:
    import os
    import signal

    w = TaggedWorker(stack, tag, concurrency=2, drain_s=3)
    workers.append(w)
    w.start()
    spec: dict[str, Any] = {"executor": "process", "demands": {"tags": [tag]}}
    # max_lost 0: a lost runner would fail it, so only a hand-back can bring it back.
    long = stack.submit({**spec, "command": ["sh", "-c", _SLOW_FIRST], "max_lost": 0, "grace_s": 1})
    short = stack.submit({**spec, "command": ["sleep", "1.5"]})
    for job in (long, short):
        stack.wait_status(job["id"], "running", timeout=30)
    assert w.sup is not None
    [svc] = w.sup.services
    assert svc.proc is not None
    os.kill(svc.proc.pid, signal.SIGTERM)  # what compose, Kubernetes and KEDA send
    t0 = time.monotonic()

    done = stack.wait_status(short["id"], timeout=30)
    assert (done["status"], done["runner_id"]) == ("succeeded", w.runner_id)
    back = stack.wait_status(long["id"], "queued", timeout=30)
    assert time.monotonic() - t0 >= 2.5  # it had its drain period first
    assert (back["attempt"], back["handbacks"], back["losses"]) == (2, 1, 0)
    svc.proc.wait(30)  # then the worker exits by itself

    other = TaggedWorker(stack, tag, concurrency=1)
    workers.append(other)
    other.start()
    finished = stack.wait_status(long["id"], timeout=60)
    assert (finished["status"], finished["attempt"], finished["runner_id"]) == (
        "succeeded",
        2,
        other.runner_id,
    )
    record = stack.http.get(f"/api/v1/runs/{long['id']}").json()
    assert [a["outcome"] for a in record["attempts"]] == ["handed_back", "succeeded"]


_SLOW_FIRST = 'if [ "$LAUNCHBAY_ATTEMPT" = 1 ]; then sleep 120; fi'


def test_a_valkey_restart_mid_run_loses_no_job_and_no_line_of_a_live_stream(
    tmp_path: Path,
) -> None:
    """Valkey (with its append-only file) restarts while a job logs and an SSE client
    follows it: the job ends succeeded, and the client — reconnecting with Last-Event-ID
    as EventSource does — sees every line once, then the end."""
    import json
    import threading

    import httpx
    from httpx_sse import connect_sse

    from tests.chaos_support import ChaosStack

    chaos = ChaosStack(
        tmp_path,
        {"lease_s": 10, "reconcile_interval_s": 1, "runner_heartbeat_s": 1},
        valkey_fsync="always",
    )
    try:
        for name in ("api", "beat", "worker-1"):
            chaos.start(name)
        http = httpx.Client(base_url=chaos.url, timeout=10)
        wait_until(lambda: _answers(http), timeout=60, what="the API")
        wait_until(
            lambda: http.get("/api/v1/stats").json()["workers"]["count"] >= 1,
            timeout=60,
            what="the worker",
        )
        lines = 300
        script = f"for i in $(seq 1 {lines}); do echo line-$i; sleep 0.02; done"
        job = http.post(
            "/api/v1/jobs", json={"executor": "process", "command": ["sh", "-c", script]}
        ).json()
        seen: list[str] = []
        ends: list[str] = []
        reconnects = [0]
        errors: list[BaseException] = []

        def follow() -> None:
            last: str | None = None
            deadline = time.monotonic() + 90
            with httpx.Client(base_url=chaos.url, timeout=httpx.Timeout(5, read=15)) as c:
                while not ends and time.monotonic() < deadline:
                    headers = {"Last-Event-ID": last} if last else {}
                    try:
                        with connect_sse(
                            c, "GET", f"/api/v1/jobs/{job['id']}/events", headers=headers
                        ) as es:
                            if es.response.status_code == 204:
                                return
                            for ev in es.iter_sse():
                                if ev.id:
                                    last = ev.id
                                if ev.event == "log":
                                    seen.append(json.loads(ev.data)["line"])
                                elif ev.event in ("complete", "failed", "cancelled", "timed_out"):
                                    ends.append(ev.event)
                    except (httpx.HTTPError, OSError):
                        pass  # the API lost Valkey: reconnect, as EventSource does
                    if not ends:
                        reconnects[0] += 1
                        time.sleep(0.3)  # EventSource's retry pause, not synchronisation

        reader = threading.Thread(target=lambda: _catch(follow, errors), daemon=True)
        reader.start()
        wait_until(lambda: len(seen) >= 50, timeout=30, what="the first 50 lines")
        chaos.stop_valkey(hard=False)
        chaos.start_valkey()
        reader.join(120)
        assert not errors, errors
        done = wait_until(
            lambda: (
                (j := http.get(f"/api/v1/jobs/{job['id']}").json())["status"]
                in ("succeeded", "failed")
                and j
            ),
            timeout=60,
            what="the job to end",
        )
        assert (done["status"], done["attempt"]) == ("succeeded", 1)
        assert ends == ["complete"]
        assert seen == [f"line-{i}" for i in range(1, lines + 1)], (
            f"{len(seen)} lines, {reconnects[0]} reconnects"
        )
        http.close()
    finally:
        chaos.stop()


def _answers(http: Any) -> bool:
    try:
        return bool(http.get("/api/v1/healthz").status_code == 200)
    except Exception:
        return False


def _catch(fn: Any, errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)
