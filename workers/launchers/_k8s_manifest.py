"""The batch/v1 Job a kubernetes job runs as: built as a dict, merged, then checked.

The generated Job wins over the user's template (the template fills in what Launchbay does
not set: node selectors, tolerations, service accounts, extra volumes...). Whatever the
merge gives must still hold the invariants the launcher relies on — ``restartPolicy:
Never``, ``backoffLimit: 0`` (one attempt is one pod; retries are Launchbay's), a
``ttlSecondsAfterFinished``, the deadline — and must not ask for host access.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from workers.launchers.base import LaunchContext

CONTAINER = "job"
WORKDIR = "/workspace"
LABEL_JOB = "launchbay.job_id"
LABEL_ATTEMPT = "launchbay.attempt"
LABEL_INSTANCE = "launchbay.instance"
LABEL_CLEANUP = "launchbay.cleanup"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_HOST_FIELDS = ("hostNetwork", "hostPID", "hostIPC")


class ManifestError(ValueError):
    """A Job manifest that breaks an invariant; launching it would be wrong every time."""


def job_name(job_id: str, attempt: int) -> str:
    """A DNS-1123 name, unique per attempt (≤ 63 characters)."""
    return f"lb-{job_id.lower()[:40]}-a{attempt}"


def build_job_manifest(
    ctx: LaunchContext,
    *,
    namespace: str,
    instance: str,
    ttl_s: int,
    deadline_margin_s: int = 10,
    service_account: str | None = None,
    image_pull_policy: str | None = None,
    workspace_claim: str | None = None,
    workspace_sub_path: str | None = None,
) -> dict[str, Any]:
    """The Job for one attempt, with the user's template merged under it and checked."""
    spec = ctx.spec
    labels = {
        LABEL_JOB: ctx.job_id,
        LABEL_ATTEMPT: str(ctx.attempt),
        LABEL_INSTANCE: instance,
        LABEL_CLEANUP: spec.cleanup,
    }
    user_labels = {
        k: v
        for k, v in spec.labels.items()
        if _LABEL_NAME.match(k)
        and len(v) <= 63
        and _LABEL_VALUE.match(v)
        and not k.startswith("launchbay.")
    }
    env = ctx.env(workspace=WORKDIR)
    context = json.loads(env["LAUNCHBAY_CONTEXT"])
    context["workspace"] = WORKDIR
    env["LAUNCHBAY_CONTEXT"] = json.dumps(context)

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": list(spec.command),
        "workingDir": WORKDIR,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "volumeMounts": [{"name": "workspace", "mountPath": WORKDIR}],
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    resources = _resources(spec.resources)
    if resources:
        container["resources"] = resources
    volume: dict[str, Any] = {"name": "workspace", "emptyDir": {}}
    if workspace_claim:
        volume = {"name": "workspace", "persistentVolumeClaim": {"claimName": workspace_claim}}
        if workspace_sub_path:
            container["volumeMounts"][0]["subPath"] = workspace_sub_path

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": int(math.ceil(spec.grace_s)),
        "containers": [container],
        "volumes": [volume],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": int(ttl_s),
        "template": {"metadata": {"labels": {**user_labels, **labels}}, "spec": pod_spec},
    }
    if spec.timeout_s:
        # A backstop for a lost worker; the runner's own timer ends the job first.
        job_spec["activeDeadlineSeconds"] = int(math.ceil(spec.timeout_s)) + deadline_margin_s
    generated = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(ctx.job_id, ctx.attempt),
            "namespace": namespace,
            "labels": {**user_labels, **labels},
            "annotations": {"launchbay.io/runner-id": ctx.runner_id},
        },
        "spec": job_spec,
    }
    manifest = merge_template(spec.template or {}, generated)
    validate_job_manifest(manifest, timeout_s=spec.timeout_s)
    return manifest


def merge_template(template: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``generated`` over ``template``; containers and volumes merge by name."""
    return _merge(copy.deepcopy(template), generated)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and _named(base) and _named(over):
        by_name = {item["name"]: item for item in base}
        merged = [_merge(by_name.pop(item["name"], {}), item) for item in over]
        return merged + [copy.deepcopy(item) for item in base if item["name"] in by_name]
    return copy.deepcopy(over)


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def _resources(res: Any) -> dict[str, Any]:
    quantities: dict[str, str] = {}
    if res.cpu:
        quantities["cpu"] = f"{int(math.ceil(res.cpu * 1000))}m"
    if res.memory_mb:
        quantities["memory"] = f"{res.memory_mb}Mi"
    # requests == limits: the pod gets what it asks for and no more (Guaranteed QoS).
    return {"requests": dict(quantities), "limits": dict(quantities)} if quantities else {}


def validate_job_manifest(manifest: dict[str, Any], *, timeout_s: float | None = None) -> None:
    """Raise ManifestError unless the Job holds every invariant the launcher needs."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ManifestError(f"invalid Job manifest: {what}")

    need(
        manifest.get("apiVersion") == "batch/v1" and manifest.get("kind") == "Job",
        "must be a batch/v1 Job",
    )
    meta = manifest.get("metadata") or {}
    need(
        bool(meta.get("name")) and bool(meta.get("namespace")), "metadata needs name and namespace"
    )
    spec = manifest.get("spec") or {}
    need(spec.get("backoffLimit") == 0, "spec.backoffLimit must be 0")
    need(
        isinstance(spec.get("ttlSecondsAfterFinished"), int)
        and spec["ttlSecondsAfterFinished"] >= 0,
        "spec.ttlSecondsAfterFinished must be set",
    )
    if timeout_s:
        need(
            isinstance(spec.get("activeDeadlineSeconds"), int)
            and spec["activeDeadlineSeconds"] >= timeout_s,
            "spec.activeDeadlineSeconds must cover timeout_s",
        )
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    need(
        LABEL_JOB in labels and LABEL_ATTEMPT in labels,
        "pod template must carry the launchbay.job_id and launchbay.attempt labels",
    )
    pod = template.get("spec") or {}
    need(pod.get("restartPolicy") == "Never", "spec.template.spec.restartPolicy must be Never")
    for f in _HOST_FIELDS:
        need(not pod.get(f), f"spec.template.spec.{f} is not allowed")
    for vol in pod.get("volumes") or []:
        need("hostPath" not in vol, f"hostPath volume {vol.get('name')!r} is not allowed")
    containers = list(pod.get("containers") or []) + list(pod.get("initContainers") or [])
    need(
        any(c.get("name") == CONTAINER for c in pod.get("containers") or []),
        f"a container named {CONTAINER!r} must run the job",
    )
    for c in containers:
        sc = c.get("securityContext") or {}
        need(not sc.get("privileged"), f"container {c.get('name')!r} must not be privileged")
        need(
            not (sc.get("capabilities") or {}).get("add"),
            f"container {c.get('name')!r} must not add capabilities",
        )
