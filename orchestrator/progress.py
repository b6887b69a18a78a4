"""How often one process writes an attempt's progress to the store.

Every report still goes out at once as an event (live clients see each one); the store,
which every reader of ``GET /jobs/{id}`` shares, gets at most one write of an attempt's
progress per ``every_s`` (counted from its claim when the claim was made in this process,
so a short job's reports are stored with its end; else from its first report, stored at
once). The latest report held back meanwhile
(the latest wins) is written with the attempt's next lease renewal or with its end, so
the stored progress lags by at most ``max(every_s, lease_s / 3)`` and the end always
stores the last one. Many jobs reporting every second then cost the store a bounded
rate of writes per job instead of one write per report.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

Key = tuple[str, int]  # (job id, attempt)
_PRUNE_AT = 10_000  # attempts remembered before the stale ones are forgotten


class ProgressGate:
    """Thread-safe; one per process (the lifecycle holds it)."""

    def __init__(
        self,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        renew_s: float = math.inf,
    ) -> None:
        self.every_s = every_s
        # How often a held attempt is renewed (and its held-back report taken): one with a
        # report held back for longer is not renewed here any more (see ``_prune``).
        self.renew_s = renew_s
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

    def written(self, key: Key) -> None:
        """The attempt's row was just written (its claim, in this process): reports within
        ``every_s`` from now are held back, as after a stored report."""
        now = self._clock()
        with self._lock:
            if len(self._written_at) >= _PRUNE_AT:
                self._prune(now)
            self._written_at[key] = now

    def admit(self, key: Key, percent: float, message: str) -> bool:
        """True: write this report now. False: it is kept as the pending one."""
        now = self._clock()
        with self._lock:
            last = self._written_at.get(key)
            if last is None and len(self._written_at) >= _PRUNE_AT:
                self._prune(now)
            if last is not None and now - last < self.every_s:
                self._pending[key] = (percent, message)
                return False
            self._written_at[key] = now
            self._pending.pop(key, None)
            return True

    def hold(self, key: Key, percent: float, message: str) -> None:
        """Keep this report as the pending one, whatever the interval: the attempt's end,
        which follows at once, stores it (:meth:`settle`)."""
        with self._lock:
            self._pending[key] = (percent, message)

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
        """Forget attempts written long enough ago: one with nothing held back once the
        interval passed (its next report is written at once, as a first one); one with a
        report held back only once it missed a renewal (the renewal takes the report: an
        attempt it no longer reaches ended elsewhere, or was lost)."""
        for key, at in list(self._written_at.items()):
            age = now - at
            if age >= self.every_s and (key not in self._pending or age >= 2 * self.renew_s):
                del self._written_at[key]
                self._pending.pop(key, None)
