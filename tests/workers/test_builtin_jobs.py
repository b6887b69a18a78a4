"""The built-in job functions, called directly (the stack tests run them through Celery)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workers.builtin import BuiltinContext, JobCancelled, countdown, fibonacci, primes


def _ctx(cancel: threading.Event | None = None) -> tuple[BuiltinContext, list[Any]]:
    seen: list[Any] = []
    ctx = BuiltinContext(
        cancel=cancel or threading.Event(),
        progress=lambda p, m: seen.append((p, m)),
        log=lambda _l: None,
    )
    return ctx, seen


def test_primes_up_to_1000() -> None:
    ctx, seen = _ctx()
    out = primes({"limit": 1000}, ctx)
    assert out["count"] == 168
    assert out["primes"][:5] == [2, 3, 5, 7, 11] and out["primes"][-1] == 997
    assert seen[-1][0] == 100
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


def test_primes_up_to_100000() -> None:
    ctx, _ = _ctx()
    assert primes({"limit": 100000}, ctx)["count"] == 9592


def test_fibonacci() -> None:
    ctx, seen = _ctx()
    out = fibonacci({"count": 10}, ctx)
    assert out["numbers"] == [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert seen[-1][0] == 100


def test_big_fibonacci_numbers_stay_exact_as_strings() -> None:
    ctx, _ = _ctx()
    out = fibonacci({"count": 100}, ctx)
    assert out["numbers"][99] == "354224848179261915075"


def test_cancelled_countdown_raises_at_once() -> None:
    cancel = threading.Event()
    cancel.set()
    ctx, _ = _ctx(cancel)
    with pytest.raises(JobCancelled):
        countdown({"seconds": 60}, ctx)
