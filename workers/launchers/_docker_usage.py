"""What a docker job's containers used, from the engine's stats stream (issue 16).

One thread per running step container reads ``GET /containers/{id}/stats`` (a sample
about every second, ending when the container stops) and keeps the peak memory the engine
reported (``max_usage`` where the cgroup keeps one, else the highest ``usage`` sampled)
and the container's CPU time. The figures of every step add up in :class:`Usage`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Usage:
    memory_peak_bytes: int = 0
    memory_limit_bytes: int = 0
    cpu_ns: int = 0
    samples: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self, api: Any, cid: str) -> None:
        """Sample ``cid`` until it stops, in a thread of its own."""
        t = threading.Thread(
            target=self._read, args=(api, cid), daemon=True, name=f"stats-{cid[:12]}"
        )
        self._threads.append(t)
        t.start()

    def _read(self, api: Any, cid: str) -> None:
        cpu = 0
        try:
            for sample in api.stats(cid, stream=True, decode=True):
                mem = sample.get("memory_stats") or {}
                peak = max(int(mem.get("max_usage") or 0), int(mem.get("usage") or 0))
                used = int(
                    ((sample.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
                )
                cpu = max(cpu, used)
                with self._lock:
                    self.samples += 1
                    self.memory_peak_bytes = max(self.memory_peak_bytes, peak)
                    self.memory_limit_bytes = max(
                        self.memory_limit_bytes, int(mem.get("limit") or 0)
                    )
                if not sample.get("pids_stats") and not mem:  # the container has stopped
                    break
        except Exception as exc:  # the container is gone: what was sampled stands
            log.debug("stats of %s ended: %s", cid[:12], exc)
        with self._lock:
            self.cpu_ns += cpu

    def finish(self, timeout: float = 5) -> dict[str, Any]:
        for t in self._threads:
            t.join(timeout)
        with self._lock:
            return {
                "memory_peak_bytes": self.memory_peak_bytes,
                "memory_limit_bytes": self.memory_limit_bytes or None,
                "cpu_s": round(self.cpu_ns / 1e9, 3),
                "stats_samples": self.samples,
                "source": "docker engine stats",
            }
