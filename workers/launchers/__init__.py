"""Launchers keyed by executor name. ``docker`` and ``kubernetes`` import lazily."""

from __future__ import annotations

import importlib

from orchestrator.settings import Settings
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter

_REGISTRY: dict[str, str] = {
    "builtin": "workers.launchers.builtin:BuiltinLauncher",
    "process": "workers.launchers.process:ProcessLauncher",
    "docker": "workers.launchers.docker:DockerLauncher",
    "kubernetes": "workers.launchers.kubernetes:KubernetesLauncher",
}


def launcher_class(executor: str) -> type[Launcher]:
    try:
        module, cls = _REGISTRY[executor].split(":")
    except KeyError:
        raise KeyError(f"no launcher for executor {executor!r}") from None
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


class LauncherSet:
    """One instance per executor, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Launcher] = {}

    def get(self, executor: str) -> Launcher:
        if executor not in self._made:
            self._made[executor] = launcher_class(executor)(self.settings)
        return self._made[executor]


__all__ = ["LaunchContext", "Launcher", "LauncherSet", "Outcome", "Reporter", "launcher_class"]
