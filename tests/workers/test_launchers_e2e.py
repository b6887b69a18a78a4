"""Process and docker jobs end to end: HTTP API -> Celery worker -> launcher -> store.

These run through the session ``stack`` (real uvicorn, Celery worker and beat, valkey).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import Stack, process_alive, wait_until
from tests.workers.conftest import labelled_containers
from workers.launchers.process import _job_processes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _job_pids(job_id: str) -> list[int]:
    return [pid for pid, env in _job_processes() if env.get("LAUNCHBAY_JOB_ID") == job_id]


# ------------------------------------------------------------------ docker


@pytest.mark.docker
def test_docker_job_with_two_steps_keeps_both_artifacts(stack: Stack, busybox_image: str) -> None:
    job = stack.submit(
        {
            "executor": "docker",
            "image": busybox_image,
            "name": "two steps",
            "steps": [
                {
                    "name": "write-a",
                    "command": ["sh", "-c", "mkdir -p out && echo alpha > out/a.txt"],
                },
                {"name": "write-b", "command": ["sh", "-c", "echo beta > out/b.txt"]},
            ],
            "artifacts": ["out/*.txt"],
        }
    )
    done = stack.wait_status(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["exit_code"] == 0
    steps = {s["name"]: s for s in done["steps"]}
    assert steps["write-a"]["exit_code"] == 0 and steps["write-b"]["exit_code"] == 0
    assert steps["write-a"]["finished_at"] <= steps["write-b"]["started_at"]
    arts = {a["name"]: a for a in done["artifacts"]}
    assert sorted(arts) == ["out/a.txt", "out/b.txt"]
    assert arts["out/a.txt"]["sha256"] == _sha(b"alpha\n")
    assert arts["out/b.txt"]["sha256"] == _sha(b"beta\n")
    assert arts["out/b.txt"]["size"] == 5 and arts["out/b.txt"]["content_type"] == "text/plain"
    stored = stack.settings.artifacts_dir / job["id"] / "out" / "b.txt"
    assert stored.read_bytes() == b"beta\n"
    wait_until(
        lambda: labelled_containers(job["id"]) == [],
        timeout=30,
        what="the job's containers to be removed",
    )


@pytest.mark.docker
def test_cancelled_docker_job_leaves_no_container(stack: Stack, busybox_image: str) -> None:
    job = stack.submit(
        {
            "executor": "docker",
            "image": busybox_image,
            "grace_s": 3,
            "steps": [{"name": "nap", "command": ["sleep", "300"]}],
        }
    )
    stack.wait_status(job["id"], "running", timeout=120)
    wait_until(
        lambda: labelled_containers(job["id"]), timeout=30, what="the job's container to exist"
    )
    r = stack.http.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "cancelled", done
    wait_until(
        lambda: labelled_containers(job["id"]) == [],
        timeout=30,
        what="no container labelled with the job id",
    )


@pytest.mark.docker
def test_docker_job_whose_second_step_fails(stack: Stack, busybox_image: str) -> None:
    job = stack.submit(
        {
            "executor": "docker",
            "image": busybox_image,
            "steps": [
                {"name": "fine", "command": ["true"]},
                {"name": "explode", "command": ["sh", "-c", "echo oops >&2; exit 3"]},
                {"name": "unreached", "command": ["true"]},
            ],
        }
    )
    done = stack.wait_status(job["id"], timeout=120)
    assert done["status"] == "failed", done
    assert done["exit_code"] == 3
    assert "explode" in done["error"]
    steps = {s["name"]: s for s in done["steps"]}
    assert steps["fine"]["exit_code"] == 0 and steps["explode"]["exit_code"] == 3
    assert "unreached" not in steps
    wait_until(
        lambda: labelled_containers(job["id"]) == [],
        timeout=30,
        what="the job's containers to be removed",
    )


# ------------------------------------------------------------------ process


def test_process_progress_shows_while_it_runs(stack: Stack, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = stack.submit(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                f"echo '::progress 50 half'; while [ ! -e {go} ]; do sleep 0.05; done; "
                "echo '::result {\"answer\": 42}'",
            ],
        }
    )

    def halfway() -> dict | None:
        j = stack.job(job["id"])
        return j if j["progress"] == {"percent": 50, "message": "half"} else None

    seen = wait_until(halfway, timeout=60, what="progress 50 'half'")
    assert seen["status"] == "running"
    go.touch()
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"answer": 42}


def test_process_past_its_timeout_is_timed_out_and_gone(stack: Stack, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = stack.submit(
        {
            "executor": "process",
            "timeout_s": 1,
            "command": [
                "sh",
                "-c",
                f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 300",
            ],
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "timed_out", done
    pid = int(pidfile.read_text())
    assert not process_alive(pid)
    assert _job_pids(job["id"]) == []


def test_process_job_gets_its_context(stack: Stack) -> None:
    job = stack.submit(
        {"executor": "process", "command": ["sh", "-c", 'echo "::result $LAUNCHBAY_CONTEXT"']}
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["result"]["job_id"] == job["id"] and done["result"]["attempt"] == 1
    assert done["result"]["spec"]["executor"] == "process"
    assert done["resource_usage"]["max_rss_kb"] > 0


@pytest.mark.docker
def test_orphan_sweep_removes_superseded_attempts_only(stack: Stack, busybox_image: str) -> None:
    from orchestrator.celery_app import REMOVE_ORPHANS, make_celery
    from orchestrator.job import DockerSpec, Step
    from workers.launchers import LaunchContext
    from workers.launchers.docker import DockerLauncher

    live = stack.submit(
        {
            "executor": "docker",
            "image": busybox_image,
            "grace_s": 1,
            "steps": [{"name": "nap", "command": ["sleep", "300"]}],
        }
    )
    stack.wait_status(live["id"], "running", timeout=120)
    live_containers = wait_until(
        lambda: labelled_containers(live["id"]), timeout=30, what="the live job's container"
    )
    # A container of the same job's attempt 99, as a lost worker might have left it.
    ws = stack.settings.workspaces_dir / live["id"] / "a99"
    ws.mkdir(parents=True)
    ctx = LaunchContext(
        job_id=live["id"],
        attempt=99,
        runner_id="runner-000000000000",
        spec=DockerSpec(image=busybox_image, steps=[Step(name="nap", command=["sleep", "300"])]),
        workspace=ws,
        settings=stack.settings,
    )
    stray = DockerLauncher(stack.settings).start(ctx)
    try:
        make_celery(stack.settings).send_task(REMOVE_ORPHANS, queue="lb.maintenance")
        assert stray[:12] in labelled_containers(live["id"])
        wait_until(
            lambda: stray[:12] not in labelled_containers(live["id"]),
            timeout=60,
            what="the sweep to remove the stray container",
        )
        assert labelled_containers(live["id"]) == live_containers
        assert stack.job(live["id"])["status"] == "running"
    finally:
        stack.http.post(f"/api/v1/jobs/{live['id']}/cancel")
        stack.wait_status(live["id"], timeout=60)
        DockerLauncher(stack.settings).remove(stray)
    wait_until(lambda: labelled_containers(live["id"]) == [], timeout=30, what="no container left")


def test_artifacts_are_kept_when_a_process_job_fails(stack: Stack) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "artifacts": ["report/*.log"],
            "steps": [
                {
                    "name": "write",
                    "command": ["sh", "-c", "mkdir report && echo partial > report/run.log"],
                },
                {"name": "fail", "command": ["sh", "-c", "exit 2"]},
            ],
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "failed" and done["exit_code"] == 2
    assert done["error"] == "step 'fail' exited with code 2"
    assert [(a["name"], a["sha256"]) for a in done["artifacts"]] == [
        ("report/run.log", _sha(b"partial\n"))
    ]
