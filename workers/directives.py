"""The stdout protocol any job can speak to report progress and a result.

    ::progress <percent> [message]
    ::result <json>

Both the Celery attempt runner and the remote agent read job output through this.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Protocol

PROGRESS_PREFIX = "::progress "
RESULT_PREFIX = "::result "


class _Sink(Protocol):
    def progress(self, percent: float, message: str = "") -> None: ...
    def result(self, value: Any) -> None: ...


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def apply_directive(line: str, sink: _Sink) -> None:
    """If ``line`` is a directive, pass it to ``sink``; a malformed one is just a log line
    (so is a percent that is not a finite number, or a result holding NaN or Infinity)."""
    if line.startswith(PROGRESS_PREFIX):
        parts = line[len(PROGRESS_PREFIX) :].strip().split(" ", 1)
        with contextlib.suppress(ValueError):
            percent = float(parts[0])
            if math.isfinite(percent):
                sink.progress(percent, parts[1] if len(parts) > 1 else "")
    elif line.startswith(RESULT_PREFIX):
        with contextlib.suppress(ValueError, RecursionError):  # (too deeply nested)
            sink.result(json.loads(line[len(RESULT_PREFIX) :], parse_constant=_not_json))
