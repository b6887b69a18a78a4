"""Runs a job as a Kubernetes batch/v1 Job, one Job per attempt.

The Job comes from :mod:`workers.launchers._k8s_manifest` (validated after the user's
template is merged in). The launcher follows the pod's log, reads the exit code from the
pod's container status, and cancels by deleting the Job with foreground propagation, so
the pod is gone (after its termination grace) before the Job is. It configures itself
in-cluster when it runs in a pod, else from a kubeconfig. The ``kubernetes`` package is
imported only when this launcher is used.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import RunnerLaunchError
from workers.launchers._k8s_manifest import (
    CONTAINER,
    LABEL_ATTEMPT,
    LABEL_CLEANUP,
    LABEL_INSTANCE,
    LABEL_JOB,
    ManifestError,
    build_job_manifest,
)
from workers.launchers._lines import instance_id, one_line, pump
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter

log = logging.getLogger(__name__)

# Pod waiting reasons that will not resolve by waiting longer.
_STUCK = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
}


class KubernetesConfig(BaseSettings):
    """How the kubernetes launcher reaches the cluster and shapes Jobs.

    A worker reads it from ``LAUNCHBAY_KUBE_*`` variables (``LAUNCHBAY_KUBE_KUBECONFIG``...).
    """

    model_config = SettingsConfigDict(env_prefix="LAUNCHBAY_KUBE_", extra="ignore")

    namespace: str | None = Field(
        default=None, description="Default namespace; Settings.kube_namespace if unset."
    )
    host: str | None = Field(
        default=None, description="API server URL, bypassing kubeconfig (tests, proxies)."
    )
    kubeconfig: str | None = Field(default=None, description="kubeconfig path ($KUBECONFIG).")
    context: str | None = Field(default=None, description="kubeconfig context.")
    ttl_seconds_after_finished: int = Field(
        default=3600, ge=0, description="How long Kubernetes keeps a finished Job."
    )
    deadline_margin_s: int = Field(
        default=10, ge=0, description="activeDeadlineSeconds = timeout_s + this margin."
    )
    service_account: str | None = None
    image_pull_policy: str | None = Field(default=None, description="Always/IfNotPresent/Never.")
    workspace_claim: str | None = Field(
        default=None,
        description="A ReadWriteMany PVC the workers mount at their workspaces folder; "
        "pods mount their attempt's sub-path, so artifacts can be collected. "
        "Without it pods get an emptyDir and no artifacts.",
    )
    poll_s: float = Field(default=0.5, gt=0, description="Job status poll interval.")
    start_timeout_s: float = Field(
        default=600, gt=0, description="How long a pod may stay pending before the job fails."
    )


def _split(handle: str) -> tuple[str, str]:
    ns, _, name = handle.partition("/")
    if not ns or not name:
        raise ValueError(f"bad kubernetes handle {handle!r} (want namespace/job-name)")
    return ns, name


class KubernetesLauncher(Launcher):
    """Kubernetes Jobs. Handle: ``namespace/job-name``."""

    name = "kubernetes"
    config_model = KubernetesConfig
    orphan_sweep = "beat"

    def __init__(self, settings: Any, config: KubernetesConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or KubernetesConfig()
        self.namespace = self.config.namespace or settings.kube_namespace
        self.instance = instance_id(settings)
        self._apis: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._stopping: set[str] = set()
        self._namespaces: set[str] = {self.namespace}

    # ------------------------------------------------------------------ client

    def apis(self) -> tuple[Any, Any]:
        """(BatchV1Api, CoreV1Api): in-cluster config, else kubeconfig, else ``host``."""
        with self._lock:
            if self._apis is None:
                try:
                    from kubernetes import client, config
                except ImportError as exc:
                    raise RunnerLaunchError(
                        self.name,
                        1,
                        "the 'kubernetes' package is not "
                        "installed (pip install 'launchbay[kubernetes]')",
                    ) from exc

                conf = client.Configuration()
                if self.config.host:
                    conf.host = self.config.host
                else:
                    try:
                        config.load_incluster_config(client_configuration=conf)
                    except config.ConfigException:
                        config.load_kube_config(
                            config_file=self.config.kubeconfig,
                            context=self.config.context,
                            client_configuration=conf,
                        )
                api = client.ApiClient(conf)
                self._apis = (client.BatchV1Api(api), client.CoreV1Api(api))
            return self._apis

    def manifest(self, ctx: LaunchContext) -> dict[str, Any]:
        """The Job this launcher would create for ``ctx`` (raises ManifestError)."""
        cfg = self.config
        sub_path = None
        if cfg.workspace_claim:
            sub_path = ctx.workspace.relative_to(self.settings.workspaces_dir).as_posix()
        return build_job_manifest(
            ctx,
            namespace=ctx.spec.namespace or self.namespace,
            instance=self.instance,
            ttl_s=cfg.ttl_seconds_after_finished,
            deadline_margin_s=cfg.deadline_margin_s,
            service_account=cfg.service_account,
            image_pull_policy=cfg.image_pull_policy,
            workspace_claim=cfg.workspace_claim,
            workspace_sub_path=sub_path,
        )

    # ------------------------------------------------------------------ start

    def start(self, ctx: LaunchContext) -> str:
        if ctx.spec.artifacts and not self.config.workspace_claim:
            # Without a shared volume the pod's files never reach the worker: say so now
            # rather than end "succeeded" with the artifacts silently missing.
            raise RunnerLaunchError(
                self.name,
                1,
                "artifacts need a shared workspace volume (set LAUNCHBAY_KUBE_WORKSPACE_CLAIM)",
            )
        try:
            manifest = self.manifest(ctx)
        except ManifestError as exc:
            raise RunnerLaunchError(self.name, 1, str(exc)) from exc
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            batch, _ = self.apis()
            batch.create_namespaced_job(ns, manifest)
        except RunnerLaunchError:
            raise
        except Exception as exc:
            if _status(exc) == 409:
                # An earlier try of this launch reached the server after all: adopt it.
                log.info("Job %s/%s already exists; following it", ns, name)
            else:
                raise RunnerLaunchError(
                    self.name, 1, _describe(exc), transient=_is_transient(exc)
                ) from exc
        self._namespaces.add(ns)
        return f"{ns}/{name}"

    # ------------------------------------------------------------------ follow

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        ns, name = _split(handle)
        batch, core = self.apis()
        selector = f"{LABEL_JOB}={ctx.job_id},{LABEL_ATTEMPT}={ctx.attempt}"
        pending_since = time.monotonic()
        seen = 0  # log lines already reported, so a reconnect does not repeat them
        while True:
            job = _read_job(batch, ns, name)
            if job is None or job.metadata.deletion_timestamp is not None:
                return Outcome(error="the Kubernetes Job was deleted")
            pod = _newest_pod(core, ns, selector)
            state = _container_state(pod)
            if state == "waiting":
                reason, message = _waiting(pod)
                if reason in _STUCK:
                    self._delete(ns, name, "Background")
                    return Outcome(error=f"pod could not start: {reason}: {message}")
            if state in ("running", "terminated"):
                seen = self._stream_logs(core, ns, pod.metadata.name, reporter, seen)
                pod = _read_pod(core, ns, pod.metadata.name) or pod
                if _container_state(pod) == "terminated":
                    return self._finished(batch, ns, name, pod)
            done = _job_finished(job)
            if done is not None and state != "running":
                return self._finished(batch, ns, name, pod, done)
            if (
                state in (None, "waiting")
                and time.monotonic() - pending_since > self.config.start_timeout_s
            ):
                self._delete(ns, name, "Background")
                return Outcome(error=f"pod did not start within {self.config.start_timeout_s:g} s")
            if handle in self._stopping:
                return Outcome(error="stopped")
            time.sleep(self.config.poll_s)

    def _stream_logs(self, core: Any, ns: str, pod: str, reporter: Reporter, seen: int) -> int:
        count = 0

        def emit(line: str) -> None:
            nonlocal count
            count += 1
            if count > seen:
                reporter.log("stdout", line)

        try:
            resp = core.read_namespaced_pod_log(
                pod, ns, container=CONTAINER, follow=True, _preload_content=False
            )
        except Exception as exc:
            log.debug("log stream of %s/%s unavailable: %s", ns, pod, exc)
            return seen
        try:
            pump(resp.stream(4096, decode_content=True), emit, self.settings.max_log_line_bytes)
        except Exception as exc:  # the API server dropped the stream; the caller retries
            log.debug("log stream of %s/%s broke: %s", ns, pod, exc)
        finally:
            resp.release_conn()
        return max(seen, count)

    def _finished(
        self,
        batch: Any,
        ns: str,
        name: str,
        pod: Any,
        condition: tuple[str, str, str] | None = None,
    ) -> Outcome:
        code = _exit_code(pod)
        # The Job controller marks the Job a moment after the pod ends; give it that moment.
        deadline = time.monotonic() + 5
        while condition is None and time.monotonic() < deadline:
            job = _read_job(batch, ns, name)
            if job is None:
                break
            condition = _job_finished(job)
            if condition is None:
                time.sleep(self.config.poll_s)
        if (
            condition is not None
            and condition[0] == "Failed"
            and condition[1] not in ("", "BackoffLimitExceeded")
        ):
            _, reason, message = condition
            return Outcome(exit_code=code, error=one_line(f"Job failed: {reason}: {message}"))
        if code is None:
            return Outcome(error="the pod ended without an exit code")
        return Outcome(exit_code=code)

    # ------------------------------------------------------------------ stop

    def stop(self, handle: str, grace_s: float) -> None:
        """Delete the Job with foreground propagation and wait until it is gone."""
        ns, name = _split(handle)
        with self._lock:
            self._stopping.add(handle)
        self._delete(ns, name, "Foreground", grace_s)
        batch, _ = self.apis()
        deadline = time.monotonic() + grace_s + 60
        while time.monotonic() < deadline:
            if _read_job(batch, ns, name) is None:
                return
            time.sleep(self.config.poll_s)
        log.warning("Job %s still exists %g s after its deletion", handle, grace_s + 60)

    def _delete(self, ns: str, name: str, propagation: str, grace_s: float | None = None) -> None:
        from kubernetes import client

        batch, _ = self.apis()
        body = client.V1DeleteOptions(propagation_policy=propagation)
        if grace_s is not None:
            body.grace_period_seconds = int(grace_s)
        try:
            batch.delete_namespaced_job(name, ns, body=body)
        except Exception as exc:
            if _status(exc) != 404:
                raise

    def cleanup(self, ctx: LaunchContext, handle: str | None) -> None:
        if handle:
            ns, name = _split(handle)
            self._delete(ns, name, "Background")
        with self._lock:
            self._stopping.discard(handle or "")

    def orphans(self, is_live: Any) -> list[str]:
        """Jobs of this installation whose attempt is over and that still run.

        Finished Jobs are left to ``ttlSecondsAfterFinished``.
        """
        batch, _ = self.apis()
        found = []
        for ns in sorted(self._namespaces):
            jobs = batch.list_namespaced_job(ns, label_selector=f"{LABEL_INSTANCE}={self.instance}")
            for job in jobs.items:
                labels = job.metadata.labels or {}
                try:
                    job_id, attempt = labels[LABEL_JOB], int(labels[LABEL_ATTEMPT])
                except (KeyError, ValueError):
                    continue
                if is_live(job_id, attempt):
                    continue
                if _job_finished(job) is not None and labels.get(LABEL_CLEANUP) != "always":
                    continue
                found.append(f"{ns}/{job.metadata.name}")
        return found

    def remove(self, handle: str) -> None:
        ns, name = _split(handle)
        self._delete(ns, name, "Foreground")


# ---------------------------------------------------------------------- helpers


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _is_transient(exc: BaseException) -> bool:
    """API unreachable, throttled or failing server-side: worth another try."""
    import urllib3

    status = _status(exc)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _describe(exc: BaseException) -> str:
    status, reason = _status(exc), getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    if status is not None:
        import json

        try:
            message = json.loads(body)["message"] if body else reason
        except (ValueError, KeyError, TypeError):
            message = reason
        return one_line(f"API answered {status} {reason}: {message}")
    return one_line(exc)


def _read_job(batch: Any, ns: str, name: str) -> Any:
    try:
        return batch.read_namespaced_job(name, ns)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def _read_pod(core: Any, ns: str, name: str) -> Any:
    try:
        return core.read_namespaced_pod(name, ns)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def _newest_pod(core: Any, ns: str, selector: str) -> Any:
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    if not pods:
        return None
    return max(
        pods,
        key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp),
    )


def _container_status(pod: Any) -> Any:
    if pod is None or pod.status is None:
        return None
    for cs in pod.status.container_statuses or []:
        if cs.name == CONTAINER:
            return cs
    return None


def _container_state(pod: Any) -> str | None:
    cs = _container_status(pod)
    if cs is None or cs.state is None:
        return None
    for name in ("terminated", "running", "waiting"):
        if getattr(cs.state, name, None) is not None:
            return name
    return None


def _waiting(pod: Any) -> tuple[str, str]:
    w = _container_status(pod).state.waiting
    return w.reason or "", w.message or ""


def _exit_code(pod: Any) -> int | None:
    cs = _container_status(pod)
    term = cs.state.terminated if cs is not None and cs.state is not None else None
    return int(term.exit_code) if term is not None else None


def _job_finished(job: Any) -> tuple[str, str, str] | None:
    """("Complete" | "Failed", reason, message) once the Job has ended."""
    if job is None or job.status is None:
        return None
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason or "", cond.message or ""
    return None
