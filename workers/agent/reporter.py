"""The agent's Reporter: buffers a job's logs and progress and sends them over HTTP."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from orchestrator.client import ApiError, ServerUnreachable
from orchestrator.job import StepResult
from workers.directives import apply_directive

if TYPE_CHECKING:
    from workers.agent.attempt import Attempt

log = logging.getLogger("launchbay.agent")

_LOG_BATCH = 2000
_MAX_BUFFERED = 50_000


class Reporter:
    """The launcher's Reporter: buffers logs and progress; the attempt's watcher flushes."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.lines: list[dict[str, Any]] = []
        self.dropped = 0
        self.steps: list[StepResult] = []
        self.result_value: Any = None
        self.has_result = False
        self._progress: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        """Buffer one line; ``::progress``/``::result`` lines also set progress/result."""
        line = line.rstrip("\r\n")
        apply_directive(line, self)
        with self._lock:
            self.lines.append(
                {
                    "stream": stream if stream in ("stdout", "stderr") else "stdout",
                    "step": step,
                    "line": line,
                }
            )
            if len(self.lines) > _MAX_BUFFERED:  # server unreachable for long: keep the tail
                self.dropped += len(self.lines) - _MAX_BUFFERED
                del self.lines[: len(self.lines) - _MAX_BUFFERED]

    def progress(self, percent: float, message: str = "") -> None:
        """Keep the latest progress (clamped to 0..100) for the next flush."""
        with self._lock:
            self._progress = (max(0.0, min(100.0, float(percent))), message[:2000])

    def result(self, value: Any) -> None:
        """Record the job's result value, sent with the final report."""
        self.result_value, self.has_result = value, True

    def step(self, result: StepResult) -> None:
        """Record a step's result, replacing an earlier one of the same name."""
        with self._lock:
            self.steps = [s for s in self.steps if s.name != result.name] + [result]

    def flush(self) -> None:
        """Send buffered lines, then the latest progress (logs before what they led to)."""
        with self._flushing:
            while True:
                with self._lock:
                    batch = self.lines[:_LOG_BATCH]
                    del self.lines[:_LOG_BATCH]
                    if self.dropped and batch:
                        batch.insert(
                            0,
                            {
                                "stream": "system",
                                "step": None,
                                "line": f"[agent dropped {self.dropped} log lines while the "
                                f"server was unreachable]",
                            },
                        )
                        self.dropped = 0
                if not batch:
                    break
                if not self._send("logs", {"lines": batch}):
                    with self._lock:  # keep them for the next flush
                        self.lines[:0] = [b for b in batch if b["stream"] != "system"]
                    return
            with self._lock:
                pending, self._progress = self._progress, None
            if pending is not None and not self._send(
                "progress", {"percent": pending[0], "message": pending[1]}
            ):
                with self._lock:
                    self._progress = self._progress or pending

    def _send(self, what: str, body: dict[str, Any]) -> bool:
        """False when it should be retried later; True when sent (or pointless to retry)."""
        try:
            answer = self.attempt.post(what, body)
        except (ServerUnreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status < 500:
                log.error("job %s: the server refused %s: %s", self.attempt.job.id, what, exc)
                return True
            log.warning(
                "job %s: could not send %s (%s); will retry", self.attempt.job.id, what, exc
            )
            return False
        if answer is not None and answer.get("cancel"):
            self.attempt.request_cancel()
        return True
