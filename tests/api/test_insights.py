"""The dashboard's read routes over the real API: charts, the runner board, run search."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support import Stack, wait_until


def test_overview_counts_the_jobs_that_ended(stack: Stack, api: httpx.Client) -> None:
    # The stack is shared: other tests' jobs end in the same minutes (a cancel that lands
    # late, a schedule's run), so the counts asked for are this test's, by a label of its own.
    mine = {"insights-run": uuid.uuid4().hex}
    ok = {"executor": "process", "command": ["sh", "-c", "sleep 0.2"], "labels": mine}
    bad = {"executor": "process", "command": ["sh", "-c", "exit 4"], "labels": mine}
    ids = [stack.submit(s)["id"] for s in (ok, ok, bad)]
    for job_id in ids:
        stack.wait_status(job_id, timeout=60)

    r = api.get(
        "/api/v1/insights/overview", params={"label": f"insights-run={mine['insights-run']}"}
    )
    assert r.status_code == 200, r.text
    view = r.json()
    assert len(view["buckets"]) == 60 and view["bucket_s"] == 60
    assert view["totals"] == {
        "succeeded": 2,
        "failed": 1,
        "timed_out": 0,
        "cancelled": 0,
        "ended": 3,
    }
    assert sum(b["ended"] for b in view["buckets"]) == 3
    assert view["run_time"]["count"] == 3
    assert view["run_time"]["p95_s"] >= view["run_time"]["p50_s"] > 0
    assert view["buckets"][-1]["queue_depth"] == 0  # none of them waits now

    # Unfiltered, the API keeps an answer for a few seconds: wait for one computed after
    # the last end; it counts this test's jobs among everyone's.
    last_end = max(datetime.fromisoformat(stack.job(j)["finished_at"]) for j in ids)

    def fresh() -> dict[str, Any] | None:
        r = api.get("/api/v1/insights/overview")
        assert r.status_code == 200, r.text
        every: dict[str, Any] = r.json()
        return every if datetime.fromisoformat(every["now"]) >= last_end else None

    every = wait_until(fresh, timeout=30, what="an overview computed after the jobs ended")
    for k in ("succeeded", "failed", "ended"):
        assert every["totals"][k] >= view["totals"][k], (k, every["totals"], view["totals"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"minutes": "4"}, "minutes"),
        ({"minutes": "2000"}, "minutes"),
        ({"minutes": "x"}, "minutes"),
        ({"label": "no-equals-sign"}, "label"),
        ({"label": "=value"}, "label"),
        ({"label": [f"k{i}=v" for i in range(100)]}, "label"),
    ],
)
def test_overview_bad_window_or_filter_is_422(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    r = api.get("/api/v1/insights/overview", params=params)
    assert r.status_code == 422, r.text
    assert field in [f["field"] for f in r.json()["fields"]]


def test_runner_board_lists_the_worker_with_its_running_job(
    stack: Stack, api: httpx.Client
) -> None:
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 30}})
    try:
        stack.wait_status(job["id"], "running")

        def holding() -> dict[str, Any] | None:
            board = api.get("/api/v1/runners").json()
            for row in board["items"]:
                if job["id"] in [j["id"] for j in row["jobs"]]:
                    return {"board": board, "row": row}
            return None

        found = wait_until(holding, timeout=30, what="a runner holding the job")
    finally:
        api.post(f"/api/v1/jobs/{job['id']}/cancel")
    row, board = found["row"], found["board"]
    assert row["state"] == "live"
    assert row["kind"] == "celery"
    assert "builtin" in row["executors"]
    assert row["capacity"] >= 1 and row["active"] >= 1
    assert row["hostname"] and row["last_seen"]
    assert board["counts"]["live"] >= 1
    assert board["capacity"] >= row["capacity"]


def test_runs_search_by_name_and_id_prefix(stack: Stack, api: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    names = [f"Deploy-{tag}-web", f"deploy-{tag}-db", f"backup-{tag}"]
    jobs = [
        stack.submit({"executor": "process", "command": ["true"], "name": n, "labels": {"t": tag}})
        for n in names
    ]

    def found(q: str) -> list[str]:
        page = api.get("/api/v1/runs", params={"q": q, "label": f"t={tag}"}).json()
        return sorted(j["name"] for j in page["items"])

    assert found(f"DEPLOY-{tag}") == sorted(names[:2])
    assert found(f"{tag}-db") == [names[1]]
    assert found("%") == []  # a wildcard is a character, not a pattern
    page = api.get("/api/v1/runs", params={"q": jobs[2]["id"][:12]}).json()
    assert [j["id"] for j in page["items"]] == [jobs[2]["id"]]
    assert page["total"] == 1


@pytest.mark.parametrize("q", ["", "x" * 201, "nul\x00byte"])
def test_runs_bad_search_is_422(api: httpx.Client, q: str) -> None:
    r = api.get("/api/v1/runs", params={"q": q})
    assert r.status_code == 422, r.text
    assert "q" in [f["field"] for f in r.json()["fields"]]
