"""Capabilities and demands on the real stack: a job demanding this host runs here; one
demanding another host waits and fails after its match timeout, saying why."""

from __future__ import annotations

import socket

from tests.support import Stack, TaggedWorker

API = "/api/v1"


def test_a_job_demanding_this_host_runs_here(stack: Stack) -> None:
    host = socket.gethostname()
    job = stack.submit(
        {"executor": "process", "command": ["hostname"], "demands": {"hostname": host}}
    )
    assert job["warnings"] == []
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    runners = {w["id"]: w for w in stack.http.get(f"{API}/workers").json()}
    assert runners[done["runner_id"]]["hostname"] == host


def test_a_job_demanding_another_host_waits_then_fails_with_the_reason(stack: Stack) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "command": ["true"],
            "demands": {"hostname": "no-such-host.invalid"},
            "match_timeout_s": 2,
        }
    )
    # Said at submit: no live runner meets it.
    assert len(job["warnings"]) == 1 and "hostname=no-such-host.invalid" in job["warnings"][0]
    done = stack.wait_status(job["id"], timeout=30)
    assert done["status"] == "failed" and done["attempt"] == 1
    assert done["started_at"] is None  # it never ran
    assert done["error"] == (
        "no matching runner available within 2 s "
        "(demands: executor process, hostname=no-such-host.invalid)"
    )


def test_a_docker_job_without_a_docker_worker_is_warned_at_submit(stack: Stack) -> None:
    live = stack.http.get(f"{API}/workers").json()
    job = stack.submit(
        {
            "executor": "kubernetes",
            "image": "busybox",
            "command": ["true"],
            "match_timeout_s": 1,
        }
    )
    assert not any("kubernetes" in w["executors"] for w in live)
    assert job["warnings"] and "executor kubernetes" in job["warnings"][0]
    assert "none" in job["warnings"][0] or "lacks executor kubernetes" in job["warnings"][0]
    stack.wait_status(job["id"], "failed", timeout=30)


def test_a_demand_no_runner_could_ever_declare_is_a_422(stack: Stack) -> None:
    bad = [
        ({"hostname": "not a host!"}, "demands.hostname"),
        ({"project_dir": "relative/dir"}, "demands.project_dir"),
        ({"values": {"bad key": "x"}}, "demands.values"),
    ]
    for demands, field in bad:
        r = stack.http.post(
            f"{API}/jobs", json={"executor": "process", "command": ["true"], "demands": demands}
        )
        assert r.status_code == 422, r.text
        assert field in [f["field"] for f in r.json()["fields"]], r.json()


def test_project_dir_and_value_demands_reach_only_a_worker_that_declares_them(
    stack: Stack,
) -> None:
    worker = TaggedWorker(
        stack,
        "caps-16",
        concurrency=2,
        worker_project_dirs=["/srv/lb-caps"],
        worker_capabilities={"zone": "eu-test"},
    )
    rid = worker.start()
    try:
        live = {w["id"]: w for w in stack.http.get(f"{API}/workers").json()}
        assert live[rid]["capabilities"] == {"zone": "eu-test"}
        assert live[rid]["project_dirs"] == ["/srv/lb-caps"]
        ok = stack.submit(
            {
                "executor": "process",
                "command": ["true"],
                "demands": {
                    "tags": ["caps-16"],
                    "project_dir": "/srv/lb-caps/app",
                    "values": {"zone": "eu-test"},
                },
            }
        )
        assert ok["warnings"] == []
        # Its tag's queue reaches the worker, which does not meet zone=us: it passes the
        # message on until the match deadline, and never claims it.
        no = stack.submit(
            {
                "executor": "process",
                "command": ["true"],
                "demands": {"tags": ["caps-16"], "values": {"zone": "us"}},
                "match_timeout_s": 3,
            }
        )
        assert "lacks zone=us" in no["warnings"][0]
        done = stack.wait_status(ok["id"], timeout=60)
        assert done["status"] == "succeeded" and done["runner_id"] == rid
        failed = stack.wait_status(no["id"], timeout=30)
        assert failed["status"] == "failed" and failed["claimed_at"] is None
        assert "zone=us" in failed["error"]
    finally:
        worker.stop()
