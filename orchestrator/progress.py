"""How often one process writes an attempt's progress to the store.

Every report still goes out at once as an event (live clients see each one); the store,
which every reader of ``GET /jobs/{id}`` shares, gets at most one write per ``every_s``
per attempt, counted from the attempt's first report: the reports of its first
``every_s`` are held back, and the latest one held back (the latest wins) is written by
the first report after the interval, else with the attempt's next lease renewal or its
end. So the stored progress lags by at most ``max(every_s, lease_s / 3)``, the end always
stores the last one, and a short job (a built-in that reports as it starts, then ends
within ``every_s``) writes its progress once, with its end, instead of once as it starts
and again as it ends: a burst of jobs starting together (32 slots at once) does not add a
store write per job to the burst. Many jobs reporting every second cost the store a
bounded rate of writes per job instead of one write per report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Key = tuple[str, int]  # (job id, attempt)
_PRUNE_AT = 10_000  # attempts remembered before the stale ones are forgotten


class ProgressGate:
    """Thread-safe; one per process (the lifecycle holds it)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._written_at: dict[Key, float] = {}
        self._pending: dict[Key, tuple[float, str]] = {}
        # Who this process knows holds each attempt (it claimed it here, or the store said
        # so once): a report held back is checked against this, not the store.
        self._holder: dict[Key, str] = {}

    def vouch(self, key: Key, runner_id: str) -> None:
        """``runner_id`` holds the attempt ``key`` (its claim, or the store, said so)."""
        with self._lock:
            if len(self._holder) >= _PRUNE_AT:
                del self._holder[next(iter(self._holder))]  # (the oldest)
            self._holder[key] = runner_id

    def vouched(self, key: Key, runner_id: str) -> bool:
        return self._holder.get(key) == runner_id

    def admit(self, key: Key, percent: float, message: str) -> bool:
        """True: write this report now. False: it is kept as the pending one."""
        now = self._clock()
        with self._lock:
            last = self._written_at.get(key)
            if last is None:  # the attempt's first report opens its first interval
                if len(self._written_at) >= _PRUNE_AT:
                    self._prune(now)
                last = self._written_at[key] = now
            if now - last < self.every_s:
                self._pending[key] = (percent, message)
                return False
            self._written_at[key] = now
            self._pending.pop(key, None)
            return True

    def take(self, key: Key) -> tuple[float, str] | None:
        """The pending report, if any, now counted as written."""
        with self._lock:
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._written_at[key] = self._clock()
            return pending

    def settle(self, key: Key) -> dict[str, Any]:
        """The store fields of the pending report (for the attempt's end); forgets it."""
        with self._lock:
            self._written_at.pop(key, None)
            self._holder.pop(key, None)
            pending = self._pending.pop(key, None)
        if pending is None:
            return {}
        return {"progress_percent": pending[0], "progress_message": pending[1]}

    def _prune(self, now: float) -> None:
        for key, at in list(self._written_at.items()):
            if now - at >= self.every_s:  # (an attempt that ended elsewhere, or was lost)
                del self._written_at[key]
                self._pending.pop(key, None)
