"""The shape of a step's container: what it may see, use and do, and how it is labelled.

Kept apart from the launcher so the security-relevant settings sit in one short place.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from orchestrator.hardening import hand_over
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
        "user": container_user(cfg),
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": cfg.pids_limit,
        "init": cfg.init,
        "read_only": cfg.read_only_rootfs,
        "network_mode": spec.network,
    }
    res = spec.resources
    memory_mb = res.memory_mb or cfg.default_memory_mb  # (the operator's default: never none)
    kw["mem_limit"] = f"{memory_mb}m"
    kw["memswap_limit"] = f"{memory_mb}m"  # no swap beyond the limit
    kw["nano_cpus"] = int((res.cpu or cfg.default_cpus) * 1e9)
    return kw


ROOT_USER = "65534:65534"  # nobody: what a root worker's jobs run as by default


def container_user(cfg: Any) -> str:
    """``uid:gid`` a job's containers run as: the configured one, else the worker's own ids,
    else (a root worker) nobody. Root only when the operator allows it."""
    user = cfg.user or (ROOT_USER if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}")
    ids = user.split(":")
    if not cfg.allow_root and any(i in ("0", "root") for i in ids):
        raise ValueError(
            f"docker jobs may not run as root (LAUNCHBAY_DOCKER_USER={user!r}); "
            f"set LAUNCHBAY_DOCKER_ALLOW_ROOT=1 to allow it"
        )
    return user


def hand_over_workspace(workspace: Path, user: str) -> None:
    """A root worker gives the workspace to the container's user, so the job can write it."""
    if os.getuid() != 0:
        return
    uid, _, gid = user.partition(":")
    if uid.isdigit():
        hand_over(int(uid), int(gid) if gid.isdigit() else int(uid), workspace)


def scrub_workspace(workspace: Path) -> int:
    """Clear the setuid and setgid bits of everything the job left in its workspace (the
    folder is on the host: such a file must give nobody a privilege there); returns how
    many were cleared. Symlinks are not followed."""
    cleared = 0
    for root, dirs, files in os.walk(workspace):
        for name in dirs + files:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or not st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    continue
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                cleared += 1
    return cleared
