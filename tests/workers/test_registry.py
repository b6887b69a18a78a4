"""The launcher registry and the JobSpec union name the same executors, one launcher each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from orchestrator.job import EXECUTORS, SPEC_MODELS, JobSpec
from orchestrator.settings import Settings
from workers.launchers import Launcher, LauncherSet, launcher_class, launcher_classes
from workers.launchers.base import registered


def test_every_executor_has_a_launcher_and_every_launcher_an_executor() -> None:
    assert sorted(launcher_classes()) == sorted(EXECUTORS)
    for executor in EXECUTORS:
        cls = launcher_class(executor)
        assert cls.name == executor
        assert cls.__module__ == f"workers.launchers.{executor}"


def test_executors_are_read_off_the_union() -> None:
    members = get_args(get_args(JobSpec)[0])
    assert tuple(m.model_fields["executor"].default for m in members) == EXECUTORS
    assert all(SPEC_MODELS[e].model_fields["executor"].default == e for e in EXECUTORS)


def test_an_unknown_executor_is_refused_without_importing_anything() -> None:
    with pytest.raises(KeyError, match="teleport"):
        launcher_class("teleport")
    # A module of the package that is not an executor is not a way in either.
    with pytest.raises(KeyError, match="base"):
        launcher_class("base")


def test_a_second_launcher_for_one_executor_is_refused() -> None:
    with pytest.raises(TypeError, match="two launchers"):
        type("AnotherProcess", (Launcher,), {"name": "process"})
    assert launcher_class("process").__qualname__ == "ProcessLauncher"


def test_a_test_double_can_stay_out_of_the_registry() -> None:
    class Double(Launcher, register=False):
        name = "process"

    assert registered()["process"] is not Double


def test_launcher_set_makes_one_launcher_per_executor(tmp_path: Path) -> None:
    launchers = LauncherSet(Settings(home=tmp_path))
    assert launchers.get("builtin") is launchers.get("builtin")
    assert launchers.get("builtin").name == "builtin"


def test_launcher_modules_are_imported_on_first_use() -> None:
    script = (
        "import sys\n"
        "from workers.launchers import launcher_class\n"
        "assert launcher_class('process').name == 'process'\n"
        "loaded = {m for m in sys.modules if m.startswith('workers.launchers.')}\n"
        "assert not {'workers.launchers.docker', 'workers.launchers.kubernetes'} & loaded, loaded\n"
        "assert 'docker' not in sys.modules and 'kubernetes' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert out.returncode == 0, out.stderr
