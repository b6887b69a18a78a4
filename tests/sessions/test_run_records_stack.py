"""Run records on the real stack: each attempt's launch handle, cleanup and resource use."""

from __future__ import annotations

import re

import pytest

from tests.support import Stack

API = "/api/v1"


@pytest.mark.docker
def test_a_docker_jobs_run_record_shows_its_container_and_memory_peak(
    stack: Stack, busybox_image: str
) -> None:
    job = stack.submit(
        {
            "executor": "docker",
            "image": busybox_image,
            # ~24 MB held for a while, so the engine's stats see it.
            "steps": [
                {
                    "name": "main",
                    "command": [
                        "sh",
                        "-c",
                        "x=$(head -c 24000000 /dev/zero | tr '\\000' a); sleep 2; echo ${#x}",
                    ],
                }
            ],
        }
    )
    done = stack.wait_status(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    record = stack.http.get(f"{API}/runs/{job['id']}").json()
    (attempt,) = record["attempts"]
    assert re.fullmatch(r"[0-9a-f]{64}", attempt["handle"]), attempt
    assert attempt["cleanup"] == "removed"
    usage = attempt["resource_usage"]
    assert usage["memory_peak_bytes"] > 24_000_000, usage
    assert usage["stats_samples"] >= 1 and usage["wall_s"] >= 2
    assert record["resource_usage"] == usage  # the job's figures are its last attempt's
    assert record["progress"]["percent"] == 100


def test_process_and_builtin_run_records_have_handles_cleanup_and_usage(stack: Stack) -> None:
    proc = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "echo '::progress 50' ; true"],
            "cleanup": "never",
        }
    )
    built = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 20}})
    p = stack.wait_status(proc["id"], timeout=60)
    b = stack.wait_status(built["id"], timeout=60)
    assert p["status"] == b["status"] == "succeeded"
    # Done is 100 %, whatever the job last printed (it said 50).
    assert p["progress"]["percent"] == 100
    pa = stack.http.get(f"{API}/runs/{proc['id']}").json()["attempts"][0]
    assert pa["handle"] and pa["cleanup"] == "kept (cleanup: never)"
    assert pa["resource_usage"]["wall_s"] >= 0
    ba = stack.http.get(f"{API}/runs/{built['id']}").json()["attempts"][0]
    assert ba["handle"] == f"builtin:{built['id']}:1" and ba["cleanup"] == "removed"
    assert ba["resource_usage"]["source"] == "worker accounting"
    assert ba["resource_usage"]["cpu_s"] >= 0 and ba["resource_usage"]["worker_max_rss_kb"] > 0
