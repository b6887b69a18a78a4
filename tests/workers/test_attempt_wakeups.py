"""What a running attempt costs while it runs (workers/attempt.py): its output goes out
when there is some (the process's sender, not a fixed tick), and its watcher wakes only
for what is due (cancel poll, lease, run-time limit). On the in-memory core."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.events import cancel_key
from orchestrator.job import Job, JobStatus
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from tests.support import wait_until
from workers.attempt import _sender, _watchers
from workers.channels import LogBatch, Lost
from workers.channels.direct import DirectChannel
from workers.launchers import LaunchContext, Outcome, Reporter
from workers.testing import Run, ScriptedLauncher

RUNNER = "runner-0123456789ab"
WAIT_S = 5.0
NEVER_S = 3600.0  # a period no test lasts: whatever happens, happens without it


class Counting(DirectChannel):
    """The direct channel, counting the watcher's polls."""

    polls = 0

    def cancel_requested(self, job: Job) -> bool:
        self.polls += 1
        return super().cancel_requested(job)

    def renew(self, job: Job) -> Any:
        self.polls += 1
        return super().renew(job)


class Gated(ScriptedLauncher):
    """Prints a line, waits for ``gate``, reports progress and a line, waits for ``end``."""

    def __init__(self) -> None:
        super().__init__(Run())
        self.gate = threading.Event()
        self.end = threading.Event()

    def follow(self, ctx: LaunchContext, handle: str, reporter: Reporter) -> Outcome:
        reporter.log("stdout", "first")
        assert self.gate.wait(WAIT_S)
        reporter.progress(50, "half")
        reporter.log("stdout", "second")
        assert self.end.wait(WAIT_S)
        return Outcome(exit_code=0)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    settings = Settings(home=tmp_path / "home", lease_s=NEVER_S)
    settings.ensure_dirs()
    c = memory_core(settings)
    yield c
    c.close()


def _channel(core: MemoryCore, cls: type[DirectChannel] = Counting, **periods: float) -> Any:
    channel = cls(core.dispatcher, RUNNER, ArtifactStore(core.settings.artifacts_dir))
    channel.flush_s = periods.get("flush_s", NEVER_S)
    channel.cancel_poll_s = periods.get("cancel_poll_s", NEVER_S)
    return channel


def _published(core: MemoryCore, job_id: str) -> list[str]:
    out = []
    for m in core.events.published:
        if m["job_id"] != job_id:
            continue
        if m["type"] == "log":
            out += [f"log {r['line']}" for r in m["data"]["lines"]]
        elif m["type"] == "progress":
            out.append(f"progress {m['data']['percent']:g}")
        else:
            out.append(m["type"])
    return out


def test_output_goes_out_when_there_is_some_not_on_a_tick(core: MemoryCore) -> None:
    """With every period an hour long, the first line still reaches readers while the job
    runs, and the watcher never polled: nothing was due."""
    job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
    channel = _channel(core)
    launcher = Gated()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(channel.run, job.id, 1, launcher.launchers())
        assert core.events.wait_for(lambda: "log first" in _published(core, job.id), WAIT_S)
        assert not running.done()
        launcher.gate.set()
        launcher.end.set()
        assert running.result(timeout=WAIT_S) == "succeeded"
    assert channel.polls == 0  # the watcher never polled (nor the launch: it follows the claim)
    assert _published(core, job.id) == [
        "created",
        "claimed",
        "started",
        "log first",
        "progress 50",
        "log second",
        "succeeded",
    ]


def test_a_report_after_a_quiet_spell_goes_out_at_once(core: MemoryCore) -> None:
    job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
    channel = _channel(core, flush_s=0)
    launcher = Gated()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(channel.run, job.id, 1, launcher.launchers())
        assert core.events.wait_for(lambda: "log first" in _published(core, job.id), WAIT_S)
        launcher.gate.set()
        assert core.events.wait_for(lambda: "log second" in _published(core, job.id), WAIT_S)
        assert not running.done()  # (sent while it runs: the job has not ended)
        # (held back from the store: the claim wrote the row a moment ago; the end stores it)
        assert core.store.get(job.id).progress.percent == 0
        launcher.end.set()
        assert running.result(timeout=WAIT_S) == "succeeded"
    assert channel.polls == 0  # (the first launch follows the claim without a look)
    assert core.store.get(job.id).progress.message == "half"  # (stored by the end, at 100%)


class LostOnLogs(Counting):
    def logs(self, job: Job, lines: LogBatch) -> None:
        raise Lost("the attempt went to someone else")


def test_a_lost_attempt_found_by_the_sender_stops_the_real_run(core: MemoryCore) -> None:
    job = core.dispatcher.submit({"executor": "process", "command": ["x"], "grace_s": 2})
    channel = _channel(core, LostOnLogs)
    launcher = ScriptedLauncher(Run(until_stopped=True, lines=["working"]))
    assert channel.run(job.id, 1, launcher.launchers()) == "lost"
    assert launcher.stops == [(launcher.handles[0], 2.0)]
    assert channel.polls == 0  # (found by sending, not polling)


def test_a_cancel_is_found_by_the_poll_and_stops_the_run(core: MemoryCore) -> None:
    job = core.dispatcher.submit({"executor": "process", "command": ["x"], "grace_s": 4})
    channel = _channel(core, cancel_poll_s=0.005, flush_s=0.005)
    launcher = ScriptedLauncher(Run(until_stopped=True))
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(channel.run, job.id, 1, launcher.launchers())
        assert launcher.wait_following(timeout=WAIT_S)
        core.dispatcher.cancel(job.id)
        core.keys.set(cancel_key(job.id), "1")  # (the flag Events.flag_cancel sets in Redis)
        assert running.result(timeout=WAIT_S) == "cancelled"
    assert launcher.stops == [(launcher.handles[0], 4.0)]
    assert core.store.get(job.id).status == JobStatus.cancelled


@pytest.mark.parametrize("mine", [_sender, _watchers], ids=["sender", "watcher starter"])
def test_each_process_has_its_own(mine: Any) -> None:
    import os

    one = mine()
    assert mine() is one
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one of its own (the parent's thread did not survive)
        os.write(write, b"1" if mine() is not one else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_an_attempt_that_ends_before_its_first_duty_never_has_a_watcher_thread(
    core: MemoryCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    channel = _channel(core)  # (first cancel poll and renewal an hour away)
    for _ in range(3):
        job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
        assert channel.run(job.id, 1, ScriptedLauncher(Run()).launchers()) == "succeeded"
    assert not [n for n in started if n.startswith("watch-")], started
    assert channel.polls == 0  # (none by a watcher, none before a first launch)


def test_a_watcher_started_late_still_renews_from_the_attempts_start(core: MemoryCore) -> None:
    # Its first duty (here the lease renewal, a few ms in) starts the thread; from then on
    # it watches as before, until the attempt ends.
    job = core.dispatcher.submit({"executor": "process", "command": ["x"]})
    channel = _channel(core)
    channel.renew_s = 0.005
    launcher = Gated()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(channel.run, job.id, 1, launcher.launchers())
        try:
            wait_until(lambda: channel.polls >= 2, timeout=WAIT_S, what="two renewals")
        finally:
            launcher.gate.set()
            launcher.end.set()
        assert running.result(timeout=WAIT_S) == "succeeded"
