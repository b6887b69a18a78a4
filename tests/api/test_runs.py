"""Run history over the real API: list, filters, jsonl, full record, delete, cleanup."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.events import Events, connect, job_events_key, job_logs_key
from tests.support import Stack


def fib(tag: str, kind: str) -> dict[str, Any]:
    return {
        "executor": "builtin",
        "type": "fibonacci",
        "params": {"count": 5},
        "labels": {"t": tag, "kind": kind},
    }


def proc(tag: str, kind: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "executor": "process",
        "command": ["sh", "-c", script],
        "labels": {"t": tag, "kind": kind},
        **extra,
    }


def ids(page: dict[str, Any]) -> list[str]:
    return [j["id"] for j in page["items"]]


@pytest.fixture
def history(stack: Stack) -> dict[str, Any]:
    """Four ended runs with a unique label, submitted one after another."""
    tag = uuid.uuid4().hex
    specs = [
        fib(tag, "x"),
        fib(tag, "y"),
        proc(tag, "x", "echo hi"),
        proc(tag, "y", "echo oops >&2; exit 3"),
    ]
    jobs = []
    for spec in specs:
        job = stack.submit(spec)
        jobs.append(stack.wait_status(job["id"], timeout=60))
    return {"tag": tag, "jobs": jobs}


def test_list_includes_finished_runs_newest_first(
    api: httpx.Client, history: dict[str, Any]
) -> None:
    tag, jobs = history["tag"], history["jobs"]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "succeeded", "failed"]
    page = api.get("/api/v1/runs", params={"label": f"t={tag}"}).json()
    assert page["total"] == 4
    assert ids(page) == [j["id"] for j in reversed(jobs)]
    assert (page["limit"], page["offset"]) == (50, 0)
    first = page["items"][0]
    # The full record, not a summary.
    assert first["spec"]["command"] == ["sh", "-c", "echo oops >&2; exit 3"]
    assert first["exit_code"] == 3
    assert first["finished_at"] and first["duration_s"] is not None


def test_list_filters(api: httpx.Client, history: dict[str, Any]) -> None:
    tag, jobs = history["tag"], history["jobs"]
    fib_x, fib_y, proc_x, proc_y = (j["id"] for j in jobs)

    def q(**params: Any) -> list[str]:
        r = api.get("/api/v1/runs", params={"label": [f"t={tag}"], **params})
        assert r.status_code == 200, r.text
        return ids(r.json())

    assert q(status="failed") == [proc_y]
    assert q(status=["failed", "succeeded"]) == [proc_y, proc_x, fib_y, fib_x]
    assert q(status="running") == []
    assert q(executor="process") == [proc_y, proc_x]
    assert q(executor="builtin") == [fib_y, fib_x]
    r = api.get("/api/v1/runs", params={"label": [f"t={tag}", "kind=x"]})
    assert ids(r.json()) == [proc_x, fib_x]
    assert q(since=jobs[1]["created_at"]) == [proc_y, proc_x, fib_y]
    assert q(until=jobs[1]["created_at"]) == [fib_x]
    assert q(since=jobs[1]["created_at"], until=jobs[3]["created_at"]) == [proc_x, fib_y]


def test_pagination(api: httpx.Client, history: dict[str, Any]) -> None:
    tag, jobs = history["tag"], history["jobs"]
    newest_first = [j["id"] for j in reversed(jobs)]
    page = api.get("/api/v1/runs", params={"label": f"t={tag}", "limit": 2, "offset": 1}).json()
    assert page["total"] == 4
    assert (page["limit"], page["offset"]) == (2, 1)
    assert ids(page) == newest_first[1:3]
    page = api.get("/api/v1/runs", params={"label": f"t={tag}", "limit": 2, "offset": 4}).json()
    assert page["items"] == [] and page["total"] == 4


@pytest.mark.parametrize(
    "params,field",
    [
        ({"label": "no-equals"}, "label"),
        ({"executor": "mainframe"}, "executor"),
        ({"status": "sleeping"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-45"}, "until"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_query_is_422_naming_the_field(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    r = api.get("/api/v1/runs", params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    named = [f["field"] for f in body.get("fields", [])] + [body.get("field") or ""]
    # A repeatable parameter is named with its index (status.0).
    assert any(n == field or n.startswith(f"{field}.") for n in named), body


def test_jsonl_one_parseable_record_per_line(api: httpx.Client, history: dict[str, Any]) -> None:
    tag, jobs = history["tag"], history["jobs"]
    r = api.get("/api/v1/runs", params={"format": "jsonl", "label": f"t={tag}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["x-total-count"] == "4"
    assert r.text.endswith("\n")
    records = [json.loads(line) for line in r.text.splitlines()]
    assert all(isinstance(rec, dict) for rec in records)
    assert [rec["id"] for rec in records] == [j["id"] for j in reversed(jobs)]
    assert records[0]["status"] == "failed"

    r = api.get(
        "/api/v1/runs", params={"format": "jsonl", "label": f"t={tag}", "limit": 3, "offset": 1}
    )
    assert [json.loads(x)["id"] for x in r.text.splitlines()] == [j["id"] for j in reversed(jobs)][
        1:4
    ]

    # Unfiltered: every run, as many lines as the JSON page's total.
    total = api.get("/api/v1/runs", params={"limit": 1}).json()["total"]
    with api.stream("GET", "/api/v1/runs", params={"format": "jsonl"}) as resp:
        lines = [json.loads(x) for x in resp.iter_lines() if x]
    assert len(lines) == total
    assert len({rec["id"] for rec in lines}) == total


def test_run_record_is_complete(stack: Stack, api: httpx.Client) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "steps": [
                {"name": "build", "command": ["sh", "-c", "echo building; echo warn >&2"]},
                {"name": "test", "command": ["sh", "-c", "echo '::result {\"n\": 7}'"]},
            ],
            "labels": {"t": uuid.uuid4().hex},
        }
    )
    stack.wait_status(job["id"], timeout=60)
    r = api.get(f"/api/v1/runs/{job['id']}")
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["status"] == "succeeded"
    assert rec["spec"]["steps"][0]["name"] == "build"
    for key in ("created_at", "claimed_at", "started_at", "finished_at"):
        assert rec[key], key
    assert rec["duration_s"] >= 0
    assert rec["exit_code"] == 0 and rec["error"] is None
    assert rec["result"] == {"n": 7}
    assert [(s["name"], s["exit_code"]) for s in rec["steps"]] == [("build", 0), ("test", 0)]
    assert rec["resource_usage"] and "user_cpu_s" in rec["resource_usage"]
    assert rec["log_lines"] == 3
    assert rec["links"]["artifacts"] == f"/api/v1/jobs/{job['id']}/artifacts"
    assert len(rec["attempts"]) == 1
    a = rec["attempts"][0]
    assert a["attempt"] == 1 and a["outcome"] == "succeeded"
    assert a["runner_id"] and a["started_at"] and a["ended_at"]


def test_attempts_history_shows_each_try_after_the_streams_are_gone(
    stack: Stack, api: httpx.Client, stack_events: Events
) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "exit 4"],
            "max_attempts": 2,
            "retry_backoff_s": 0,
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert (done["status"], done["attempt"]) == ("failed", 2)
    # Attempt history lives in the store: trimming or deleting the streams loses none of it.
    assert stack_events.r.delete(job_events_key(job["id"]), job_logs_key(job["id"])) >= 1
    rec = api.get(f"/api/v1/runs/{job['id']}").json()
    assert [(a["attempt"], a["outcome"], a["exit_code"]) for a in rec["attempts"]] == [
        (1, "retried", 4),
        (2, "failed", 4),
    ]
    assert "exited with code 4" in rec["attempts"][0]["error"]
    assert rec["attempts"][1]["error"] == "exited with code 4"
    for a in rec["attempts"]:
        assert a["runner_id"] and a["claimed_at"] <= a["started_at"] <= a["ended_at"]


def test_unknown_run_is_404(api: httpx.Client) -> None:
    for method in ("GET", "DELETE"):
        r = api.request(method, "/api/v1/runs/does-not-exist")
        assert r.status_code == 404
        assert "does-not-exist" in r.json()["error"]


def _wait_running(stack: Stack, job_id: str) -> dict[str, Any]:
    return stack.wait_status(job_id, "running", timeout=60)


def test_delete_refuses_until_ended_then_removes_everything(
    stack: Stack, api: httpx.Client
) -> None:
    job = stack.submit(
        proc(
            "del",
            "x",
            "mkdir -p out && echo a > out/a.txt && echo started && sleep 30",
            artifacts=["out/*"],
            grace_s=1,
        )
    )
    _wait_running(stack, job["id"])
    r = api.delete(f"/api/v1/runs/{job['id']}")
    assert r.status_code == 409, r.text
    assert api.get(f"/api/v1/runs/{job['id']}").json()["status"] == "running"

    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    ended = stack.wait_status(job["id"], timeout=60)
    assert ended["status"] == "cancelled"
    assert [a["name"] for a in ended["artifacts"]] == ["out/a.txt"]
    art_dir = stack.settings.artifacts_dir / job["id"]
    log_file = stack.settings.logs_dir / f"{job['id']}.jsonl"
    assert art_dir.exists() and log_file.exists()

    r = api.delete(f"/api/v1/runs/{job['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": job["id"], "status": "cancelled", "artifact_files": 1}
    assert api.get(f"/api/v1/runs/{job['id']}").status_code == 404
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert not art_dir.exists() and not log_file.exists()
    r_ = connect(stack.settings.effective_redis_url)
    try:
        # The final event may still be in flight from the worker when we deleted; the log
        # stream, written before the job ended, must be gone.
        assert not r_.exists(job_logs_key(job["id"]))
    finally:
        r_.close()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"older_than": "7x"}, "older_than"),
        ({"older_than": "-1d"}, "older_than"),
        ({"older_than": 7}, "older_than"),
        ({}, "older_than"),
        ({"older_than": "7d", "dry": True}, "dry"),
    ],
)
def test_cleanup_bad_body_is_422(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    r = api.post("/api/v1/runs/cleanup", json=body)
    assert r.status_code == 422, r.text
    assert field in [f["field"] for f in r.json()["fields"]]


def test_cleanup_removes_ended_runs_and_their_files(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    from tests.api.test_artifacts import seed_ended_job

    running = stack.submit(
        proc(
            "cleanup",
            "x",
            "mkdir -p out && echo r > out/r.txt && sleep 30",
            artifacts=["out/*"],
            grace_s=1,
        )
    )
    finished = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "mkdir -p out && echo aaa > out/a.txt && echo bbb > out/b.txt"],
            "artifacts": ["out/*.txt"],
        }
    )
    assert stack.wait_status(finished["id"], timeout=60)["status"] == "succeeded"
    seeded = seed_ended_job(stack, tmp_path, {"x.bin": b"\x00" * 10})
    _wait_running(stack, running["id"])
    artifacts = ArtifactStore(stack.settings.artifacts_dir)
    assert artifacts.files(finished["id"]) == ["out/a.txt", "out/b.txt"]

    # Nothing of ours is older than a week.
    out = api.post("/api/v1/runs/cleanup", json={"older_than": "7d"}).json()
    assert finished["id"] not in out["jobs"] and seeded["id"] not in out["jobs"]
    # No body: the configured retention (30 days) — also nothing of ours.
    r = api.post("/api/v1/runs/cleanup")
    assert r.status_code == 200 and finished["id"] not in r.json()["jobs"]

    r = api.post("/api/v1/runs/cleanup", json={"older_than": "0s"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert {finished["id"], seeded["id"]} <= set(out["jobs"])
    assert running["id"] not in out["jobs"]
    assert out["removed"] == len(out["jobs"]) and out["errors"] == 0
    assert out["artifact_files"] >= 3
    assert set(out) >= {"removed", "jobs", "artifact_files", "cutoff"}
    for job_id in (finished["id"], seeded["id"]):
        assert not (stack.settings.artifacts_dir / job_id).exists()
        assert not (stack.settings.logs_dir / f"{job_id}.jsonl").exists()
        assert api.get(f"/api/v1/runs/{job_id}").status_code == 404
    r_ = connect(stack.settings.effective_redis_url)
    try:
        assert not r_.exists(job_events_key(seeded["id"]), job_logs_key(finished["id"]))
    finally:
        r_.close()
    # Every ended run is gone from the history; the running one keeps record and files.
    ended = api.get(
        "/api/v1/runs", params={"status": ["succeeded", "failed", "cancelled", "timed_out"]}
    ).json()
    assert all(j["id"] not in (finished["id"], seeded["id"]) for j in ended["items"])
    assert api.get(f"/api/v1/runs/{running['id']}").json()["status"] == "running"

    api.post(f"/api/v1/jobs/{running['id']}/cancel")
    assert stack.wait_status(running["id"], timeout=60)["status"] == "cancelled"
