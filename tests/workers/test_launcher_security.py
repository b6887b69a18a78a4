"""What a job cannot do to its host (issue 12): run as root, outlive its attempt, read a
Launchbay process's secrets, leave a setuid file, or run without limits. Real processes,
a real Docker engine."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import TypedDict

import pytest

from orchestrator.hardening import job_identity
from tests.support import process_alive, wait_until
from tests.workers.conftest import MakeCtx
from workers.launchers.docker import DockerConfig, DockerLauncher
from workers.launchers.process import ProcessConfig, ProcessLauncher
from workers.testing import RecordingReporter


@pytest.fixture
def launcher(launch_settings, exec_helper_setting: str) -> ProcessLauncher:  # type: ignore[no-untyped-def]
    """A process launcher, once for each way a step starts (tests/workers/conftest.py)."""
    launcher = ProcessLauncher(launch_settings, ProcessConfig(exec_helper=exec_helper_setting))
    assert launcher.helper == (None if exec_helper_setting == "none" else exec_helper_setting)
    return launcher


def run(launcher: ProcessLauncher, ctx) -> tuple[object, RecordingReporter]:  # type: ignore[no-untyped-def]
    rep = RecordingReporter()
    return launcher.follow(ctx, launcher.start(ctx), rep), rep


def test_a_root_worker_runs_process_jobs_as_an_unprivileged_user(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx({"executor": "process", "command": ["sh", "-c", "id -u; touch made-here"]})
    out, rep = run(launcher, ctx)
    assert out.ok, rep.lines  # type: ignore[attr-defined]
    expected = job_identity(None)
    if os.geteuid() == 0:
        assert expected is not None and expected[0] != 0
        assert rep.text("stdout") == [str(expected[0])]
        assert (ctx.workspace / "made-here").stat().st_uid == expected[0]
    else:  # not root: the job is the worker's own user (README: trust model)
        assert expected is None and rep.text("stdout") == [str(os.geteuid())]


def test_a_setsid_env_i_grandchild_dies_with_its_job(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    # The grandchild leaves the session, drops the environment (so no LAUNCHBAY_JOB_ID
    # marks it) and is orphaned at once (its parent shell exits).
    ctx = make_ctx(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "setsid env -i sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > gc.pid'; "
                "while [ ! -s gc.pid ]; do :; done; echo started",
            ],
        }
    )
    out, rep = run(launcher, ctx)
    assert rep.text("stdout") == ["started"], rep.lines  # type: ignore[attr-defined]
    pid = int((ctx.workspace / "gc.pid").read_text())
    wait_until(lambda: not process_alive(pid), timeout=10, what="the grandchild to die")


def test_a_daemon_started_while_the_job_runs_dies_when_it_is_stopped(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "setsid env -i sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > d.pid'; "
                "sleep 300",
            ],
        }
    )
    handle = launcher.start(ctx)
    rep = RecordingReporter()
    follower = threading.Thread(target=launcher.follow, args=(ctx, handle, rep))
    follower.start()
    pidfile = ctx.workspace / "d.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10)
    pid = int(pidfile.read_text())
    assert process_alive(pid)
    launcher.stop(handle, grace_s=1)
    follower.join(timeout=30)
    assert not follower.is_alive()
    wait_until(lambda: not process_alive(pid), timeout=10, what="the daemon to die")


class _AsUser(TypedDict, total=False):
    user: int
    group: int


def _as_user(uid: int | None) -> _AsUser:
    return {} if uid is None else {"user": uid, "group": uid}


def test_a_launchbay_process_environment_is_unreadable_to_a_job_of_its_user(
    tmp_path: Path,
) -> None:
    # The same user as the "worker" (nobody when the suite runs as root, where a job would
    # be another user anyway): harden_process makes /proc/<pid>/environ root's.
    uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else None
    # (The system's Python: the suite's may live under a folder only root may enter.)
    python = "/usr/bin/python3" if uid is not None else sys.executable
    worker = subprocess.Popen(
        [
            python,
            "-c",
            "import sys, time; from orchestrator.hardening import harden_process; "
            "harden_process(); print('ready', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "LAUNCHBAY_TOKEN": "tok-must-not-leak"},
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
        **_as_user(uid),
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        job = subprocess.run(
            ["sh", "-c", f"cat /proc/{worker.pid}/environ; echo rc=$?"],
            capture_output=True,
            text=True,
            timeout=30,
            **_as_user(uid),
        )
        assert "tok-must-not-leak" not in job.stdout + job.stderr
        assert "rc=1" in job.stdout and "Permission denied" in job.stderr
    finally:
        worker.kill()
        worker.wait()


# ---------------------------------------------------------------------- docker


@pytest.mark.docker
def test_docker_jobs_run_unprivileged_limited_and_leave_no_setuid_file(
    make_ctx: MakeCtx, busybox_image: str, remove_containers_after: list[str], launch_settings
) -> None:  # type: ignore[no-untyped-def]
    import docker

    launcher = DockerLauncher(launch_settings, DockerConfig(pull_policy="never"))
    ctx = make_ctx(
        {
            "executor": "docker",
            "image": busybox_image,
            "cleanup": "never",
            "steps": [
                {
                    "name": "try",
                    "command": [
                        "sh",
                        "-c",
                        "id -u; cp /bin/busybox ./rootsh && chmod 6755 ./rootsh; "
                        "chown 0:0 ./rootsh || echo chown-refused",
                    ],
                }
            ],
        }
    )
    remove_containers_after.append(ctx.job_id)
    rep = RecordingReporter()
    out = launcher.follow(ctx, launcher.start(ctx), rep)
    assert out.exit_code == 0, rep.lines  # type: ignore[attr-defined]
    uid = rep.text("stdout")[0]
    assert uid != "0" and "chown-refused" in rep.text("stdout")
    left = (ctx.workspace / "rootsh").stat()
    assert left.st_uid != 0 and not left.st_mode & (stat.S_ISUID | stat.S_ISGID)

    client = docker.from_env()
    try:
        c = client.containers.get(f"lb-{ctx.job_id}-a1-s0")
        host = c.attrs["HostConfig"]
        assert c.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
        assert host["Memory"] == 2048 * 1024 * 1024  # the operator's default: never none
        assert host["NanoCpus"] == 2 * 10**9
        assert host["PidsLimit"] == 512
        assert host["CapDrop"] == ["ALL"] and host["Privileged"] is False
        assert any("no-new-privileges" in o for o in host["SecurityOpt"])
    finally:
        client.close()


def test_root_is_refused_as_the_docker_user_unless_allowed() -> None:
    from workers.launchers._docker_container import container_user

    with pytest.raises(ValueError, match="LAUNCHBAY_DOCKER_ALLOW_ROOT"):
        container_user(DockerConfig(user="0:0"))
    assert container_user(DockerConfig(user="0:0", allow_root=True)) == "0:0"
    if os.geteuid() == 0:
        assert container_user(DockerConfig()) == "65534:65534"


def test_tracking_job_trees_never_takes_another_jobs_exit_code(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    # While one job runs (so the tree scanner is busy), many short jobs start and end in
    # the same process: each leader is its own follower's to reap — a scanner or another
    # job's end that reaped or killed it would turn its exit code into 255 or 137.
    import concurrent.futures

    long = make_ctx({"executor": "process", "command": ["sleep", "30"]})
    handle = launcher.start(long)
    rep = RecordingReporter()
    follower = threading.Thread(target=launcher.follow, args=(long, handle, rep))
    follower.start()

    def short(i: int) -> int | None:
        ctx = make_ctx({"executor": "process", "command": ["sh", "-c", f"exit {i % 3}"]})
        out, _ = run(launcher, ctx)
        return out.exit_code  # type: ignore[attr-defined,no-any-return]

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(short, range(60)))
        assert codes == [i % 3 for i in range(60)]
    finally:
        launcher.stop(handle, grace_s=1)
        follower.join(timeout=30)


def test_a_folder_the_jobs_user_cannot_pass_is_named(tmp_path: Path) -> None:
    from workers.launchers.process import _warn_unreachable

    closed = tmp_path / "closed"
    (closed / "home" / "workspaces" / "j").mkdir(parents=True)
    closed.chmod(0o700)
    tmp_path.chmod(0o755)
    other = os.getuid() + 1  # anyone but the folder's owner
    assert _warn_unreachable(closed / "home" / "workspaces" / "j", other, other) == str(closed)
    closed.chmod(0o711)
    assert _warn_unreachable(closed / "home" / "workspaces" / "j", other, other) is None
