"""Every process a job starts, so that none outlives its attempt.

Each job's leader (its step's process) is made a child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``, kept across exec) before it runs the job's program: a process
whose parent exits — a ``setsid env -i`` grandchild, a double-forked daemon — is re-parented
to the leader, not to init, so the whole job stays one tree while the leader lives. The
launching process is a subreaper too, so what outlives the leader comes to it. A scanner
(one thread per launching process, running only while some job runs) records each tree,
keyed by (pid, start time) so a reused pid is never mistaken for a member. Job processes are
also marked ``oom_score_adj`` 1000 (the first the kernel kills under memory pressure; a
non-root process cannot lower it once root set it): an orphan re-parented to the launcher
in the half-second before the scanner saw it is known by that mark. At the attempt's end
every member still alive is killed; zombies of re-parented orphans are reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Hashable

from orchestrator.hardening import PR_SET_CHILD_SUBREAPER, prctl

Member = tuple[int, int]  # (pid, start time in clock ticks since boot)
JOB_MARK = b"1000"


def _marked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "rb") as f:
            return f.read().strip() == JOB_MARK
    except OSError:
        return False


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[19]), fields[0].decode()
    except (IndexError, ValueError):
        return None


def _table() -> dict[int, tuple[int, int, str]]:
    out: dict[int, tuple[int, int, str]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _stat(int(name))
                if st is not None:
                    out[int(name)] = st
    return out


class Families:
    """Which processes belong to which running job, in this launching process.

    One per process (``of_this_process(Families)``): an attempt's end kills every marked
    orphan re-parented here that no running job claims, so a second instance in the same
    process would take the first one's jobs for orphans and kill them."""

    def __init__(self, scan_s: float = 0.5) -> None:
        self.scan_s = scan_s
        self._lock = threading.Lock()
        # Held while a step's process is started and added, and while reaping or killing:
        # a leader that exists but is not added yet is never taken for an orphan.
        self._spawning = threading.RLock()
        self._members: dict[Hashable, dict[int, int]] = {}
        self._leaders: dict[Hashable, set[int]] = {}
        self._reaper_pid = 0
        self._thread: threading.Thread | None = None

    def _ensure_reaper(self) -> None:
        if self._reaper_pid != os.getpid():  # (not inherited across fork)
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            self._reaper_pid = os.getpid()
            self._thread = None

    @staticmethod
    def in_child() -> None:
        """In a step's process between fork and exec: subreaper, marked. No locks, no
        imports, nothing allocated that a lock guards."""
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, JOB_MARK)
            finally:
                os.close(fd)

    def spawning(self) -> threading.RLock:
        """Hold this around starting a step's process and :meth:`add`-ing it."""
        self._ensure_reaper()
        return self._spawning

    def add(self, key: Hashable, leader: int) -> None:
        """``leader`` (a step's process, started under :meth:`spawning`) belongs to ``key``'s
        job, with all it starts."""
        st = _stat(leader)
        with self._lock:
            self._members.setdefault(key, {})
            self._leaders.setdefault(key, set()).add(leader)
            if st is not None:
                self._members[key][leader] = st[1]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._scanner, daemon=True, name="families")
                self._thread.start()

    def _scan(self) -> dict[int, tuple[int, int, str]]:
        """Record every descendant of each job's known members; reap orphans' zombies."""
        with self._spawning:
            return self._scan_held()

    def _scan_held(self) -> dict[int, tuple[int, int, str]]:
        table = _table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _start, _state) in table.items():
            children.setdefault(ppid, []).append(pid)
        me = os.getpid()
        with self._lock:
            leaders = set().union(*self._leaders.values()) if self._leaders else set()
            for members in self._members.values():
                todo = [p for p, start in members.items() if table.get(p, (0, -1))[1] == start]
                while todo:
                    pid = todo.pop()
                    for child in children.get(pid, ()):
                        if child not in members:
                            members[child] = table[child][1]
                            todo.append(child)
            known = set().union(*self._members.values()) if self._members else set()
        # Reap only re-parented members: a leader is its follower's to reap.
        for pid, (ppid, _start, state) in table.items():
            if ppid == me and state == "Z" and pid in known and pid not in leaders:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        return table

    def _scanner(self) -> None:
        while True:
            with self._lock:
                if not self._members:
                    self._thread = None
                    return
            self._scan()
            time.sleep(self.scan_s)  # (the scan's period; nothing waits on it)

    def end(self, key: Hashable, rounds: int = 5) -> int:
        """SIGKILL every process of ``key``'s job still alive (and, when no other job of
        this process runs, every orphan re-parented here); returns how many were killed."""
        with self._spawning:
            return self._end_held(key, rounds)

    def _end_held(self, key: Hashable, rounds: int) -> int:
        killed = 0
        for _ in range(rounds):
            table = self._scan_held()
            me = os.getpid()
            with self._lock:
                members = dict(self._members.get(key, {}))
                others = [k for k in self._members if k != key]
                claimed = set().union(*(self._members[k] for k in others)) if others else set()
                leaders = set().union(*self._leaders.values()) if self._leaders else set()
            victims = [p for p, start in members.items() if table.get(p, (0, -1))[1] == start]
            victims += [
                p
                for p, (ppid, _s, _st) in table.items()
                if ppid == me and p not in claimed and p not in members and _marked(p)
            ]
            victims = [p for p in set(victims) if table[p][2] != "Z"]
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            for pid in victims:  # re-parented ones are ours to reap (a leader: its follower's)
                if table[pid][0] == me and pid not in leaders:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(pid, 0)
        with self._lock:
            self._members.pop(key, None)
            self._leaders.pop(key, None)
        return killed
