"""What keeps a job away from Launchbay's own secrets (README: "Security model").

Launchbay's processes hold the token and the database and broker credentials in their
environment. A job runs as another user when the worker is root (``LAUNCHBAY_JOB_USER``),
and then the kernel keeps it out of every Launchbay process and file. For a job of the same
user, :func:`harden_process` makes each Launchbay process non-dumpable, so its
``/proc/<pid>/environ``, ``mem`` and ``fd`` are root's and no process of that user can read
them or attach to it; files of the state folder are private (:func:`private_tree`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pwd
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


@functools.cache
def _prctl() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def prctl_ready() -> bool:
    """Whether ``prctl`` works here (Linux); loads it, so that a forked child, which must
    not load libraries, finds it loaded."""
    return _prctl() is not None


def prctl(option: int, value: int) -> bool:
    fn = _prctl()
    return fn is not None and fn(option, value, 0, 0, 0) == 0


def harden_process() -> None:
    """Make this process non-dumpable (kept across fork, reset by exec: call it in every
    Launchbay process — the API, each Celery process, the agent, ``launchbay up``)."""
    prctl(PR_SET_DUMPABLE, 0)


def private_tree(home: Path, *private: Path, traversable: tuple[Path, ...] = ()) -> None:
    """``home`` and ``traversable`` folders 0711 (a job's user may pass through to its own
    workspace, not list them); ``private`` folders 0700."""
    for d in (home, *traversable):
        with contextlib.suppress(OSError):
            d.chmod(0o711)
    for d in private:
        with contextlib.suppress(OSError):
            d.chmod(0o700)


def hand_over(uid: int, gid: int, *paths: Path) -> None:
    """Give ``paths`` (a job's workspace, its step's folder) to the job's user."""
    for path in dict.fromkeys(paths):
        with contextlib.suppress(OSError):
            os.chown(path, uid, gid)


def job_identity(configured: str | None) -> tuple[int, int] | None:
    """(uid, gid) process jobs run as: None unless this process is root. Root runs them as
    ``configured`` (a user name or ``uid[:gid]``), else ``launchbay-job`` if that user
    exists, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in [configured] if configured else ["launchbay-job", "nobody"]:
        assert name is not None
        if name.replace(":", "").isdigit():
            uid, _, gid = name.partition(":")
            if int(uid) == 0 or int(gid or uid) == 0:
                raise ValueError(f"LAUNCHBAY_JOB_USER may not be root, got {name!r}")
            return int(uid), int(gid or uid)
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid == 0:
                raise ValueError(f"LAUNCHBAY_JOB_USER may not be root, got {name!r}")
            return entry.pw_uid, entry.pw_gid
    raise ValueError(f"no such user for process jobs: {configured!r} (LAUNCHBAY_JOB_USER)")
