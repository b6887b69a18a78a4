"""The shape of a step's container: what it may see, use and do, and how it is labelled.

Kept apart from the launcher so the security-relevant settings sit in one short place.
"""

from __future__ import annotations

import json
import os
from typing import Any

from orchestrator.job import Step
from workers.launchers.base import LaunchContext

LABEL_JOB = "launchbay.job_id"
LABEL_ATTEMPT = "launchbay.attempt"
LABEL_INSTANCE = "launchbay.instance"
LABEL_STEP = "launchbay.step"
LABEL_CLEANUP = "launchbay.cleanup"
WORKDIR = "/workspace"


def container_kwargs(
    ctx: LaunchContext, index: int, step: Step, cfg: Any, instance: str
) -> dict[str, Any]:
    """``containers.create`` arguments for one step: unprivileged, limited, labelled."""
    spec = ctx.spec
    ws = str(ctx.workspace)
    if cfg.host_workspaces_dir:
        rel = ctx.workspace.relative_to(ctx.settings.workspaces_dir)
        ws = os.path.join(cfg.host_workspaces_dir, str(rel))
    env = ctx.env(workspace=WORKDIR)
    context = json.loads(env["LAUNCHBAY_CONTEXT"])
    context["workspace"] = WORKDIR
    env["LAUNCHBAY_CONTEXT"] = json.dumps(context)
    env["LAUNCHBAY_STEP"] = step.name
    kw: dict[str, Any] = {
        "image": spec.image,
        "entrypoint": list(step.command),
        "command": [],
        "name": f"lb-{ctx.job_id}-a{ctx.attempt}-s{index}",
        "environment": env,
        "working_dir": WORKDIR,
        "volumes": {ws: {"bind": WORKDIR, "mode": "rw"}},
        "labels": {
            LABEL_JOB: ctx.job_id,
            LABEL_ATTEMPT: str(ctx.attempt),
            LABEL_INSTANCE: instance,
            LABEL_STEP: step.name,
            LABEL_CLEANUP: spec.cleanup,
        },
        "user": cfg.user or f"{os.getuid()}:{os.getgid()}",
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": cfg.pids_limit,
        "init": cfg.init,
        "read_only": cfg.read_only_rootfs,
        "network_mode": spec.network,
    }
    res = spec.resources
    if res.memory_mb:
        kw["mem_limit"] = f"{res.memory_mb}m"
        kw["memswap_limit"] = f"{res.memory_mb}m"  # no swap beyond the limit
    if res.cpu:
        kw["nano_cpus"] = int(res.cpu * 1e9)
    return kw
