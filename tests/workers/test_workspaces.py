"""An attempt's workspace exists only for launchers whose jobs use files
(``Launcher.uses_workspace``): a process job runs in its own, removed at the cleanup; a
built-in job (an in-process function) gets none, so nothing is made, removed or left
behind for it (it was 66 µs of a worker's CPU per job, and an empty directory per job
until retention). On the in-memory core, with the real built-in launcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from workers.channels.direct import DirectChannel
from workers.launchers import LaunchContext, LauncherSet, Outcome, Reporter
from workers.testing import Run, ScriptedLauncher

RUNNER = "runner-0123456789ab"


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    c = memory_core(settings)
    yield c
    c.close()


def _channel(core: MemoryCore) -> DirectChannel:
    return DirectChannel(core.dispatcher, RUNNER, ArtifactStore(core.settings.artifacts_dir))


class Looking(ScriptedLauncher):
    """Notes whether the attempt's workspace was there while the job ran."""

    seen: bool | None = None

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        self.seen = ctx.workspace.is_dir()
        (ctx.workspace / "out.txt").write_text("made by the job")
        return super().follow(ctx, handle, reporter)


def test_a_builtin_job_gets_no_workspace(core: MemoryCore) -> None:
    job = core.dispatcher.submit(
        {"executor": "builtin", "type": "fibonacci", "params": {"count": 10}}
    )
    launchers = LauncherSet(core.settings)
    assert _channel(core).run(job.id, 1, launchers) == "succeeded"
    assert core.store.get(job.id).result is not None
    assert list(core.settings.workspaces_dir.iterdir()) == []
    assert core.store.attempts(job.id)[0].cleanup == "removed"


def test_a_process_job_runs_in_its_workspace_and_the_cleanup_removes_it(
    core: MemoryCore,
) -> None:
    job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
    launcher = Looking(Run())
    assert launcher.uses_workspace
    assert _channel(core).run(job.id, 1, launcher.launchers()) == "succeeded"
    assert launcher.seen is True
    assert not (core.settings.workspaces_dir / job.id / "a1").exists()


def test_no_artifact_globs_is_no_look_at_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most jobs keep no artifacts: collecting them resolves no path (~90 µs per attempt)."""
    from workers.launchers.base import glob_workspace

    def no_disk(self: Path, strict: bool = False) -> Path:
        raise AssertionError("looked at the disk")

    (tmp_path / "out.txt").write_text("x")
    assert glob_workspace(tmp_path, ["*.txt"]) == [("out.txt", (tmp_path / "out.txt").resolve())]
    monkeypatch.setattr(Path, "resolve", no_disk)
    assert glob_workspace(tmp_path / "absent", []) == []
