"""Wakes an API process's parked agent long-polls when a job may have become claimable."""

from __future__ import annotations

import asyncio


class Waker:
    """Waiters take :meth:`current` *before* looking at the store, so a notify that lands
    between the look and the wait is never lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next :meth:`notify` sets."""
        return self._event

    def notify(self) -> None:
        """Wake every waiter holding the current event."""
        event, self._event = self._event, asyncio.Event()
        event.set()
