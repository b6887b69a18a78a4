"""The process launcher, driven directly: argv, env, steps, progress lines, stop, no leftovers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import workers.launchers as launchers_module
import workers.launchers.process as process_module
from orchestrator.errors import RunnerLaunchError
from orchestrator.settings import Settings
from tests.support import process_alive, wait_until
from tests.workers.conftest import MakeCtx
from workers.launchers import LauncherSet, Outcome, launcher_class
from workers.launchers._family import JOB_MARK
from workers.launchers.process import ProcessConfig, ProcessLauncher, _job_processes
from workers.testing import RecordingReporter


def _job_pids(job_id: str) -> list[int]:
    return [pid for pid, env in _job_processes() if env.get("LAUNCHBAY_JOB_ID") == job_id]


@pytest.fixture
def launcher(launch_settings, exec_helper_setting: str) -> ProcessLauncher:  # type: ignore[no-untyped-def]
    """A process launcher, once for each way a step starts (tests/workers/conftest.py)."""
    launcher = ProcessLauncher(launch_settings, ProcessConfig(exec_helper=exec_helper_setting))
    assert launcher.helper == (None if exec_helper_setting == "none" else exec_helper_setting)
    return launcher


def test_registry_names_the_process_launcher() -> None:
    assert launcher_class("process") is ProcessLauncher


def test_command_runs_without_a_shell_in_the_workspace(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    # A shell would expand $HOME and the glob; an argv list passes them through as is.
    ctx = make_ctx({"executor": "process", "command": ["echo", "$HOME", "*"]})
    rep = RecordingReporter()
    out = launcher.follow(ctx, launcher.start(ctx), rep)
    assert out.ok and out.exit_code == 0
    assert rep.text("stdout") == ["$HOME *"]


def test_context_reaches_the_job_and_secrets_do_not(
    launcher: ProcessLauncher, make_ctx: MakeCtx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHBAY_TOKEN", "s3cret")
    ctx = make_ctx(
        {
            "executor": "process",
            "env": {"GREETING": "hi"},
            "command": [
                "sh",
                "-c",
                'echo "$LAUNCHBAY_CONTEXT"; '
                'echo "$LAUNCHBAY_JOB_ID $LAUNCHBAY_ATTEMPT $GREETING"; '
                'echo "token=${LAUNCHBAY_TOKEN:-none}"; pwd',
            ],
        }
    )
    rep = RecordingReporter()
    assert launcher.follow(ctx, launcher.start(ctx), rep).ok
    context_line, ids, token, cwd = rep.text("stdout")
    context = json.loads(context_line)
    assert context["job_id"] == ctx.job_id and context["attempt"] == 1
    assert context["spec"]["env"] == {"GREETING": "hi"}
    assert context["workspace"] == str(ctx.workspace)
    assert ids == f"{ctx.job_id} 1 hi"
    assert token == "token=none"
    assert Path(cwd).resolve() == ctx.workspace.resolve()


def test_stdout_and_stderr_are_kept_apart(launcher: ProcessLauncher, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(
        {
            "executor": "process",
            "command": ["sh", "-c", "echo out; echo err >&2; printf 'no newline'"],
        }
    )
    rep = RecordingReporter()
    launcher.follow(ctx, launcher.start(ctx), rep)
    assert rep.text("stdout") == ["out", "no newline"]
    assert rep.text("stderr") == ["err"]


def test_nonzero_exit_code_is_reported(launcher: ProcessLauncher, make_ctx: MakeCtx) -> None:
    ctx = make_ctx({"executor": "process", "command": ["sh", "-c", "exit 7"]})
    out = launcher.follow(ctx, launcher.start(ctx), RecordingReporter())
    assert out.exit_code == 7 and not out.ok


def test_steps_run_in_order_and_a_failing_step_stops_the_job(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(
        {
            "executor": "process",
            "steps": [
                {"name": "write", "command": ["sh", "-c", "echo one > a.txt"]},
                {"name": "check", "command": ["sh", "-c", "grep -q one a.txt && exit 3"]},
                {"name": "never", "command": ["touch", "never.txt"]},
            ],
        }
    )
    rep = RecordingReporter()
    out = launcher.follow(ctx, launcher.start(ctx), rep)
    steps = rep.final_steps()
    assert out.exit_code == 3
    assert out.error == "step 'check' exited with code 3"
    assert steps["write"].exit_code == 0 and steps["check"].exit_code == 3
    assert "never" not in steps and not (ctx.workspace / "never.txt").exists()
    assert steps["write"].finished_at <= steps["check"].started_at  # type: ignore[operator]
    assert out.resource_usage and out.resource_usage["max_rss_kb"] > 0


def test_missing_program_is_a_permanent_launch_error(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx({"executor": "process", "command": ["/no/such/program"]})
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert err.value.transient is False and err.value.launcher == "process"
    assert "No such file or directory" in str(err.value) and "\n" not in str(err.value)


def test_a_program_found_on_the_jobs_path_runs_and_one_that_is_not_is_named(
    launcher: ProcessLauncher, make_ctx: MakeCtx, tmp_path: Path
) -> None:
    # The program is looked up on the PATH of the job's environment, as Popen does.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "lb-hello").write_text("#!/bin/sh\necho hello from the jobs PATH\n")
    (bindir / "lb-hello").chmod(0o755)
    tmp_path.chmod(0o755)  # (a root worker's job runs as another user: it must reach it)
    ctx = make_ctx(
        {"executor": "process", "command": ["lb-hello"], "env": {"PATH": f"{bindir}:/usr/bin:/bin"}}
    )
    rep = RecordingReporter()
    assert launcher.follow(ctx, launcher.start(ctx), rep).exit_code == 0
    assert rep.text("stdout") == ["hello from the jobs PATH"]
    ctx = make_ctx({"executor": "process", "command": ["lb-no-such-program-anywhere"]})
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert "lb-no-such-program-anywhere" in str(err.value) and err.value.transient is False


def test_every_step_is_marked_before_the_job_runs(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    # The mark the sweep knows job processes by, set before the job's own program runs.
    ctx = make_ctx(
        {
            "executor": "process",
            "steps": [
                {"name": "one", "command": ["cat", "/proc/self/oom_score_adj"]},
                {"name": "two", "command": ["cat", "/proc/self/oom_score_adj"]},
            ],
        }
    )
    rep = RecordingReporter()
    assert launcher.follow(ctx, launcher.start(ctx), rep).exit_code == 0
    assert rep.text("stdout") == [JOB_MARK.decode()] * 2


def test_with_the_helper_a_step_starts_without_a_python_preexec_fn(
    launch_settings: Settings,
    exec_helper_path: str,
    make_ctx: MakeCtx,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What makes the helper worth having: no preexec_fn, so subprocess can vfork instead of
    # forking the whole worker (bench/jobs.py, `process`, measures the difference).
    seen: list[dict[str, object]] = []
    real = process_module.subprocess.Popen

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(process_module.subprocess, "Popen", recording)
    launcher = ProcessLauncher(launch_settings, ProcessConfig(exec_helper=exec_helper_path))
    ctx = make_ctx({"executor": "process", "command": ["true"]})
    assert launcher.follow(ctx, launcher.start(ctx), RecordingReporter()).exit_code == 0
    assert len(seen) == 1 and seen[0].get("preexec_fn") is None


def test_stop_terminates_the_group_within_the_grace(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    # The shell traps TERM and says so: the grace period lets it react before the kill.
    ctx = make_ctx(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "trap 'echo got TERM; exit 5' TERM; echo ready; sleep 300 & wait",
            ],
        }
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    result: dict[str, Outcome] = {}
    t = threading.Thread(target=lambda: result.setdefault("o", launcher.follow(ctx, handle, rep)))
    t.start()
    assert rep.wait_for_line("ready")
    launcher.stop(handle, grace_s=10)
    t.join(30)
    assert not t.is_alive()
    assert "got TERM" in rep.text("stdout")
    assert result["o"].exit_code == 5
    assert _job_pids(ctx.job_id) == []  # the background sleep went with it
    launcher.stop(handle, grace_s=10)  # idempotent, after the end too


def test_stop_kills_what_ignores_sigterm(launcher: ProcessLauncher, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(
        {
            "executor": "process",
            "command": ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        }
    )
    rep = RecordingReporter()
    handle = launcher.start(ctx)
    done = threading.Event()
    out = {}

    def run() -> None:
        out["o"] = launcher.follow(ctx, handle, rep)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert rep.wait_for_line("ready")
    stoppers = [threading.Thread(target=launcher.stop, args=(handle, 0.5)) for _ in range(3)]
    for s in stoppers:  # concurrent stops are safe
        s.start()
    assert done.wait(30)
    for s in stoppers:
        s.join(30)
    assert out["o"].exit_code == 128 + 9
    assert _job_pids(ctx.job_id) == []


def test_escaped_processes_die_with_the_job(
    launcher: ProcessLauncher, make_ctx: MakeCtx, tmp_path: Path
) -> None:
    # setsid leaves the process group; the launcher still finds it by its job id.
    tmp_path.chmod(0o1777)  # (as root, the job runs as an unprivileged user)
    pidfile = tmp_path / "escaped.pid"
    ctx = make_ctx(
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' "
                "</dev/null >/dev/null 2>&1 & "
                f"while [ ! -s {pidfile} ]; do :; done; echo started",
            ],
        }
    )
    rep = RecordingReporter()
    out = launcher.follow(ctx, launcher.start(ctx), rep)
    assert out.exit_code == 0 and rep.text("stdout") == ["started"]
    pid = int(pidfile.read_text())
    wait_until(
        lambda: not process_alive(pid),
        timeout=10,
        what="the escaped process to die",
    )
    assert _job_pids(ctx.job_id) == []


def test_orphans_are_processes_of_attempts_no_longer_live(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx({"executor": "process", "command": ["sleep", "300"]})
    handle = launcher.start(ctx)
    try:
        assert handle not in launcher.orphans(lambda j, a: True)
        found = launcher.orphans(lambda j, a: j != ctx.job_id)
        assert found == [handle]
        # Another process's launcher (no in-memory state) can still remove it by handle.
        ProcessLauncher(ctx.settings).remove(handle)
        out = launcher.follow(ctx, handle, RecordingReporter())
        assert out.exit_code in (128 + 15, 128 + 9)
    finally:
        launcher.stop(handle, 0)
    assert _job_pids(ctx.job_id) == []


def test_a_job_ending_on_one_launcher_leaves_another_launchers_jobs_alone(
    make_ctx: MakeCtx, launch_settings: Settings, tmp_path: Path
) -> None:
    # An attempt's end kills the marked orphans re-parented to its process that no running
    # job claims. Two launchers in one process (an agent whose first attempts raced to
    # make theirs) once each kept their own list, so a job ending on one killed and reaped
    # the other's running jobs: they ended "exited with code 255" (or 137) at once.
    first, second = ProcessLauncher(launch_settings), ProcessLauncher(launch_settings)
    tmp_path.chmod(0o1777)  # (as root, the job runs as an unprivileged user)
    flag = tmp_path / "go"
    waiting = make_ctx(
        {
            "executor": "process",
            "command": ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 7"],
        }
    )
    handle = second.start(waiting)
    short = make_ctx({"executor": "process", "command": ["sh", "-c", "exit 3"]})
    assert first.follow(short, first.start(short), RecordingReporter()).exit_code == 3
    assert process_alive(int(handle)), "the other launcher's job was killed"
    flag.touch()
    assert second.follow(waiting, handle, RecordingReporter()).exit_code == 7


def test_attempts_that_ask_at_once_share_one_launcher(
    launch_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []

    class Slow:  # a launcher whose making takes a while: the window the race needs
        def __init__(self, settings: Settings) -> None:
            threading.Event().wait(0.02)
            made.append(self)

    monkeypatch.setattr(launchers_module, "launcher_class", lambda executor: Slow)
    launchers = LauncherSet(launch_settings)
    gate = threading.Barrier(8)
    got: list[object] = []

    def ask() -> None:
        gate.wait(10)
        got.append(launchers.get("process"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(made) == 1 and got == made * 8


def test_relative_workdir_is_inside_the_workspace(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx({"executor": "process", "workdir": "sub", "command": ["pwd"]})
    rep = RecordingReporter()
    assert launcher.follow(ctx, launcher.start(ctx), rep).ok
    assert Path(rep.text()[0]).resolve() == (ctx.workspace / "sub").resolve()


def test_worker_env_is_inherited_without_launchbay_settings(
    launcher: ProcessLauncher, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx({"executor": "process", "command": ["env"]})
    rep = RecordingReporter()
    assert launcher.follow(ctx, launcher.start(ctx), rep).ok
    names = {line.split("=", 1)[0] for line in rep.text()}
    assert f"PATH={os.environ['PATH']}" in rep.text()
    assert {n for n in names if n.startswith("LAUNCHBAY_")} == {
        "LAUNCHBAY_CONTEXT",
        "LAUNCHBAY_JOB_ID",
        "LAUNCHBAY_ATTEMPT",
        "LAUNCHBAY_WORKSPACE",
    }


def test_a_killed_worker_takes_its_jobs_with_it(
    make_ctx: MakeCtx, tmp_path: Path, exec_helper_setting: str
) -> None:
    import signal
    import subprocess
    import sys

    ctx = make_ctx({"executor": "process", "command": ["sleep", "300"]})
    # A stand-in worker process: starts the job, says its pid, then waits to be killed.
    script = (
        "import sys, uuid\n"
        "from pathlib import Path\n"
        "from orchestrator.job import ProcessSpec\n"
        "from orchestrator.settings import Settings\n"
        "from workers.launchers import LaunchContext\n"
        "from workers.launchers.process import ProcessLauncher\n"
        f"s = Settings(home=Path({str(ctx.settings.home)!r}))\n"
        f"c = LaunchContext(job_id={ctx.job_id!r}, attempt=1, runner_id='runner-x', "
        f"spec=ProcessSpec(command=['sleep', '300']), workspace=Path({str(ctx.workspace)!r}), "
        "settings=s)\n"
        "print(ProcessLauncher(s).start(c), flush=True)\n"
        "sys.stdin.read()\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "LAUNCHBAY_PROCESS_EXEC_HELPER": exec_helper_setting},
    )
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        assert _job_pids(ctx.job_id) == [pid]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        wait_until(
            lambda: _job_pids(ctx.job_id) == [], timeout=10, what="the job to die with its worker"
        )
    finally:
        worker.kill()
        launcher = ProcessLauncher(ctx.settings)
        for pid in _job_pids(ctx.job_id):
            launcher.remove(str(pid))
