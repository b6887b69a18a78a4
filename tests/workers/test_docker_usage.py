"""A docker job's resource usage (workers/launchers/_docker_usage.py) against an engine
double whose stats stream behaves as Docker's does: samples while the container runs,
then, after it stopped, one empty sample at the engine's next tick. The real engine is
in tests/sessions/test_run_records_stack.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from workers.launchers._docker_usage import Usage


def _sample(cpu_ns: int, mem: int, limit: int = 1 << 30) -> dict[str, Any]:
    return {
        "pids_stats": {"current": 1},
        "memory_stats": {"usage": mem, "limit": limit},
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
    }


class _Engine:
    """``stats`` streams each container's samples, then holds its stream open until
    ``tick`` is set (the engine's next tick after the container stopped) and ends it with
    the empty sample. ``drained[cid]`` is set once every real sample has been taken."""

    def __init__(self, samples: dict[str, list[dict[str, Any]]]) -> None:
        self.samples = samples
        self.tick = threading.Event()
        self.drained = {cid: threading.Event() for cid in samples}

    def stats(self, cid: str, *, stream: bool, decode: bool) -> Iterator[dict[str, Any]]:
        assert stream and decode
        yield from self.samples[cid]
        self.drained[cid].set()  # (the reader asked for more: it has taken them all)
        self.tick.wait(30)
        yield {"pids_stats": {}, "memory_stats": {}}


def test_finish_takes_what_was_sampled_without_waiting_for_the_streams_end() -> None:
    engine = _Engine({"c1": [_sample(10_000_000, 5_000_000), _sample(30_000_000, 9_000_000)]})
    usage = Usage()
    try:
        usage.follow(engine, "c1")
        assert engine.drained["c1"].wait(10)
        got = usage.finish()
        # Answered while the stream still waits for the engine's tick (the old join held
        # the job's end until then, about 0.7 s for every docker job).
        assert not engine.tick.is_set() and usage._threads[0].is_alive()
        assert got == {
            "memory_peak_bytes": 9_000_000,
            "memory_limit_bytes": 1 << 30,
            "cpu_s": 0.03,
            "stats_samples": 2,
            "source": "docker engine stats",
        }
    finally:
        engine.tick.set()
        for t in usage._threads:
            t.join(10)


def test_steps_add_up_and_the_empty_last_sample_is_not_a_sample() -> None:
    engine = _Engine(
        {
            "step1": [_sample(1_000_000_000, 50_000_000)],
            "step2": [_sample(200_000_000, 80_000_000), _sample(500_000_000, 70_000_000)],
        }
    )
    engine.tick.set()  # (both streams end by themselves, each with its empty sample)
    usage = Usage()
    usage.follow(engine, "step1")
    usage.follow(engine, "step2")
    for t in usage._threads:
        t.join(10)
    got = usage.finish()
    assert got["cpu_s"] == 1.5  # each container's last CPU figure, summed
    assert got["memory_peak_bytes"] == 80_000_000
    assert got["stats_samples"] == 3


class _Gone:
    """An engine whose stream breaks after one sample (the container was removed)."""

    def stats(self, cid: str, *, stream: bool, decode: bool) -> Iterator[dict[str, Any]]:
        yield _sample(40_000_000, 3_000_000)
        raise ConnectionError("container removed")


def test_a_stream_that_breaks_keeps_what_it_sampled() -> None:
    usage = Usage()
    usage.follow(_Gone(), "c1")
    usage._threads[0].join(10)
    got = usage.finish()
    assert (got["cpu_s"], got["memory_peak_bytes"], got["stats_samples"]) == (0.04, 3_000_000, 1)
