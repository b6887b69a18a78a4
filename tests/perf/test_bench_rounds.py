"""bench/jobs.py's throughput rounds: each figure is the median of its rounds (CPU by
process too), and the note names every round's ratio to the raw Celery of its round; one
job's round trip is split by the job's own time stamps."""

from __future__ import annotations

import pytest

from bench.jobs import _median_of, _rounds, _segments_of


def test_each_figure_is_the_median_of_its_rounds() -> None:
    runs = [
        {"rate": 300.0, "p50": 0.005, "cpu": {"api": 1.0, "pool": 2.0}},
        {"rate": 250.0, "p50": 0.009, "cpu": {"api": 1.4, "pool": 1.8}},
        {"rate": 320.0, "p50": 0.006, "cpu": {"api": 1.1, "pool": 2.2}},
    ]
    assert _median_of(runs) == {"rate": 300.0, "p50": 0.006, "cpu": {"api": 1.1, "pool": 2.0}}


def test_the_note_names_each_rounds_ratio_to_its_own_baseline() -> None:
    raws = [{"rate": 700.0}, {"rate": 600.0}]
    lbs = [{"rate": 280.0, "batch_rate": 350.0}, {"rate": 270.0, "batch_rate": 300.0}]
    assert _rounds(raws, lbs, "rate") == "; median of 2 rounds (0.40, 0.45)"
    assert _rounds(raws, lbs, "batch_rate") == "; median of 2 rounds (0.50, 0.50)"
    assert _rounds(raws[:1], lbs[:1], "rate") == ""


def test_one_jobs_round_trip_is_split_by_its_time_stamps() -> None:
    job = {
        "created_at": "2026-12-03T22:00:00.002000Z",
        "claimed_at": "2026-12-03T22:00:00.005000+00:00",
        "finished_at": "2026-12-03T22:00:00.006500Z",
    }
    sent = 1796335200.0  # 2026-12-03T22:00:00Z
    got = _segments_of(job, sent, sent + 0.0095)
    assert list(got) == ["request → created", "→ claimed", "→ ended", "→ client has it"]
    assert [round(v * 1000, 3) for v in got.values()] == [2.0, 3.0, 1.5, 3.0]
    assert sum(got.values()) == pytest.approx(0.0095, abs=1e-6)
