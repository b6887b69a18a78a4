"""Runs a job as local processes: one argv per step, each in its own process group.

No shell is involved unless the job's own argv asks for one (``["sh", "-c", ...]``). Every
step runs in a new session, so a cancel reaches the whole group; the group is killed when
its leader exits, and a last sweep kills any process that still carries the attempt's
``LAUNCHBAY_JOB_ID``/``LAUNCHBAY_ATTEMPT``, and every process of the job's tree
(``_family.py``: subreapers, so even a ``setsid env -i`` grandchild is found): no process
of the job outlives the job. A root worker runs jobs as ``LAUNCHBAY_JOB_USER``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import RunnerLaunchError
from orchestrator.hardening import PR_SET_PDEATHSIG, hand_over, job_identity, prctl, prctl_ready
from orchestrator.job import Step, StepResult
from workers.launchers._family import JOB_MARK, Families
from workers.launchers._lines import one_line, pump, utcnow
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter
from workers.per_process import of_this_process

log = logging.getLogger(__name__)

_ESCAPE_MARK = "LAUNCHBAY_JOB_ID"
HELPER_NAME = "launchbay-exec"


class ProcessConfig(BaseSettings):
    """How the process launcher runs jobs; ``LAUNCHBAY_PROCESS_*`` variables set it."""

    model_config = SettingsConfigDict(env_prefix="LAUNCHBAY_PROCESS_", extra="ignore")

    inherit_env: bool = Field(
        default=True,
        description="Start from the worker's environment (without its LAUNCHBAY_* settings, "
        "which hold secrets such as the token and database URL).",
    )
    reader_join_s: float = Field(
        default=5.0, gt=0, description="How long to wait for output after a step exits."
    )
    parent_death_signal: bool = Field(
        default=True, description="Kill a step's leader when the worker dies (Linux prctl)."
    )
    exec_helper: str = Field(
        default="auto",
        max_length=4096,
        description="The launchbay-exec helper that starts each step (workers/launchers/"
        "launchbay_exec.c, built by `make` where a C compiler is): `auto` (beside the "
        "worker's Python, if built), a path, or `none`. Without it a step starts through "
        "a Python preexec_fn, which forks the whole worker: 10-20 ms more per step.",
    )


@dataclass
class _Run:
    """One attempt's live state; ``lock`` orders spawning a step against stopping."""

    ctx: LaunchContext
    steps: list[Step]
    lock: threading.Lock = field(default_factory=threading.Lock)
    proc: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    usage: dict[str, float] = field(default_factory=dict)


