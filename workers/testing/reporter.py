"""A reporter for launcher tests that records everything it is told."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from orchestrator.job import StepResult


@dataclass
class RecordingReporter:
    """A thread-safe :class:`~workers.launchers.base.Reporter` that keeps everything."""

    lines: list[tuple[str, str, str | None]] = field(default_factory=list)
    progress_updates: list[tuple[float, str]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        with self._changed:
            self.lines.append((stream, line, step))
            self._changed.notify_all()

    def progress(self, percent: float, message: str = "") -> None:
        with self._changed:
            self.progress_updates.append((percent, message))
            self._changed.notify_all()

    def result(self, value: Any) -> None:
        with self._changed:
            self.results.append(value)

    def step(self, result: StepResult) -> None:
        with self._changed:
            self.steps.append(result)
            self._changed.notify_all()

    def text(self, stream: str | None = None) -> list[str]:
        """The lines seen so far, of one stream or of all."""
        with self._lock:
            return [line for s, line, _ in self.lines if stream is None or s == stream]

    def final_steps(self) -> dict[str, StepResult]:
        """The last report of each step, by name."""
        with self._lock:
            return {s.name: s for s in self.steps}

    def wait_for_line(self, text: str, timeout: float = 30) -> bool:
        """Block until a line containing ``text`` was logged (False on timeout)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for _, line, _ in self.lines), timeout
            )
