"""Cron schedules on the in-package fakes (fast tier), with a manual clock: each tick fires
once however many beats look, missed ticks are caught up once or skipped, overlap policies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.job import JobStatus
from orchestrator.protocol import Verdict
from orchestrator.schedules import (
    SCHEDULE_LABEL,
    ScheduleIn,
    SchedulePatch,
    Schedules,
    next_times,
    tick_job_id,
)
from orchestrator.settings import Settings
from orchestrator.testing import ManualClock, MemoryCore, memory_core

START = datetime(2026, 12, 2, 11, 59, 30, tzinfo=UTC)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    c = memory_core(Settings(home=tmp_path / "home"), clock=ManualClock(START))
    yield c
    c.close()


def new(**extra: Any) -> ScheduleIn:
    body = {
        "name": "every minute",
        "cron": "*/1 * * * *",
        "spec": {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}},
        **extra,
    }
    return ScheduleIn.model_validate(body)


def runs(core: MemoryCore, schedule_id: str) -> list[Any]:
    return core.store.list(labels={SCHEDULE_LABEL: schedule_id}, limit=1000)[0]


def test_two_beats_fire_each_tick_once(core: MemoryCore) -> None:
    beat_a, beat_b = Schedules(core.dispatcher), Schedules(core.dispatcher)
    sched = beat_a.create(new())
    assert sched.next_fire_at == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    for _minute in range(3):
        core.clock.advance(60)
        a, b = beat_a.fire_due(), beat_b.fire_due()
        assert a["fired"] + b["fired"] == 1 and b["raced"] + a["raced"] == 0
        assert beat_a.fire_due()["fired"] == 0  # a second look in the same minute
        for job in runs(core, sched.id):  # (overlap "skip": the last run must have ended)
            if not job.ended:
                core.dispatcher.cancel(job.id)
    fired = runs(core, sched.id)
    assert len(fired) == 3
    assert {j.id for j in fired} == {
        tick_job_id(sched.id, datetime(2026, 12, 2, 12, m, tzinfo=UTC)) for m in range(3)
    }


def test_a_beat_that_loses_the_compare_and_set_does_not_fire(
    core: MemoryCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat A reads the due tick; before its compare-and-set, beat B fires it; A then
    finds next_fire_at moved and makes no job."""
    import orchestrator.schedules as mod

    beat_a, beat_b = Schedules(core.dispatcher), Schedules(core.dispatcher)
    sched = beat_a.create(new())
    core.clock.advance(60)
    real_next_times = mod.next_times
    b_counts: list[dict[str, int]] = []

    def b_runs_in_between(*args: Any, **kwargs: Any) -> list[datetime]:
        if not b_counts:  # A is between its read and its compare-and-set
            monkeypatch.setattr(mod, "next_times", real_next_times)
            b_counts.append(beat_b.fire_due())
        return real_next_times(*args, **kwargs)

    monkeypatch.setattr(mod, "next_times", b_runs_in_between)
    a_counts = beat_a.fire_due()
    assert b_counts[0]["fired"] == 1
    assert a_counts["fired"] == 0 and a_counts["raced"] == 1
    assert len(runs(core, sched.id)) == 1


def test_missed_ticks_are_caught_up_once(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new(catchup="once"))
    core.clock.advance(10 * 60)  # beat was down for ten ticks
    assert beat.fire_due()["fired"] == 1
    assert beat.fire_due()["fired"] == 0
    assert len(runs(core, sched.id)) == 1
    assert beat.get(sched.id).next_fire_at == datetime(2026, 12, 2, 12, 10, tzinfo=UTC)


def test_missed_ticks_can_be_skipped(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new(catchup="skip"))
    core.clock.advance(10 * 60)
    counts = beat.fire_due()
    assert counts["fired"] == 0 and counts["skipped"] == 1
    core.clock.advance(31)  # the 12:10 tick, on time
    assert beat.fire_due()["fired"] == 1
    assert len(runs(core, sched.id)) == 1


def test_overlap_skip_leaves_out_a_tick_while_the_last_run_is_active(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new(overlap="skip"))
    core.clock.advance(60)
    beat.fire_due()
    first = runs(core, sched.id)[0]
    core.lifecycle.claim(first.id, "r1")
    core.clock.advance(60)
    assert beat.fire_due()["skipped"] == 1
    core.lifecycle.start(first.id, "r1", 1)
    core.lifecycle.end(first.id, "r1", 1, Verdict(status=JobStatus.succeeded))
    core.clock.advance(60)
    assert beat.fire_due()["fired"] == 1
    assert len(runs(core, sched.id)) == 2


def test_overlap_cancel_previous_cancels_the_last_run(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new(overlap="cancel_previous"))
    core.clock.advance(60)
    beat.fire_due()
    first = runs(core, sched.id)[0]
    core.clock.advance(60)
    assert beat.fire_due()["fired"] == 1
    assert core.store.get(first.id).status == JobStatus.cancelled
    assert len(runs(core, sched.id)) == 2


def test_overlap_queue_runs_one_at_a_time(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new(overlap="queue"))
    core.clock.advance(60)
    beat.fire_due()
    core.clock.advance(60)
    beat.fire_due()
    first, second = sorted(runs(core, sched.id), key=lambda j: j.id)
    assert core.lifecycle.claim(first.id, "r1") is not None
    assert core.lifecycle.claim(second.id, "r2") is None
    why = core.dispatcher.flow.waiting(core.store.get(second.id))
    assert why is not None and why["reason"] == "concurrency_limit"


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new())
    beat.update(sched.id, SchedulePatch(paused=True))
    core.clock.advance(5 * 60)
    assert beat.fire_due()["fired"] == 0
    resumed = beat.update(sched.id, SchedulePatch(paused=False))
    assert resumed.next_fire_at == datetime(2026, 12, 2, 12, 5, tzinfo=UTC)
    assert len(resumed.next_fire_times) == 5


def test_a_lost_tick_job_is_made_by_the_next_look(core: MemoryCore) -> None:
    beat = Schedules(core.dispatcher)
    sched = beat.create(new())
    core.clock.advance(60)
    beat.fire_due()
    job_id = tick_job_id(sched.id, datetime(2026, 12, 2, 12, 0, tzinfo=UTC))
    from orchestrator.schema import jobs

    with core.store.engine.begin() as c:  # the winner died after its compare-and-set
        c.execute(jobs.delete().where(jobs.c.id == job_id))
    assert beat.fire_due()["recovered"] == 1
    assert core.store.get(job_id).status == JobStatus.queued


def test_times_are_read_in_the_schedule_zone() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    winter = next_times("0 9 * * *", "Europe/Berlin", datetime(2026, 12, 2, tzinfo=UTC))[0]
    summer = next_times("0 9 * * *", "Europe/Berlin", datetime(2026, 7, 2, tzinfo=UTC))[0]
    assert (winter.hour, summer.hour) == (8, 7)


@pytest.mark.parametrize(
    ("field", "body"),
    [("cron", {"cron": "61 * * * *"}), ("timezone", {"timezone": "Mars/Olympus"})],
)
def test_bad_cron_and_zone_are_refused(field: str, body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        new(**body)
    assert field in str(err.value)
