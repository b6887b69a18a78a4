"""Small helpers the launchers share: byte chunks to lines, one-line error text, instance ids."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from orchestrator.settings import Settings

# A runaway line without a newline must not grow without bound in memory.
MAX_LINE_BYTES = 64 * 1024


class LineSplitter:
    """Turns arbitrary byte chunks into complete text lines."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buf = b""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            self._emit(_decode(line))
        if len(self._buf) > MAX_LINE_BYTES:
            line, self._buf = self._buf[:MAX_LINE_BYTES], self._buf[MAX_LINE_BYTES:]
            self._emit(_decode(line))

    def close(self) -> None:
        if self._buf:
            line, self._buf = self._buf, b""
            self._emit(_decode(line))


def pump(chunks: Iterable[bytes], emit: Callable[[str], None]) -> None:
    """Feed every chunk to a splitter, then flush the last partial line."""
    splitter = LineSplitter(emit)
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