class ProcessLauncher(Launcher):
    """Local processes. Handle: the first step's pid."""

    name = "process"
    config_model = ProcessConfig
    orphan_sweep = "host"

    def __init__(self, settings: Any, config: ProcessConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or ProcessConfig()
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._prctl = prctl if self.config.parent_death_signal and prctl_ready() else None
        self._families = of_this_process(Families)
        # Root runs jobs as an unprivileged user (LAUNCHBAY_JOB_USER); anyone else as itself.
        self._identity = job_identity(getattr(settings, "job_user", None))
        self._checked_reach = False
        self.helper = exec_helper(self.config.exec_helper)

    # ------------------------------------------------------------------ start

    def start(self, ctx: LaunchContext) -> str:
        spec = ctx.spec
        steps = spec.steps or [Step(name="main", command=spec.command)]
        run = _Run(ctx=ctx, steps=list(steps))
        try:
            proc = self._spawn(run, run.steps[0])
        except OSError as exc:
            # ENOENT/EACCES do not get better on retry; EAGAIN/ENOMEM (fork) may.
            transient = exc.errno in (11, 12)  # EAGAIN, ENOMEM
            raise RunnerLaunchError(self.name, 1, one_line(exc), transient=transient) from exc
        handle = str(proc.pid)
        with self._lock:
            self._runs[handle] = run
        return handle

    def _cwd(self, ctx: LaunchContext) -> Path:
        workdir = getattr(ctx.spec, "workdir", None)
        if not workdir:
            return ctx.workspace
        p = Path(workdir)
        return p if p.is_absolute() else ctx.workspace / p

    def _env(self, ctx: LaunchContext) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.config.inherit_env:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
        env.update(ctx.env())
        return env

    def _spawn(self, run: _Run, step: Step) -> subprocess.Popen[bytes]:
        cwd = self._cwd(run.ctx)
        if cwd.resolve().is_relative_to(run.ctx.workspace.resolve()):
            cwd.mkdir(parents=True, exist_ok=True)  # never create folders elsewhere
            if self._identity is not None:
                hand_over(*self._identity, run.ctx.workspace, cwd)
                if not self._checked_reach:
                    self._checked_reach = True
                    _warn_unreachable(run.ctx.workspace, *self._identity)
        with self._families.spawning():
            if self.helper is not None:
                proc = self._popen_via_helper(self.helper, run, step, cwd)
            else:
                proc = self._popen_via_python(run, step, cwd)
            self._families.add((run.ctx.job_id, run.ctx.attempt), proc.pid)
        run.proc, run.exited = proc, threading.Event()
        return proc

    def _popen(self, run: _Run, argv: list[str], cwd: Path, **how: Any) -> subprocess.Popen[bytes]:
        """``argv`` as a step's process: the job's environment, no stdin, its output piped,
        a session of its own; ``how`` prepares it (a preexec_fn, or the helper's pipe)."""
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=self._env(run.ctx),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            umask=0o022,  # (Launchbay's own processes keep theirs private)
            **how,
        )

    def _popen_via_python(self, run: _Run, step: Step, cwd: Path) -> subprocess.Popen[bytes]:
        """The step started with a Python preexec_fn doing what launchbay-exec does (no
        helper built): subprocess then forks the whole worker, 10-20 ms more per step."""
        die_with, parent = self._prctl, os.getpid()
        in_child, identity = self._families.in_child, self._identity

        def _in_child() -> None:
            # Runs in the child between fork and exec: no locks, no imports. The job's mark
            # is set while still root (so the job cannot take it off), then the identity
            # changes, then the parent-death signal (a change of identity clears it).
            in_child()
            if identity is not None:
                os.setgroups([])
                os.setgid(identity[1])
                os.setuid(identity[0])
            if die_with is not None:
                die_with(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != parent:  # the worker died before prctl took effect
                    os._exit(137)

        return self._popen(run, list(step.command), cwd, preexec_fn=_in_child)

    def _popen_via_helper(
        self, helper: str, run: _Run, step: Step, cwd: Path
    ) -> subprocess.Popen[bytes]:
        """The step started through launchbay-exec, which does what ``_in_child`` does
        (subreaper, mark, identity, parent-death signal) in C, so subprocess can vfork.
        Returns once the step's own program runs; a failure before that (a program that
        is not there, an identity that cannot be taken) raises OSError, as Popen does."""
        uid, gid = ("-", "-") if self._identity is None else map(str, self._identity)
        parent = str(os.getpid()) if self._prctl is not None else "0"
        said_r, said_w = os.pipe()
        try:
            argv = [helper, str(said_w), JOB_MARK.decode(), uid, gid, parent, "--"]
            proc = self._popen(run, [*argv, *step.command], cwd, pass_fds=(said_w,))
        except BaseException:
            os.close(said_r)
            raise
        finally:
            os.close(said_w)
        with open(said_r, "rb") as said:  # (end of file: the program runs)
            failed = said.read(256).decode(errors="replace").split()
        if not failed:
            return proc
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        where, err = failed[0], int(failed[1]) if failed[1:] and failed[1].isdigit() else 0
        if where == "exec":
            raise OSError(err, os.strerror(err), step.command[0])
        raise OSError(err, f"{os.strerror(err)} (launchbay-exec: {where})")

    # ------------------------------------------------------------------ follow

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        with self._lock:
            run = self._runs[handle]
        named = ctx.spec.steps is not None
        outcome = Outcome(exit_code=0)
        try:
            for i, step in enumerate(run.steps):
                with run.lock:
                    if run.stopping:
                        return Outcome(
                            error=f"stopped before step {step.name!r}",
                            resource_usage=run.usage or None,
                        )
                    if i > 0:
                        try:
                            self._spawn(run, step)
                        except OSError as exc:
                            now = utcnow()
                            reporter.step(
                                StepResult(
                                    name=step.name, exit_code=127, started_at=now, finished_at=now
                                )
                            )
                            return Outcome(
                                exit_code=127,
                                error=f"step {step.name!r} could not start: {one_line(exc)}",
                                resource_usage=run.usage or None,
                            )
                    proc = run.proc
                assert proc is not None
                started = utcnow()
                if named:
                    reporter.step(StepResult(name=step.name, started_at=started))
                code = self._follow_step(run, proc, reporter, step.name if named else None)
                if named:
                    reporter.step(
                        StepResult(
                            name=step.name, exit_code=code, started_at=started, finished_at=utcnow()
                        )
                    )
                outcome = Outcome(exit_code=code)
                if code != 0:
                    if named:
                        outcome.error = f"step {step.name!r} exited with code {code}"
                    break
        finally:
            self._families.end((ctx.job_id, ctx.attempt))
            _kill_escaped(ctx.job_id, ctx.attempt)
            with self._lock:
                self._runs.pop(handle, None)
        outcome.resource_usage = run.usage or None
        return outcome

    def _follow_step(
        self, run: _Run, proc: subprocess.Popen[bytes], reporter: Reporter, step: str | None
    ) -> int:
        readers = [
            threading.Thread(
                target=_read,
                args=(proc.stdout, "stdout", reporter, step, self.settings.max_log_line_bytes),
                daemon=True,
                name=f"out-{proc.pid}",
            ),
            threading.Thread(
                target=_read,
                args=(proc.stderr, "stderr", reporter, step, self.settings.max_log_line_bytes),
                daemon=True,
                name=f"err-{proc.pid}",
            ),
        ]
        for t in readers:
            t.start()
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): no code to report
            status, rusage = 255 << 8, None
        with run.lock:
            # The leader is reaped: take its group down now, before the pid can be reused.
            _killpg(proc.pid, signal.SIGKILL)
            proc.returncode = os.waitstatus_to_exitcode(status)
            run.exited.set()
        u = run.usage
        if rusage is not None:
            u["max_rss_kb"] = max(u.get("max_rss_kb", 0), rusage.ru_maxrss)
            u["user_cpu_s"] = round(u.get("user_cpu_s", 0) + rusage.ru_utime, 3)
            u["system_cpu_s"] = round(u.get("system_cpu_s", 0) + rusage.ru_stime, 3)
        for t in readers:
            t.join(self.config.reader_join_s)
        if any(t.is_alive() for t in readers):
            # Something outside the group still holds the pipes; end it, then stop reading.
            _kill_escaped(run.ctx.job_id, run.ctx.attempt)
            for t in readers:
                t.join(self.config.reader_join_s)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        code = proc.returncode
        return 128 - code if code < 0 else code  # killed by signal N -> 128+N, like a shell

    # ------------------------------------------------------------------ stop

    def stop(self, handle: str, grace_s: float) -> None:
        with self._lock:
            run = self._runs.get(handle)
        if run is None:
            _stop_foreign(handle, grace_s)
            return
        with run.lock:
            first, run.stopping = not run.stopping, True
        if not first:
            run.stopped.wait(grace_s + 5)
            return
        try:
            self._signal(run, signal.SIGTERM)
            exited = run.exited
            if not exited.wait(grace_s):
                self._signal(run, signal.SIGKILL)
            self._families.end((run.ctx.job_id, run.ctx.attempt))
            _kill_escaped(run.ctx.job_id, run.ctx.attempt)
        finally:
            run.stopped.set()

    @staticmethod
    def _signal(run: _Run, sig: int) -> None:
        # Under the run's lock: the follow thread reaps the leader and kills its group
        # under the same lock, so a signal never reaches a reused pid.
        with run.lock:
            if run.proc is not None and not run.exited.is_set():
                _killpg(run.proc.pid, sig)

    def orphans(self, is_live: Any) -> list[str]:
        """Processes of this host that carry a job id whose attempt is no longer live."""
        found = []
        for pid, env in _job_processes():
            try:
                attempt = int(env.get("LAUNCHBAY_ATTEMPT", "0"))
            except ValueError:
                continue
            if not is_live(env[_ESCAPE_MARK], attempt):
                found.append(str(pid))
        return found

    def remove(self, handle: str) -> None:
        _stop_foreign(handle, 0)


