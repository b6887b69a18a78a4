"""The jobs API over a real uvicorn, with a real Celery worker and beat behind it."""

from __future__ import annotations

import httpx

from tests.support import Stack, wait_until

COUNTDOWN = {"executor": "builtin", "type": "countdown"}
# No worker has this tag, so such a job stays queued until its match deadline.
UNMATCHED = {"executor": "builtin", "type": "countdown", "demands": {"tags": ["nobody-has-it"]}}


def test_submit_answers_201_with_the_job(api: httpx.Client) -> None:
    r = api.post(
        "/api/v1/jobs",
        json={**COUNTDOWN, "params": {"seconds": 1}, "name": "t1", "labels": {"team": "a"}},
    )
    assert r.status_code == 201
    job = r.json()
    for key in (
        "id",
        "status",
        "executor",
        "attempt",
        "created_at",
        "started_at",
        "finished_at",
        "progress",
        "result",
        "error",
        "exit_code",
        "runner_id",
    ):
        assert key in job, key
    assert job["status"] == "queued" and job["executor"] == "builtin" and job["attempt"] == 1
    assert job["progress"] == {"percent": 0.0, "message": ""}
    assert job["name"] == "t1" and job["spec"]["labels"] == {"team": "a"}


def test_countdown_runs_to_success_with_progress(stack: Stack) -> None:
    job = stack.submit({**COUNTDOWN, "params": {"seconds": 2}})
    running = stack.wait_status(job["id"], "running", timeout=20)
    assert running["runner_id"].startswith("runner-")
    done = stack.wait_status(job["id"], timeout=20)
    assert done["status"] == "succeeded"
    assert done["progress"]["percent"] == 100
    assert done["exit_code"] == 0 and done["error"] is None
    assert done["started_at"] and done["finished_at"] and done["duration_s"] >= 1.9
    assert done["result"]["message"] == "Countdown complete!"


def test_primes_result(stack: Stack) -> None:
    job = stack.submit({"executor": "builtin", "type": "primes", "params": {"limit": 1000}})
    done = stack.wait_status(job["id"], timeout=20)
    assert done["status"] == "succeeded"
    assert done["result"]["count"] == 168 and len(done["result"]["primes"]) == 168


def test_every_builtin_type_runs(stack: Stack) -> None:
    specs = [
        {"executor": "builtin", "type": "fibonacci", "params": {"count": 20}},
        {"executor": "builtin", "type": "echo_delay", "params": {"message": "hi", "delay": 1}},
        # One good URL (the API itself) and one refused: reported, not fatal.
        {
            "executor": "builtin",
            "type": "url_fetch",
            "params": {"urls": [f"{stack.url}/api/v1/healthz", "http://127.0.0.1:9/"]},
        },
    ]
    jobs = [stack.submit(s) for s in specs]
    done = [stack.wait_status(j["id"], timeout=30) for j in jobs]
    assert [d["status"] for d in done] == ["succeeded"] * 3
    assert done[0]["result"]["numbers"][-1] == 6765
    assert done[1]["result"]["message"] == "hi"
    results = {r["url"]: r for r in done[2]["result"]["results"]}
    assert results[f"{stack.url}/api/v1/healthz"]["status"] == 200
    assert results["http://127.0.0.1:9/"]["ok"] is False and results["http://127.0.0.1:9/"]["error"]


def test_invalid_param_is_422_naming_the_field(api: httpx.Client) -> None:
    before = api.get("/api/v1/jobs", params={"limit": 1}).json()["total"]
    r = api.post("/api/v1/jobs", json={**COUNTDOWN, "params": {"seconds": 0}})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == 422 and "seconds" in body["error"]
    assert body["fields"][0]["field"] == "params.seconds"
    assert api.get("/api/v1/jobs", params={"limit": 1}).json()["total"] == before


def test_invalid_specs_are_422(api: httpx.Client) -> None:
    cases = [
        ({"executor": "teleport"}, "executor"),
        ({"executor": "process", "command": "echo hi"}, "command"),
        ({"executor": "builtin", "type": "countdown", "max_attempts": 0}, "max_attempts"),
        ({"executor": "builtin", "type": "nope"}, "type"),
    ]
    for spec, field in cases:
        r = api.post("/api/v1/jobs", json=spec)
        assert r.status_code == 422, spec
        assert field in r.json()["error"], (spec, r.json())
    r = api.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == 422


def test_unknown_job_is_404(api: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/v1/jobs/nope"),
        ("POST", "/api/v1/jobs/nope/cancel"),
        ("DELETE", "/api/v1/jobs/nope"),
    ]:
        r = api.request(method, path)
        assert r.status_code == 404
        assert r.json() == {"error": "job nope not found", "code": 404}


