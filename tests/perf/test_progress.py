"""Progress is coalesced: every report is an event at once, the store gets at most one
write per ``progress_store_s`` per attempt (counted from the claim, when this process made
it), and what was held back is stored with the next lease renewal or the end
(orchestrator/progress.py, on the in-memory core)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.job import EventType, Job, JobStatus
from orchestrator.lifecycle import Lifecycle, NotHeld
from orchestrator.listeners import Listener, Listeners
from orchestrator.progress import _PRUNE_AT, ProgressGate
from orchestrator.protocol import Verdict
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core

A = "runner-aaaaaaaaaaaa"


class Progress(Listener):
    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    def transition(self, job: Job, event: EventType) -> None:
        pass

    def progress(self, job_id: str, attempt: int, percent: float, message: str) -> None:
        self.seen.append((percent, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def seen() -> Progress:
    return Progress()


@pytest.fixture
def core(seen: Progress) -> Iterator[MemoryCore]:
    c = memory_core(Settings(progress_store_s=3600), listeners=[seen])
    yield c
    c.close()


def _running(core: MemoryCore) -> Job:
    job = core.dispatcher.submit({"executor": "process", "command": ["true"]})
    assert core.lifecycle.claim(job.id, A) is not None
    return core.lifecycle.start(job.id, A, 1)


def _stored(core: MemoryCore, job_id: str) -> tuple[float, str]:
    p = core.store.get(job_id).progress
    return p.percent, p.message


def _count_progress_writes(core: MemoryCore) -> list[int]:
    writes = [0]
    real = core.store.set_progress

    def counting(*args: Any, **kwargs: Any) -> bool:
        writes[0] += 1
        return real(*args, **kwargs)

    core.store.set_progress = counting  # type: ignore[method-assign]
    return writes


def test_every_report_is_an_event_and_the_claim_counts_as_the_last_write(
    core: MemoryCore, seen: Progress
) -> None:
    # Claimed here: the claim wrote the row, so reports within the interval are held
    # back (a short job's reports then cost the store nothing before its end).
    job = _running(core)
    writes = _count_progress_writes(core)
    for i in range(1, 51):
        core.lifecycle.progress(job.id, A, 1, i, f"step {i}")
    assert seen.seen == [(float(i), f"step {i}") for i in range(1, 51)]
    assert writes[0] == 0
    assert _stored(core, job.id) == (0, "")
    assert core.lifecycle.renew(job.id, A, 1).held
    assert _stored(core, job.id) == (50, "step 50")


def test_the_first_report_of_an_attempt_claimed_elsewhere_is_stored_at_once(
    core: MemoryCore,
) -> None:
    # (The API's lifecycle, taking an agent's reports: it did not see the claim.)
    job = _running(core)
    api = Lifecycle(core.settings, core.store, Listeners(), lambda *_a, **_k: None)
    writes = _count_progress_writes(core)
    api.progress(job.id, A, 1, 10, "ten")
    api.progress(job.id, A, 1, 20, "twenty")
    assert writes[0] == 1 and _stored(core, job.id) == (10, "ten")


def test_the_held_back_report_is_stored_with_the_renewal(core: MemoryCore) -> None:
    job = _running(core)
    core.lifecycle.progress(job.id, A, 1, 10, "ten")
    core.lifecycle.progress(job.id, A, 1, 20, "twenty")
    core.lifecycle.progress(job.id, A, 1, 30, "thirty")
    assert _stored(core, job.id) == (0, "")
    assert core.lifecycle.renew(job.id, A, 1).held
    assert _stored(core, job.id) == (30, "thirty")


def test_the_held_back_report_is_stored_with_the_end(core: MemoryCore) -> None:
    job = _running(core)
    core.lifecycle.progress(job.id, A, 1, 10, "ten")
    core.lifecycle.progress(job.id, A, 1, 70, "seventy")
    done = core.lifecycle.end(
        job.id, A, 1, Verdict(status=JobStatus.failed, exit_code=3, error="no")
    )
    assert done.status == JobStatus.failed
    assert _stored(core, job.id) == (70, "seventy")


def test_gate_admits_again_once_the_interval_passed() -> None:
    clock = Clock()
    gate = ProgressGate(2.0, clock=clock)
    key = ("j", 1)
    assert gate.admit(key, 1, "a")
    assert not gate.admit(key, 2, "b")
    clock.now += 1.9
    assert not gate.admit(key, 3, "c")
    clock.now += 0.2
    assert gate.admit(key, 4, "d")
    assert gate.take(key) is None  # (written: nothing pending)
    assert gate.settle(key) == {}


def test_gate_keeps_the_latest_pending_report_per_attempt() -> None:
    gate = ProgressGate(60.0, clock=Clock())
    assert gate.admit(("j", 1), 1, "a") and gate.admit(("j", 2), 1, "a")
    assert not gate.admit(("j", 1), 5, "five")
    assert not gate.admit(("j", 1), 6, "six")
    assert gate.settle(("j", 2)) == {}
    assert gate.settle(("j", 1)) == {"progress_percent": 6, "progress_message": "six"}
    assert gate.settle(("j", 1)) == {}  # forgotten


def test_a_write_of_the_row_holds_the_next_reports_back_for_the_interval() -> None:
    clock = Clock()
    gate = ProgressGate(2.0, clock=clock)
    gate.written(("j", 1))  # (its claim)
    assert not gate.admit(("j", 1), 1, "a")
    clock.now += 2.1
    assert gate.admit(("j", 1), 2, "b")
    assert gate.take(("j", 1)) is None  # (b was written, and a with it)


def test_pruning_keeps_a_held_back_report_until_its_attempt_misses_a_renewal() -> None:
    # (at 10,000 remembered attempts the gate forgets old ones: a report held back for an
    # attempt still running here must survive that, to be stored by its renewal or end)
    clock = Clock()
    gate = ProgressGate(2.0, clock=clock, renew_s=10.0)
    gate.written(("held", 1))
    assert not gate.admit(("held", 1), 50, "half")  # held back
    gate.written(("quiet", 1))
    for i in range(_PRUNE_AT - 2):
        gate.written((f"other-{i}", 1))
    clock.now += 5.0  # past the interval, within a renewal
    gate.written(("new", 1))  # (the 10,000th: prunes)
    assert gate.take(("held", 1)) == (50, "half")
    assert not gate.admit(("held", 1), 60, "sixty")  # (taken just now: held back again)
    clock.now += 21.0  # two renewals missed: not this process's any more
    for i in range(_PRUNE_AT):
        gate.written((f"more-{i}", 1))
    assert gate.take(("held", 1)) is None
    assert gate.admit(("quiet", 1), 1, "")  # (forgotten: written at once, as a first)


def test_zero_interval_writes_every_report() -> None:
    gate = ProgressGate(0.0, clock=Clock())
    assert all(gate.admit(("j", 1), i, "") for i in range(10))


def test_reports_of_an_attempt_claimed_here_cost_the_store_nothing(core: MemoryCore) -> None:
    """The claim vouches for its runner: the reports it holds back read and write nothing;
    another runner's report still costs one read, and is refused."""
    job = _running(core)
    core.lifecycle.progress(job.id, A, 1, 0, "first")  # (held back: the claim just wrote)
    calls: list[str] = []
    for name in ("get", "find", "set_progress"):
        real = getattr(core.store, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(core.store, name, counting)
    for i in range(1, 5):
        core.lifecycle.progress(job.id, A, 1, i, "")
    assert calls == []
    with pytest.raises(NotHeld):
        core.lifecycle.progress(job.id, "runner-bbbbbbbbbbbb", 1, 9, "not mine")
    assert calls and "set_progress" not in calls
    assert core.lifecycle.renew(job.id, A, 1).held
    assert _stored(core, job.id) == (4, "")  # (not the refused report)


def test_a_report_with_the_last_output_is_stored_by_the_end_in_the_same_write(
    core: MemoryCore, seen: Progress
) -> None:
    # An attempt's last flush comes right before its end: its progress report is an event
    # at once, and the end stores it (one store write where there were two), even when it
    # is the attempt's first report.
    job = _running(core)
    writes = _count_progress_writes(core)
    core.lifecycle.progress(job.id, A, 1, 100, "all done", last=True)
    assert seen.seen == [(100, "all done")] and writes == [0]
    assert _stored(core, job.id) == (0, "")
    ended = core.lifecycle.end(job.id, A, 1, Verdict(status=JobStatus.succeeded, exit_code=0))
    assert (ended.progress.percent, ended.progress.message) == (100, "all done")
    assert _stored(core, job.id) == (100, "all done") and writes == [0]


def test_a_last_report_is_refused_like_any_other_from_a_runner_that_does_not_hold_it(
    core: MemoryCore,
) -> None:
    job = _running(core)
    with pytest.raises(NotHeld):
        core.lifecycle.progress(job.id, "runner-bbbbbbbbbbbb", 1, 100, "", last=True)