# ---------------------------------------------------------------------- helpers


def exec_helper(setting: str) -> str | None:
    """The launchbay-exec binary ``setting`` names (``auto``: beside this Python, built by
    ``make``), if it is there and executable; else None (steps start through Python)."""
    if setting.lower() in ("none", "off", ""):
        return None
    path = Path(sys.executable).parent / HELPER_NAME if setting == "auto" else Path(setting)
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    if setting != "auto":
        log.warning("LAUNCHBAY_PROCESS_EXEC_HELPER=%s is not an executable file", setting)
    return None


def _read(
    pipe: BufferedReader | None, stream: str, reporter: Reporter, step: str | None, limit: int
) -> None:
    if pipe is None:
        return
    # OSError/ValueError: the pipe was closed under us after a forced stop.
    with contextlib.suppress(OSError, ValueError):
        pump(
            iter(lambda: pipe.read1(65536), b""),
            lambda line: reporter.log(stream, line, step),
            limit,
        )


def _warn_unreachable(workspace: Path, uid: int, gid: int) -> str | None:
    """Say once when the job's user cannot pass through a folder above its workspace: the
    job still starts in it (the worker enters it before dropping to that user), but
    ``$LAUNCHBAY_WORKSPACE`` as an absolute path fails. Returns the folder, if any."""
    for d in reversed(workspace.resolve().parents):
        try:
            st = d.stat()
        except OSError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            log.warning(
                "process jobs run as uid %d, who cannot pass through %s: jobs start in their "
                "workspace but cannot reach it by its absolute path; put LAUNCHBAY_HOME "
                "elsewhere (e.g. /var/lib/launchbay) or let others traverse %s (chmod o+x)",
                uid,
                d,
                d,
            )
            return str(d)
    return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k.startswith(b"LAUNCHBAY_"):
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def _job_processes() -> list[tuple[int, dict[str, str]]]:
    """(pid, LAUNCHBAY_* env) of every process that belongs to some job."""
    me = os.getpid()
    out: list[tuple[int, dict[str, str]]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit() or int(name) == me:
            continue
        env = _environ(int(name))
        if _ESCAPE_MARK in env:
            out.append((int(name), env))
    return out


def _kill_escaped(job_id: str, attempt: int) -> int:
    """SIGKILL every process carrying this attempt's id; returns how many."""
    n = 0
    for pid, env in _job_processes():
        if env.get(_ESCAPE_MARK) == job_id and env.get("LAUNCHBAY_ATTEMPT") == str(attempt):
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
    return n


def _stop_foreign(handle: str, grace_s: float) -> None:
    """Stop a job another worker process started: only if the pid is still a job's."""
    try:
        pid = int(handle)
    except ValueError:
        return
    env = _environ(pid)
    if _ESCAPE_MARK not in env:
        return
    _killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        threading.Event().wait(0.1)
    _killpg(pid, signal.SIGKILL)
    _kill_escaped(env[_ESCAPE_MARK], int(env.get("LAUNCHBAY_ATTEMPT", "0") or 0))