def test_cancel_queued_job_is_immediate_and_repeatable(api: httpx.Client) -> None:
    job = api.post("/api/v1/jobs", json={**UNMATCHED, "params": {"seconds": 1}}).json()
    r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    via_delete = api.delete(f"/api/v1/jobs/{job['id']}")
    assert via_delete.status_code == 200 and via_delete.json()["status"] == "cancelled"


def test_cancel_running_builtin_stops_within_two_seconds(stack: Stack) -> None:
    job = stack.submit({**COUNTDOWN, "params": {"seconds": 30}})
    stack.wait_status(job["id"], "running", timeout=20)
    r = stack.http.delete(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    done = stack.wait_status(job["id"], timeout=2.5)
    assert done["status"] == "cancelled"
    assert done["progress"]["percent"] < 100


def test_cancel_finished_job_is_409(stack: Stack) -> None:
    job = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 5}})
    stack.wait_status(job["id"], "succeeded", timeout=20)
    r = stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409
    assert r.json()["code"] == 409 and "ended" in r.json()["error"]
    assert stack.job(job["id"])["status"] == "succeeded"


def test_unmatched_job_fails_after_match_timeout(stack: Stack) -> None:
    job = stack.submit({**UNMATCHED, "match_timeout_s": 1})
    done = stack.wait_status(job["id"], timeout=20)
    assert done["status"] == "failed"
    assert done["error"].startswith("no matching runner available within 1 s (demands: ")


def test_list_filters_and_paginates_newest_first(stack: Stack) -> None:
    ids = [
        stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 3}})["id"]
        for _ in range(3)
    ]
    for i in ids:
        stack.wait_status(i, "succeeded", timeout=20)
    queued = stack.submit({**UNMATCHED, "params": {"seconds": 1}})
    r = stack.http.get("/api/v1/jobs", params={"status": "succeeded"})
    body = r.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    assert body["items"] and {j["status"] for j in body["items"]} == {"succeeded"}
    listed = [j["id"] for j in body["items"]]
    assert listed.index(ids[2]) < listed.index(ids[1]) < listed.index(ids[0])
    both = stack.http.get("/api/v1/jobs", params=[("status", "succeeded"), ("status", "queued")])
    assert queued["id"] in [j["id"] for j in both.json()["items"]]
    page = stack.http.get("/api/v1/jobs", params={"limit": 2, "offset": 1}).json()
    full = stack.http.get("/api/v1/jobs", params={"limit": 3}).json()
    assert page["limit"] == 2 and page["offset"] == 1 and len(page["items"]) == 2
    assert [j["id"] for j in page["items"]] == [j["id"] for j in full["items"][1:3]]
    assert stack.http.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert stack.http.get("/api/v1/jobs", params={"limit": 0}).status_code == 422
    stack.http.post(f"/api/v1/jobs/{queued['id']}/cancel")


def test_job_types_publish_schemas(api: httpx.Client) -> None:
    types = {t["name"]: t for t in api.get("/api/v1/job-types").json()}
    assert set(types) == {"countdown", "primes", "fibonacci", "url_fetch", "echo_delay"}
    seconds = types["countdown"]["params"][0]
    assert seconds == {
        "name": "seconds",
        "type": "integer",
        "description": "Seconds to count down",
        "default": 10,
        "min": 1,
        "max": 60,
        "required": False,
    }


def test_stats_count_statuses_and_workers(stack: Stack) -> None:
    stats = stack.http.get("/api/v1/stats").json()
    for s in ("queued", "claimed", "running", "succeeded", "failed", "cancelled", "timed_out"):
        assert isinstance(stats[s], int)
    assert stats["workers"]["count"] >= 1
    assert stats["workers"]["capacity"] >= 4
    job = stack.submit({**COUNTDOWN, "params": {"seconds": 5}})
    stack.wait_status(job["id"], "running", timeout=20)
    active = wait_until(
        lambda: stack.http.get("/api/v1/stats").json()["workers"]["active"] >= 1,
        timeout=10,
        what="an active worker slot",
    )
    assert active
    stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_healthz_and_openapi(api: httpx.Client) -> None:
    assert api.get("/api/v1/healthz").json() == {"status": "ok", "redis": True, "database": True}
    schema = api.get("/openapi.json").json()
    for model in ("Job", "BuiltinSpec", "ProcessSpec", "DockerSpec", "KubernetesSpec", "JobPage"):
        assert model in schema["components"]["schemas"], model
    assert schema["paths"]["/api/v1/jobs"]["post"]["operationId"] == "jobs-create"
    assert api.get("/docs").status_code == 200
