"""Small helpers the launchers share: byte chunks to lines, one-line error text, instance ids."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from orchestrator.events import cut_marker, whole_chars
from orchestrator.settings import Settings

# A runaway line without a newline must not grow without bound in memory: past this
# (LAUNCHBAY_MAX_LOG_LINE_BYTES) a line is cut, and the marker says how long it was.
MAX_LINE_BYTES = Settings.model_fields["max_log_line_bytes"].default


class LineSplitter:
    """Turns arbitrary byte chunks into complete text lines of at most ``limit`` bytes."""

    def __init__(self, emit: Callable[[str], None], limit: int = MAX_LINE_BYTES) -> None:
        self._emit = emit
        self._limit = limit
        self._buf = bytearray()
        self._cut = 0  # bytes of the current line dropped past the limit

    def feed(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        last = chunk.rfind(b"\n")
        if first < last:
            # The complete lines between the first and the last newline in one split (a
            # busy job's 64 KiB chunk holds thousands): line by line only at the edges and
            # for a line past the limit.
            self._feed(chunk[: first + 1])
            middle = chunk[first + 1 : last].split(b"\n")
            if max(map(len, middle)) <= self._limit:
                emit = self._emit
                for raw in middle:
                    emit(_decode(raw))
            else:
                self._feed(chunk[first + 1 : last + 1])
            self._feed(chunk[last + 1 :])
            return
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            end = len(chunk) if nl < 0 else nl
            room = self._limit - len(self._buf)
            if room > 0:
                self._buf += chunk[start : start + min(end - start, room)]
            self._cut += max(0, end - start - max(room, 0))
            if nl < 0:
                return
            self._flush()
            start = nl + 1

    def close(self) -> None:
        if self._buf or self._cut:
            self._flush()

    def _flush(self) -> None:
        raw, cut = bytes(self._buf), self._cut
        self._buf, self._cut = bytearray(), 0
        if cut:
            total = len(raw) + cut
            self._emit(whole_chars(raw).decode("utf-8", "replace") + cut_marker(total))
        else:
            self._emit(_decode(raw))


def pump(chunks: Iterable[bytes], emit: Callable[[str], None], limit: int = MAX_LINE_BYTES) -> None:
    """Feed every chunk to a splitter, then flush the last partial line."""
    splitter = LineSplitter(emit, limit)
    try:
        for chunk in chunks:
            if chunk:
                splitter.feed(chunk)
    finally:
        splitter.close()


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


def one_line(exc: BaseException | str) -> str:
    """``Type: message`` on one line, for job errors a person reads."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def instance_id(settings: Settings) -> str:
    """Names the Launchbay installation that owns a container or Job.

    Several installations (or test sessions) may share one Docker engine or cluster; the
    orphan sweep of one must never remove what another started. Workers of one
    installation share the job database, so its URL identifies the installation.
    """
    return hashlib.sha256(settings.effective_database_url.encode()).hexdigest()[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)
