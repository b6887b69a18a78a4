"""The fast tier: which tests need no external process, and the guard that keeps them so.

A test is in the fast tier (marker ``fast``, set at collection, never by hand) when it
carries none of ``SERVICE_MARKERS`` and none of ``SERVICE_FIXTURES`` is in its fixture
closure. Everything else needs a real part (Valkey, a worker, an API process, Docker,
Chromium, PostgreSQL, docker-compose, the installed CLI). ``make test-fast`` runs the tier
(``pytest -m fast``); ``make test`` runs everything.

The rule a fast-tier test keeps: it talks only to what it started in its own process (the
in-package fakes of ``orchestrator/testing.py`` and ``workers/testing/``, an in-process
HTTP server, local child processes such as ``sh`` for the process launcher). The guard
makes a breach fail loudly: while a fast-tier test runs, connecting to a TCP listener of
another process (a real Valkey, API, database...), to a non-loopback address, or to the
Docker/PostgreSQL/Redis socket, or starting a service program (celery, uvicorn,
valkey-server, docker, chromium, the ``launchbay`` CLI...) raises ``FastTierViolation``,
and the test fails at teardown even if the code under test swallowed it. Connecting to a
port nobody listens on is allowed: tests of "unreachable" paths need that refusal.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixtures that start or reach a real external process. The closure counts: ``settings``
# needs ``valkey_url``, so a test taking ``settings`` is not in the fast tier.
SERVICE_FIXTURES = frozenset(
    {
        "valkey_url",  # a real valkey-server
        "stack",  # API (uvicorn), Celery worker and beat
        "target",  # the browser tests' stack (or an external URL)
        "postgres_cluster",  # a PostgreSQL server
        "busybox_image",  # the Docker engine
        "browser",  # Chromium
        "compose_setup",  # docker-compose and the engine
        "compose_bin",  # the docker-compose program
        "cli_script",  # the installed ``launchbay`` script, run as a subprocess
    }
)
SERVICE_MARKERS = frozenset({"slow", "docker", "browser", "postgres", "compose"})

# Programs (and ``python -m`` modules) that are services, or talk to one, when started.
SERVICE_PROGRAMS = frozenset(
    {
        "launchbay",
        "celery",
        "uvicorn",
        "flower",
        "valkey-server",
        "redis-server",
        "redis-cli",
        "docker",
        "dockerd",
        "docker-compose",
        "kubectl",
        "chromium",
        "chromium-browser",
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
    }
)
# (Not workers.agent: the agent is a client of an API, which a test must start first.)
SERVICE_MODULES = frozenset({"celery", "uvicorn", "flower", "orchestrator.cli"})
SERVICE_SOCKETS = ("docker.sock", "containerd", ".s.PGSQL", "redis", "valkey")


def is_fast(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
        return False
    return not SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))


class FastTierViolation(AssertionError):
    """A fast-tier test reached a real service."""


# ------------------------------------------------------------------------- the guard


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def _own_socket_inodes() -> set[str]:
    own: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            own.add(link[8:-1])
    return own


def _loopback(host: str) -> bool:
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost: the network


def _connect_problem(family: int, address: Any) -> str | None:
    if family == socket.AF_UNIX:
        path = os.fsdecode(address) if isinstance(address, str | bytes) else str(address)
        if any(s in path for s in SERVICE_SOCKETS):
            return f"the service socket {path}"
        return None
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return None
    host, port = str(address[0]), int(address[1])
    if not _loopback(host):
        return f"{host}:{port} (the network)"
    listeners = _listening_inodes(port)
    if listeners and not listeners & _own_socket_inodes():
        return f"{host}:{port}, a listener of another process (a real service)"
    return None


def _program_problem(args: Any, executable: Any) -> str | None:
    if isinstance(args, str | bytes | os.PathLike):
        argv = shlex.split(os.fsdecode(args)) if isinstance(args, str | bytes) else [args]
    else:
        argv = list(args)
    argv = [os.fsdecode(a) if isinstance(a, bytes | os.PathLike) else str(a) for a in argv]
    if not argv:
        return None
    program = Path(os.fsdecode(executable) if executable else argv[0]).name
    if program in SERVICE_PROGRAMS:
        return f"the program {program!r} ({shlex.join(argv)[:200]})"
    if program.startswith("python") and "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        if module in SERVICE_MODULES or module.split(".")[0] in SERVICE_MODULES:
            return f"the service module 'python -m {module}'"
    return None


@contextlib.contextmanager
def fast_tier_guard(nodeid: str) -> Iterator[list[str]]:
    """While a fast-tier test runs: no real service (see the module's docstring). Yields the
    breaches seen, so the caller can fail the test even if the code swallowed the error."""
    breaches: list[str] = []

    def breach(what: str) -> FastTierViolation:
        msg = (
            f"{nodeid} is in the fast tier but reached {what}: use the in-package fakes, or "
            "take the fixture that starts the real part (valkey_url, stack, cli_script, ...) "
            "or mark the test slow (tests/tiers.py)"
        )
        breaches.append(msg)
        return FastTierViolation(msg)

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if problem := _connect_problem(self.family, address):
            raise breach(problem)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if problem := _connect_problem(self.family, address):
            raise breach(problem)
        return real_connect_ex(self, address)

    real_popen_init = subprocess.Popen.__init__

    def popen_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        executable = kw.get("executable") or (a[1] if len(a) > 1 else None)
        if problem := _program_problem(args, executable):
            raise breach(problem)
        real_popen_init(self, args, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        if Path("/proc/net/tcp").exists():  # Linux; elsewhere the rule is only documented
            mp.setattr(socket.socket, "connect", connect)
            mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(subprocess.Popen, "__init__", popen_init)
        yield breaches
