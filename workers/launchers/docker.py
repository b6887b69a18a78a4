"""Runs a job's steps in Docker containers, one container per step, in order.

Every container is unprivileged (all capabilities dropped, no new privileges, a pid limit,
the job's CPU and memory limits), sees only the attempt's workspace (bind-mounted at
``/workspace``, its working directory) and carries the labels ``launchbay.job_id``,
``launchbay.attempt`` and ``launchbay.instance`` so a sweep can find what a lost worker
left. The step's argv replaces the image's entrypoint, as ``command`` does in Kubernetes.
The ``docker`` package is imported only when this launcher is used.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import RunnerLaunchError
from orchestrator.job import Step, StepResult
from workers.launchers._docker_container import (
    LABEL_ATTEMPT,
    LABEL_CLEANUP,
    LABEL_INSTANCE,
    LABEL_JOB,
    container_kwargs,
    hand_over_workspace,
    scrub_workspace,
)
from workers.launchers._docker_usage import Usage
from workers.launchers._lines import instance_id, one_line, pump, utcnow
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter

log = logging.getLogger(__name__)

# Registry answers that mean the image does not exist (or is not ours to pull).
_MISSING_IMAGE = re.compile(
    r"not found|manifest unknown|pull access denied|repository does not exist|"
    r"invalid reference format",
    re.IGNORECASE,
)


class DockerConfig(BaseSettings):
    """How the docker launcher reaches the engine and shapes containers.

    A worker reads it from ``LAUNCHBAY_DOCKER_*`` variables (``LAUNCHBAY_DOCKER_PULL_POLICY``...).
    """

    model_config = SettingsConfigDict(env_prefix="LAUNCHBAY_DOCKER_", extra="ignore")

    base_url: str | None = Field(
        default=None, description="Engine address; DOCKER_HOST / the local socket if unset."
    )
    api_timeout_s: float = Field(default=60, gt=0, description="Timeout of one API call.")
    pull_policy: Literal["always", "if_not_present", "never"] = Field(
        default="if_not_present", description="When to pull a step's image."
    )
    user: str | None = Field(
        default=None,
        description="uid:gid inside containers. Unset: the worker's own ids, so files a job "
        "writes in the workspace stay the worker's — except for a root worker, whose jobs "
        "run as 65534:65534 (nobody). Root (0) is refused unless allow_root is set.",
    )
    allow_root: bool = Field(
        default=False, description="Let LAUNCHBAY_DOCKER_USER be root (uid or gid 0)."
    )
    pids_limit: int = Field(default=512, ge=16, description="Processes per container.")
    default_memory_mb: int = Field(
        default=2048, ge=16, description="Memory limit of a job whose spec's resources set none."
    )
    default_cpus: float = Field(
        default=2.0, gt=0, description="CPU limit of a job whose spec's resources set none."
    )
    init: bool = Field(default=True, description="Run docker-init as PID 1 (forwards signals).")
    read_only_rootfs: bool = Field(default=False, description="Mount the image read-only.")
    host_workspaces_dir: str | None = Field(
        default=None,
        description="Where the engine sees the workers' workspaces folder, when the "
        "worker itself runs in a container (compose).",
    )
    keep_finished_s: float = Field(
        default=24 * 3600,
        ge=0,
        description="How long the orphan sweep spares stopped containers of jobs whose "
        "cleanup policy keeps them.",
    )


@dataclass
class _Run:
    ctx: LaunchContext
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: str | None = None  # id of the step container that runs now
    containers: list[str] = field(default_factory=list)
    stopping: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    usage: Usage = field(default_factory=Usage)


class DockerLauncher(Launcher):
    """Docker containers. Handle: the id of the first step's container."""

    name = "docker"
    config_model = DockerConfig
    orphan_sweep = "beat"

    def __init__(self, settings: Any, config: DockerConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or DockerConfig()
        self.instance = instance_id(settings)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ engine

    def client(self) -> Any:
        """The Docker client, made on first use (raises DockerException if unreachable)."""
        with self._client_lock:
            if self._client is None:
                try:
                    import docker
                except ImportError as exc:
                    raise RunnerLaunchError(
                        self.name,
                        1,
                        "the 'docker' package is not installed (pip install 'launchbay[docker]')",
                    ) from exc

                kw: dict[str, Any] = {
                    "timeout": int(self.config.api_timeout_s),
                    "max_pool_size": 64,
                }
                if self.config.base_url:
                    c = docker.DockerClient(base_url=self.config.base_url, **kw)
                else:
                    c = docker.from_env(**kw)
                c.ping()
                self._client = c
            return self._client

    def _launch_error(self, exc: BaseException) -> RunnerLaunchError:
        return RunnerLaunchError(self.name, 1, one_line(exc), transient=_is_transient(exc))

    # ------------------------------------------------------------------ start

    def start(self, ctx: LaunchContext) -> str:
        run = _Run(ctx=ctx)
        try:
            self.client()
            self._ensure_image(ctx.spec.image)
            cid = self._start_step(run, 0, ctx.spec.steps[0])
        except RunnerLaunchError:
            self._remove_all(run)
            raise
        except Exception as exc:
            self._remove_all(run)
            raise self._launch_error(exc) from exc
        with self._lock:
            self._runs[cid] = run
        return cid

    def _ensure_image(self, image: str) -> None:
        import docker.errors

        policy = self.config.pull_policy
        images = self.client().images
        if policy != "always":
            try:
                images.get(image)
                return
            except docker.errors.ImageNotFound:
                if policy == "never":
                    raise RunnerLaunchError(
                        self.name,
                        1,
                        f"image {image!r} is not present and the pull policy is 'never'",
                    ) from None
        try:
            repo, tag = _split_image(image)
            images.pull(repo, tag=tag)
        except docker.errors.APIError as exc:
            if exc.status_code == 404 or _MISSING_IMAGE.search(str(exc.explanation or exc)):
                raise RunnerLaunchError(
                    self.name,
                    1,
                    f"image {image!r} not found: {one_line(str(exc.explanation or exc))}",
                ) from exc
            raise

    def _start_step(self, run: _Run, index: int, step: Step) -> str:
        """Create and start one step's container (the caller holds ``run.lock`` or owns run)."""
        import docker.errors

        containers = self.client().containers
        kw = container_kwargs(run.ctx, index, step, self.config, self.instance)
        hand_over_workspace(run.ctx.workspace, kw["user"])
        try:
            c = containers.create(**kw)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # A container of that name is left from an earlier try of this launch.
            self._force_remove(kw["name"])
            c = containers.create(**kw)
        run.containers.append(c.id)
        run.current = c.id
        c.start()
        return str(c.id)

    # ------------------------------------------------------------------ follow

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        with self._lock:
            run = self._runs[handle]
        outcome = self._follow_steps(ctx, handle, run, reporter)
        outcome.resource_usage = run.usage.finish()
        return outcome

    def _follow_steps(
        self, ctx: LaunchContext, handle: str, run: _Run, reporter: Reporter
    ) -> Outcome:
        try:
            for i, step in enumerate(ctx.spec.steps):
                with run.lock:
                    if run.stopping:
                        return Outcome(error=f"stopped before step {step.name!r}")
                    if i > 0:
                        try:
                            self._start_step(run, i, step)
                        except Exception as exc:
                            now = utcnow()
                            reporter.step(
                                StepResult(name=step.name, started_at=now, finished_at=now)
                            )
                            return Outcome(
                                error=f"step {step.name!r} could not start: {one_line(exc)}"
                            )
                    cid = run.current
                assert cid is not None
                run.usage.follow(self.client().api, cid)
                code, started, finished = self._follow_container(cid, reporter, step.name)
                reporter.step(
                    StepResult(
                        name=step.name, exit_code=code, started_at=started, finished_at=finished
                    )
                )
                if code != 0:
                    return Outcome(
                        exit_code=code, error=f"step {step.name!r} exited with code {code}"
                    )
            return Outcome(exit_code=0)
        finally:
            scrub_workspace(ctx.workspace)
            with self._lock:
                self._runs.pop(handle, None)

    def _follow_container(
        self, cid: str, reporter: Reporter, step: str
    ) -> tuple[int | None, datetime, datetime]:
        api = self.client().api
        started = utcnow()
        reporter.step(StepResult(name=step, started_at=started))

        def read(stream: str) -> None:
            try:
                chunks = api.logs(
                    cid,
                    stdout=stream == "stdout",
                    stderr=stream == "stderr",
                    stream=True,
                    follow=True,
                )
                pump(
                    chunks,
                    lambda line: reporter.log(stream, line, step),
                    self.settings.max_log_line_bytes,
                )
            except Exception as exc:  # the container vanished (removed by a cancel)
                log.debug("log stream of %s ended: %s", cid, exc)

        readers = [
            threading.Thread(target=read, args=(s,), daemon=True, name=f"{s}-{cid[:12]}")
            for s in ("stdout", "stderr")
        ]
        for t in readers:
            t.start()
        code: int | None
        try:
            code = int(api.wait(cid, timeout=None)["StatusCode"])
        except Exception as exc:
            log.warning("waiting for container %s failed: %s", cid[:12], exc)
            code = None
        finished = utcnow()
        for t in readers:
            t.join(10)
        return code, started, finished

    # ------------------------------------------------------------------ stop

    def stop(self, handle: str, grace_s: float) -> None:
        with self._lock:
            run = self._runs.get(handle)
        if run is None:
            # Not started by this process: stop every container of that attempt.
            for other in self._attempt_containers(handle):
                self._stop_container(other, grace_s)
            return
        with run.lock:
            first, run.stopping = not run.stopping, True
            current = run.current
        if not first:
            run.stopped.wait(grace_s + 30)
            return
        try:
            if current is not None:
                self._stop_container(current, grace_s)
        finally:
            run.stopped.set()

    def _stop_container(self, cid: str, grace_s: float) -> None:
        """``docker stop`` (SIGTERM, grace, SIGKILL), then a kill if it still runs."""
        import docker.errors

        api = self.client().api
        try:
            api.stop(cid, timeout=max(0, int(round(grace_s))))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            log.warning("docker stop %s failed (%s); killing it", cid[:12], exc)
        try:
            if api.inspect_container(cid)["State"]["Running"]:
                api.kill(cid)
        except docker.errors.APIError:
            pass

    def _attempt_containers(self, handle: str) -> list[str]:
        import docker.errors

        api = self.client().api
        try:
            labels = api.inspect_container(handle)["Config"]["Labels"] or {}
        except docker.errors.NotFound:
            return []
        if LABEL_JOB not in labels:
            return []  # never touch a container Launchbay did not start
        filters = {
            "label": [
                f"{LABEL_JOB}={labels[LABEL_JOB]}",
                f"{LABEL_ATTEMPT}={labels.get(LABEL_ATTEMPT, '')}",
            ]
        }
        return [c["Id"] for c in api.containers(all=True, filters=filters)]

    # ------------------------------------------------------------------ cleanup

    def cleanup(self, ctx: LaunchContext, handle: str | None) -> None:
        """Remove every container of this attempt (the runner applies the cleanup policy)."""
        import docker.errors

        try:
            api = self.client().api
        except Exception:
            log.warning("cannot reach Docker to clean up job %s", ctx.job_id)
            return
        filters = {
            "label": [
                f"{LABEL_JOB}={ctx.job_id}",
                f"{LABEL_ATTEMPT}={ctx.attempt}",
                f"{LABEL_INSTANCE}={self.instance}",
            ]
        }
        for c in api.containers(all=True, filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(c["Id"], force=True, v=True)

    def _remove_all(self, run: _Run) -> None:
        for cid in run.containers:
            self._force_remove(cid)

    def _force_remove(self, ref: str) -> None:
        import docker.errors

        try:
            self.client().api.remove_container(ref, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("could not remove container %s: %s", ref, exc)

    def orphans(self, is_live: Any) -> list[str]:
        """Containers of this installation whose (job, attempt) is no longer live.

        Stopped containers of jobs whose cleanup policy keeps them are spared for
        ``keep_finished_s``; a running one is always an orphan once its attempt is over.
        """
        api = self.client().api
        found = []
        now = utcnow()
        for c in api.containers(all=True, filters={"label": [f"{LABEL_INSTANCE}={self.instance}"]}):
            labels = c.get("Labels") or {}
            try:
                job_id, attempt = labels[LABEL_JOB], int(labels[LABEL_ATTEMPT])
            except (KeyError, ValueError):
                continue
            if is_live(job_id, attempt):
                continue
            if c.get("State") != "running" and labels.get(LABEL_CLEANUP, "always") != "always":
                finished = _finished_at(api, c["Id"])
                if finished and (now - finished).total_seconds() < self.config.keep_finished_s:
                    continue
            found.append(str(c["Id"]))
        return found

    def remove(self, handle: str) -> None:
        self._stop_container(handle, 0)
        self._force_remove(handle)


# ---------------------------------------------------------------------- helpers


def _is_transient(exc: BaseException) -> bool:
    """Daemon unreachable or a server-side error: worth another try."""
    import docker.errors
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, docker.errors.APIError):
        return bool(exc.is_server_error())
    # from_env/ping failures wrap connection errors in a bare DockerException.
    return isinstance(exc, docker.errors.DockerException) and not isinstance(
        exc, docker.errors.APIError | docker.errors.InvalidArgument
    )


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


def _finished_at(api: Any, cid: str) -> datetime | None:
    try:
        raw = api.inspect_container(cid)["State"]["FinishedAt"]
    except Exception:
        return None
    try:
        # Docker gives nanoseconds; Python parses up to microseconds.
        head, _, frac = raw.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    except ValueError:
        return None
