"""Launchers keyed by executor name.

The launcher of executor ``x`` lives in ``workers/launchers/x.py`` and registers itself by
setting ``name = "x"``. Modules are imported on first use, so a host without the ``docker``
or ``kubernetes`` packages never imports their launchers.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from orchestrator.job import EXECUTORS
from orchestrator.settings import Settings
from workers.launchers.base import LaunchContext, Launcher, Outcome, Reporter, registered


def launcher_class(executor: str) -> type[Launcher]:
    """The launcher of ``executor``, importing its module if need be."""
    if executor not in EXECUTORS:
        raise KeyError(f"no launcher for executor {executor!r}; one of {list(EXECUTORS)}")
    importlib.import_module(f"{__name__}.{executor}")
    try:
        return registered()[executor]
    except KeyError:
        raise KeyError(f"{__name__}.{executor} defines no launcher named {executor!r}") from None


def launcher_classes() -> dict[str, type[Launcher]]:
    """Every launcher of this package by executor name (imports all their modules)."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return registered()


class LauncherSet:
    """One instance per executor, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Launcher] = {}
        self._making = threading.Lock()

    def get(self, executor: str) -> Launcher:
        """The one launcher of ``executor`` (an agent's attempts ask for theirs at once, from
        threads of their own: each must get the same instance, which tracks all their runs)."""
        made = self._made.get(executor)
        if made is None:
            with self._making:
                made = self._made.get(executor)
                if made is None:
                    made = self._made[executor] = launcher_class(executor)(self.settings)
        return made


__all__ = [
    "LaunchContext",
    "Launcher",
    "LauncherSet",
    "Outcome",
    "Reporter",
    "launcher_class",
    "launcher_classes",
]
