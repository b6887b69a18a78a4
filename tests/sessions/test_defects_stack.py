"""Defects of issue 16, on the real stack."""

from __future__ import annotations

import httpx

from tests.support import Stack, wait_until

API = "/api/v1"
L = f"{API}/launcher"


def test_an_artifact_named_at_the_file_system_limit_is_kept_with_the_others(
    stack: Stack,
) -> None:
    long = "a" * 255
    job = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", f"echo x > {long}; echo y > b.txt"],
            "artifacts": ["*"],
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert sorted(a["name"] for a in done["artifacts"]) == [long, "b.txt"]


def test_an_artifact_name_the_store_refuses_does_not_fail_the_job_or_lose_the_others(
    stack: Stack,
) -> None:
    # Five folders of 250 characters: a path the disk takes, a name (1,2xx bytes) the
    # artifact store does not (at most 1,024).
    deep = "/".join(["d" * 250] * 5)
    job = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", f"mkdir -p {deep} && echo x > {deep}/f && echo y > b.txt"],
            "artifacts": ["**/*"],
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert [a["name"] for a in done["artifacts"]] == ["b.txt"]
    log = stack.http.get(f"{API}/jobs/{job['id']}/logs", params={"format": "text"}).text
    assert "not kept: an artifact name has at most 1024 bytes" in log, log


def test_an_agent_that_only_long_polls_stays_registered(stack: Stack, api: httpx.Client) -> None:
    r = api.post(f"{L}/register", json={"executors": ["process"], "tags": ["only-polls"]})
    assert r.status_code == 200, r.text
    lid = r.json()["launcher_id"]
    ttl = stack.settings.runner_heartbeat_s * 3  # the registry's TTL
    polled = 0.0
    # Poll (never heartbeat) for well past the TTL.
    while polled < ttl * 3:
        r = api.get(f"{L}/jobs", params={"launcher_id": lid, "wait": ttl / 2}, timeout=30)
        assert r.status_code == 204, r.text
        polled += ttl / 2
    live = [w["id"] for w in api.get(f"{API}/workers").json()]
    assert lid in live
    api.post(f"{L}/unregister", json={"launcher_id": lid, "jobs": []})
    wait_until(
        lambda: lid not in [w["id"] for w in api.get(f"{API}/workers").json()],
        timeout=10,
        what="the agent to leave the registry",
    )
