"""The docker launcher against the real engine, with the busybox image built FROM scratch."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from orchestrator.errors import RunnerLaunchError
from tests.workers.conftest import MakeCtx, labelled_containers
from workers.launchers import Outcome, launcher_class
from workers.launchers.docker import DockerConfig, DockerLauncher
from workers.testing import RecordingReporter

pytestmark = pytest.mark.docker


@pytest.fixture
def launcher(launch_settings) -> DockerLauncher:  # type: ignore[no-untyped-def]
    return DockerLauncher(launch_settings, DockerConfig(pull_policy="never"))


@pytest.fixture
def docker_ctx(make_ctx: MakeCtx, busybox_image: str, remove_containers_after: list[str]):  # type: ignore[no-untyped-def]
    def make(steps: list[dict], **extra):  # type: ignore[no-untyped-def]
        ctx = make_ctx({"executor": "docker", "image": busybox_image, "steps": steps, **extra})
        remove_containers_after.append(ctx.job_id)
        return ctx

    return make


def test_registry_names_the_docker_launcher() -> None:
    assert launcher_class("docker") is DockerLauncher


def test_two_steps_share_the_workspace_and_report_results(
    launcher: DockerLauncher, docker_ctx
) -> None:  # type: ignore[no-untyped-def]
    ctx = docker_ctx(
        [
            {"name": "a", "command": ["sh", "-c", "mkdir -p out && echo alpha > out/a.txt && pwd"]},
            {
                "name": "b",
                "command": [
                    "sh",
                    "-c",
                    'echo beta > out/b.txt; echo err >&2; echo "$LAUNCHBAY_CONTEXT"',
                ],
            },
        ],
        artifacts=["out/*.txt"],
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    out = launcher.follow(ctx, handle, rep)
    assert out.ok, out
    steps = rep.final_steps()
    assert [steps["a"].exit_code, steps["b"].exit_code] == [0, 0]
    assert steps["a"].finished_at <= steps["b"].started_at  # type: ignore[operator]
    assert ("stdout", "/workspace", "a") in rep.lines
    assert ("stderr", "err", "b") in rep.lines
    context = json.loads(rep.text("stdout")[-1])
    assert context["job_id"] == ctx.job_id and context["workspace"] == "/workspace"
    found = dict(launcher.collect_artifacts(ctx, handle))
    assert sorted(found) == ["out/a.txt", "out/b.txt"]
    assert (
        hashlib.sha256(found["out/a.txt"].read_bytes()).hexdigest()
        == hashlib.sha256(b"alpha\n").hexdigest()
    )
    # Files written in the container belong to the worker — or, when the worker is root,
    # to the unprivileged user its jobs run as (root removes them anyway).
    assert found["out/b.txt"].stat().st_uid == (65534 if os.getuid() == 0 else os.getuid())
    assert len(labelled_containers(ctx.job_id)) == 2
    launcher.cleanup(ctx, handle)
    assert labelled_containers(ctx.job_id) == []


def test_containers_are_unprivileged_limited_and_labelled(
    launcher: DockerLauncher, docker_ctx
) -> None:  # type: ignore[no-untyped-def]
    import docker

    ctx = docker_ctx(
        [
            {
                "name": "probe",
                "command": [
                    "sh",
                    "-c",
                    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
                    "|| cat /sys/fs/cgroup/memory.max; grep CapEff /proc/self/status",
                ],
            }
        ],
        resources={"cpu": 0.5, "memory_mb": 64},
        network="none",
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    assert launcher.follow(ctx, handle, rep).ok
    limit, caps = rep.text("stdout")
    assert int(limit) == 64 * 1024 * 1024
    assert caps.split()[1] == "0000000000000000"
    attrs = docker.from_env().api.inspect_container(handle)
    host = attrs["HostConfig"]
    assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
    assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"])
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 512
    assert host["NetworkMode"] == "none"
    assert [m["Destination"] for m in attrs["Mounts"]] == ["/workspace"]
    assert attrs["Config"]["WorkingDir"] == "/workspace"
    labels = attrs["Config"]["Labels"]
    assert labels["launchbay.job_id"] == ctx.job_id and labels["launchbay.attempt"] == "1"
    launcher.cleanup(ctx, handle)


def test_failing_step_names_the_step_and_its_exit_code(
    launcher: DockerLauncher, docker_ctx
) -> None:  # type: ignore[no-untyped-def]
    ctx = docker_ctx(
        [
            {"name": "ok", "command": ["true"]},
            {"name": "boom", "command": ["sh", "-c", "exit 3"]},
            {"name": "never", "command": ["true"]},
        ]
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    out = launcher.follow(ctx, handle, rep)
    assert out.exit_code == 3 and out.error == "step 'boom' exited with code 3"
    assert set(rep.final_steps()) == {"ok", "boom"}
    launcher.cleanup(ctx, handle)
    assert labelled_containers(ctx.job_id) == []


def test_stop_ends_a_running_container_and_skips_later_steps(
    launcher: DockerLauncher, docker_ctx
) -> None:  # type: ignore[no-untyped-def]
    ctx = docker_ctx(
        [
            {"name": "wait", "command": ["sh", "-c", "echo ready; sleep 300"]},
            {"name": "after", "command": ["true"]},
        ]
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    outcome: dict[str, Outcome] = {}
    t = threading.Thread(target=lambda: outcome.setdefault("o", launcher.follow(ctx, handle, rep)))
    t.start()
    assert rep.wait_for_line("ready")
    stoppers = [threading.Thread(target=launcher.stop, args=(handle, 2)) for _ in range(2)]
    for s in stoppers:
        s.start()
    t.join(60)
    for s in stoppers:
        s.join(60)
    assert not t.is_alive()
    assert outcome["o"].exit_code != 0
    assert "after" not in rep.final_steps()
    launcher.cleanup(ctx, handle)
    assert labelled_containers(ctx.job_id) == []


def test_missing_image_fails_at_once(
    launcher: DockerLauncher, make_ctx: MakeCtx, remove_containers_after: list[str]
) -> None:
    ctx = make_ctx(
        {
            "executor": "docker",
            "image": "launchbay-test-missing:nope",
            "steps": [{"name": "x", "command": ["true"]}],
        }
    )
    remove_containers_after.append(ctx.job_id)
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert err.value.transient is False and err.value.launcher == "docker"
    assert "launchbay-test-missing:nope" in str(err.value)
    assert labelled_containers(ctx.job_id) == []


def test_unreachable_daemon_is_transient(
    launch_settings,
    make_ctx: MakeCtx,  # type: ignore[no-untyped-def]
    tmp_path,
) -> None:
    launcher = DockerLauncher(
        launch_settings, DockerConfig(base_url=f"unix://{tmp_path}/no-docker.sock")
    )
    ctx = make_ctx(
        {"executor": "docker", "image": "x", "steps": [{"name": "x", "command": ["true"]}]}
    )
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert err.value.transient is True
    assert "\n" not in str(err.value)


def test_orphans_are_containers_of_attempts_no_longer_live(
    launcher: DockerLauncher, docker_ctx, launch_settings
) -> None:  # type: ignore[no-untyped-def]
    ctx = docker_ctx([{"name": "long", "command": ["sleep", "300"]}])
    handle = launcher.start(ctx)
    assert handle not in launcher.orphans(lambda j, a: True)
    assert launcher.orphans(lambda j, a: j != ctx.job_id) == [handle]
    # Another installation sharing the engine never sees it.
    other = launch_settings.model_copy(update={"database_url": "sqlite:////elsewhere.db"})
    assert handle not in DockerLauncher(other).orphans(lambda j, a: False)
    launcher.remove(handle)
    assert labelled_containers(ctx.job_id) == []


def test_kept_containers_are_spared_for_a_while(launcher: DockerLauncher, docker_ctx) -> None:  # type: ignore[no-untyped-def]
    ctx = docker_ctx([{"name": "done", "command": ["true"]}], cleanup="never")
    handle = launcher.start(ctx)
    assert launcher.follow(ctx, handle, RecordingReporter()).ok
    assert launcher.orphans(lambda j, a: j != ctx.job_id) == []
    launcher.config.keep_finished_s = 0
    assert launcher.orphans(lambda j, a: j != ctx.job_id) == [handle]
    launcher.remove(handle)
    assert labelled_containers(ctx.job_id) == []
