"""``launchbay up`` as a user runs it: a subprocess, driven over HTTP, stopped by signal."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from orchestrator.services import free_port
from tests.support import docker_available, wait_until

pytestmark = pytest.mark.slow
LAUNCHBAY = str(Path(sys.executable).parent / "launchbay")


class Up:
    def __init__(self, home: Path, api_port: int, flower_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
        env.update(
            LAUNCHBAY_HOME=str(home),
            LAUNCHBAY_API_PORT=str(api_port),
            LAUNCHBAY_FLOWER_PORT=str(flower_port),
            LAUNCHBAY_LEASE_S="6",
            LAUNCHBAY_RECONCILE_INTERVAL_S="1",
        )
        self.proc = subprocess.Popen(
            [LAUNCHBAY, "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        _STARTED.append(self)
        self.lines: list[str] = []
        self.url = f"http://127.0.0.1:{api_port}"
        self.flower = f"http://127.0.0.1:{flower_port}"
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded by the test timeout; "ready" or EOF
            self.lines.append(line.rstrip())
            if line.startswith("ready") or "failed" in line:
                break
        assert any(x.startswith("ready") for x in self.lines), "\n".join(self.lines)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def pids(self) -> list[int]:
        return [int(m.group(1)) for x in self.lines if (m := re.search(r"\(pid (\d+)\)", x))]

    def stop(self, sig: int) -> str:
        self.http.close()
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        return out


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


_STARTED: list[Up] = []


@pytest.fixture
def up_home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "lb-home"
    # Whatever the test did, leave nothing running: kill every group it started.
    while _STARTED:
        up = _STARTED.pop()
        for pid in [up.proc.pid, *up.pids()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        up.proc.wait(10)


def test_up_runs_the_stack_and_survives_a_restart(up_home: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    up = Up(up_home, api_port, flower_port)
    names = [x.split()[0] for x in up.lines]
    for service in ("valkey", "api", "worker", "beat", "flower", "ready"):
        assert service in names, up.lines
    # The embedded Valkey asks for the password generated for this home, and no line
    # prints it.
    valkey_line = next(x for x in up.lines if x.startswith("valkey"))
    port = int(re.search(r"127\.0\.0\.1:(\d+)", valkey_line).group(1))  # type: ignore[union-attr]
    password = (up_home / "secrets" / "valkey-password").read_text()
    assert password not in "\n".join(up.lines)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    assert redis.Redis(port=port, password=password).ping()
    worker_line = next(x for x in up.lines if x.startswith("worker"))
    # With an engine on the machine, `up` takes docker jobs as well.
    assert ("docker" in worker_line) == docker_available(), worker_line
    h = up.http

    # A 2 s countdown goes queued -> running -> succeeded with progress 100.
    job = h.post(
        "/api/v1/jobs", json={"executor": "builtin", "type": "countdown", "params": {"seconds": 2}}
    ).json()
    assert job["status"] == "queued"
    seen = set()

    def finished() -> bool:
        j = h.get(f"/api/v1/jobs/{job['id']}").json()
        seen.add(j["status"])
        return j["status"] == "succeeded" and j["progress"]["percent"] == 100

    wait_until(finished, timeout=30, what="countdown to succeed")
    assert "running" in seen

    primes = h.post(
        "/api/v1/jobs", json={"executor": "builtin", "type": "primes", "params": {"limit": 1000}}
    ).json()
    done = wait_until(
        lambda: (j := h.get(f"/api/v1/jobs/{primes['id']}").json())["status"] == "succeeded" and j,
        timeout=30,
        what="primes",
    )
    assert done["result"]["count"] == 168

    bad = h.post(
        "/api/v1/jobs", json={"executor": "builtin", "type": "countdown", "params": {"seconds": 0}}
    )
    assert bad.status_code == 422 and "seconds" in bad.json()["error"]

    long = h.post(
        "/api/v1/jobs", json={"executor": "builtin", "type": "countdown", "params": {"seconds": 30}}
    ).json()
    wait_until(
        lambda: h.get(f"/api/v1/jobs/{long['id']}").json()["status"] == "running",
        timeout=30,
        what="long countdown to run",
    )
    assert h.post(f"/api/v1/jobs/{long['id']}/cancel").status_code == 200
    wait_until(
        lambda: h.get(f"/api/v1/jobs/{long['id']}").json()["status"] == "cancelled",
        timeout=3,
        interval=0.05,
        what="cancel within 3 s",
    )

    only = h.get("/api/v1/jobs", params={"status": "succeeded"}).json()["items"]
    assert {j["id"] for j in only} == {job["id"], primes["id"]}

    # Flower asks for credentials even with no token set: user launchbay and the password
    # generated for this home; without them it refuses, and never with a wildcard CORS.
    anon = httpx.post(f"{up.flower}/api/task/revoke/{long['id']}?terminate=true", timeout=10)
    assert anon.status_code == 401 and "access-control-allow-origin" not in anon.headers
    secret = (up_home / "secrets" / "flower-password").read_text()
    assert (up_home / "secrets" / "flower-password").stat().st_mode & 0o077 == 0
    # Flower listed the worker before `up` said ready (no wait here), by runner id and host.
    workers = httpx.get(f"{up.flower}/api/workers", timeout=10, auth=("launchbay", secret)).json()
    runner_id = worker_line.split()[1].rstrip(",")
    assert f"{runner_id}@{socket.gethostname()}" in workers, (runner_id, list(workers))

    pids = up.pids()
    out = up.stop(signal.SIGINT)
    assert up.proc.returncode == 0, out
    assert "stopped" in out
    for pid in pids:
        assert not _group_alive(pid), f"process group {pid} outlived launchbay up"

    # Same home again: every job is still listed.
    up2 = Up(up_home, api_port, flower_port)
    listed = {j["id"] for j in up2.http.get("/api/v1/jobs").json()["items"]}
    assert {job["id"], primes["id"], long["id"]} <= listed
    assert up2.http.get(f"/api/v1/jobs/{long['id']}").json()["status"] == "cancelled"
    pids2 = up2.pids()
    up2.stop(signal.SIGTERM)
    assert up2.proc.returncode == 0
    for pid in pids2:
        assert not _group_alive(pid)


def test_up_says_which_service_died_and_why(up_home: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
        env.update(
            LAUNCHBAY_HOME=str(up_home),
            LAUNCHBAY_API_PORT=str(port),
            LAUNCHBAY_FLOWER_PORT=str(free_port()),
        )
        r = subprocess.run(
            [LAUNCHBAY, "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
    assert r.returncode == 1
    assert "api exited with code" in r.stderr
    assert "address already in use" in r.stderr
    pids = [int(m.group(1)) for m in re.finditer(r"\(pid (\d+)\)", r.stdout)]
    assert pids and not any(_group_alive(p) for p in pids)
