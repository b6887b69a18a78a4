"""A cron schedule on a real stack with two beats: ``*/1 * * * *`` fires once a minute for
three minutes (each tick sent by both beats, fired once: the compare-and-set on its next
fire time). Real minutes: about 3–4 minutes, so it is marked slow."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.services import Supervisor, beat_argv
from tests.conftest import stack_settings
from tests.support import Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.slow
_OWN_DB = 11  # a Redis database of its own: the session stack's worker must not see it


@pytest.fixture
def two_beat_stack(tmp_path: Path, valkey_url: str) -> Iterator[tuple[Stack, Supervisor]]:
    redis_url = valkey_url.rsplit("/", 1)[0] + f"/{_OWN_DB}"
    settings = stack_settings(tmp_path / "home", redis_url, schedule_tick_s=1)
    settings.ensure_dirs()
    stack = start_stack(settings)
    # A second beat: its own schedule file, the same store and broker.
    other = settings.model_copy(
        update={"home": tmp_path / "home2", "database_url": settings.effective_database_url}
    )
    other.ensure_dirs()
    beat2 = Supervisor(other, log_dir=other.home / "service-logs", say=lambda _l: None)
    beat2.add("beat", beat_argv(other))
    beat2.start()
    try:
        stack.wait_for_workers(1)
        yield stack, beat2
    finally:
        beat2.stop()
        stop_stack(stack)


@pytest.mark.timeout(420)  # three real minutes, and the stack's start on a loaded machine
def test_every_minute_fires_once_a_minute_with_two_beats(
    two_beat_stack: tuple[Stack, Supervisor],
) -> None:
    stack, _beat2 = two_beat_stack
    r = stack.http.post(
        "/api/v1/schedules",
        json={
            "name": "every minute",
            "cron": "*/1 * * * *",
            "timezone": "Europe/Berlin",
            "spec": {"executor": "builtin", "type": "primes", "params": {"limit": 100}},
        },
    )
    assert r.status_code == 201, r.text
    sched = r.json()
    first_tick = datetime.fromisoformat(sched["next_fire_at"])
    assert len(sched["next_fire_times"]) == 5

    def runs() -> list[dict[str, object]]:
        got = stack.http.get(f"/api/v1/schedules/{sched['id']}/runs")
        assert got.status_code == 200, got.text
        return got.json()  # type: ignore[no-any-return]

    three = wait_until(
        lambda: len(runs()) >= 3 and runs(), timeout=250, interval=1, what="three ticks"
    )
    assert isinstance(three, list)
    # Both beats were sending the fire task all along.
    for home in (stack.settings.home, stack.settings.home.parent / "home2"):
        text = "".join(p.read_text() for p in (home / "service-logs").glob("beat*.log"))
        assert text.count("fire-schedules") >= 60, home
    ticks = sorted(datetime.fromtimestamp(int(str(j["id"]).rsplit("-", 1)[1]), UTC) for j in three)[
        :3
    ]
    assert ticks[0] == first_tick.astimezone(UTC)
    assert [(t - ticks[0]).total_seconds() for t in ticks] == [0, 60, 120]
    # No tick fired twice: exactly one job per minute, and the next one is still ahead.
    latest = stack.http.get(f"/api/v1/schedules/{sched['id']}").json()
    assert datetime.fromisoformat(latest["next_fire_at"]) > ticks[-1]
    assert len(runs()) in (3, 4)  # a fourth minute may have begun meanwhile
    assert len({j["id"] for j in runs()}) == len(runs())
