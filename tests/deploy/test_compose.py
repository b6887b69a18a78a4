"""The docker-compose stack: 3 workers, 12 jobs, one worker container killed mid-job.

Brings up docker-compose.yml with deploy/ci.env's images under a project name of its own
on free host ports, and always tears it down (``down -v``) at the end.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.services import free_port
from tests.deploy.conftest import ComposeSetup
from tests.support import TERMINAL, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.docker, pytest.mark.slow]

WORKERS = 3
JOBS = 12
LEASE_S = 6
SERVICES = {"redis", "postgres", "api", "worker", "beat", "flower"}


class ComposeStack:
    """One ``docker-compose -p NAME`` project, driven through the docker-compose CLI."""

    def __init__(self, setup: ComposeSetup) -> None:
        self.setup = setup
        self.project = f"lbtest{uuid.uuid4().hex[:8]}"
        self.api_port = free_port()
        self.flower_port = free_port()
        # Only the settings this test means; nothing LAUNCHBAY_* leaks in from the shell.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LAUNCHBAY_") or k.endswith("_IMAGE")
        }
        env.update(
            {
                "LAUNCHBAY_API_PORT": str(self.api_port),
                "LAUNCHBAY_API_BIND": "127.0.0.1",
                "LAUNCHBAY_FLOWER_PORT": str(self.flower_port),
                "LAUNCHBAY_LEASE_S": str(LEASE_S),
                "LAUNCHBAY_RECONCILE_INTERVAL_S": "1",
                "LAUNCHBAY_WORKER_CONCURRENCY": "2",
            }
        )
        self.env = env
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=15)
        self.flower = f"http://127.0.0.1:{self.flower_port}"

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = [
            self.setup.binary,
            "-p",
            self.project,
            "--env-file",
            str(self.setup.env_file),
            "-f",
            str(self.setup.compose_file),
            *args,
        ]
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def container_ids(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).split()

    def get(self, path: str) -> Any:
        r = self.api.get(path)
        r.raise_for_status()
        return r.json()

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except httpx.HTTPError:
            return None


@pytest.fixture
def compose(compose_setup: ComposeSetup) -> Iterator[ComposeStack]:
    stack = ComposeStack(compose_setup)
    try:
        stack.run("up", "-d", "--no-build", "--scale", f"worker={WORKERS}", timeout=420)
        yield stack
    except BaseException:
        print(stack.run("logs", "--no-color", "--tail", "60", check=False, timeout=120))
        raise
    finally:
        stack.api.close()
        stack.run("down", "-v", "--remove-orphans", "--timeout", "5", check=False, timeout=300)


@pytest.mark.timeout(900)
def test_scaled_workers_run_every_job_although_one_is_killed(compose: ComposeStack) -> None:
    services = compose.run("config", "--services").split()
    assert set(services) == SERVICES

    health = wait_until(
        lambda: compose.get_or_none("/api/v1/healthz"), 180, interval=0.5, what="the API to answer"
    )
    assert health == {"status": "ok", "redis": True, "database": True}

    stats = wait_until(
        lambda: (
            (s := compose.get_or_none("/api/v1/stats")) and s["workers"]["count"] == WORKERS and s
        ),
        120,
        interval=0.5,
        what=f"/stats to report {WORKERS} workers",
    )
    assert stats["workers"]["count"] == WORKERS

    # every container's HEALTHCHECK passes (the image's role-aware check, redis, postgres)
    def all_healthy() -> bool:
        ids = compose.run("ps", "-q").split()
        out = subprocess.run(
            [
                "docker",
                "inspect",
                "--format",
                "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                *ids,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return len(states) == len(SERVICES) + WORKERS - 1 and all(
            v == "healthy" for v in states.values()
        )

    wait_until(all_healthy, 240, interval=2, what="every container to be healthy")

    # each worker container registers under its own runner id and hostname
    workers = compose.get("/api/v1/workers")
    containers = compose.container_ids("worker")
    assert len(containers) == WORKERS
    assert len({w["id"] for w in workers}) == WORKERS
    hosts = {w["hostname"] for w in workers}
    assert len(hosts) == WORKERS
    assert all(any(c.startswith(h) for h in hosts) for c in containers), (hosts, containers)

    # Flower sees every worker container too, and lists them over its API
    def flower_workers() -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{compose.flower}/api/workers", params={"refresh": "true"}, timeout=10)
        except httpx.HTTPError:
            return None
        names = r.json() if r.status_code == 200 else {}
        return names if len(names) >= WORKERS else None

    seen = wait_until(flower_workers, 120, interval=1, what="Flower to list the workers")
    assert {n.split("@", 1)[0] for n in seen} == {w["id"] for w in workers}

    spec = {
        "executor": "builtin",
        "type": "countdown",
        "params": {"seconds": 10},
        "max_attempts": 3,
        "labels": {"test": compose.project},
    }
    ids = []
    for _ in range(JOBS):
        r = compose.api.post("/api/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])

    # Kill a worker container while it runs jobs (both of its slots busy).
    by_host = {w["id"]: w["hostname"] for w in workers}

    def busy_runner() -> str | None:
        running = [compose.get(f"/api/v1/jobs/{i}") for i in ids]
        per_runner: dict[str, int] = {}
        for j in running:
            if j["status"] == "running" and j["runner_id"]:
                per_runner[j["runner_id"]] = per_runner.get(j["runner_id"], 0) + 1
        full = [r for r, n in per_runner.items() if n >= 2 and r in by_host]
        return full[0] if full else None

    victim = wait_until(busy_runner, 120, interval=0.2, what="a worker running two jobs")
    victim_jobs = {
        i
        for i in ids
        if (j := compose.get(f"/api/v1/jobs/{i}"))["runner_id"] == victim
        and j["status"] == "running"
    }
    container = next(c for c in containers if c.startswith(by_host[victim]))
    subprocess.run(["docker", "kill", container], check=True, capture_output=True, timeout=60)

    def all_ended() -> list[dict[str, Any]] | None:
        jobs = [compose.get(f"/api/v1/jobs/{i}") for i in ids]
        return jobs if all(j["status"] in TERMINAL for j in jobs) else None

    final = wait_until(all_ended, 300, interval=1, what="all 12 jobs to end")
    statuses = {j["id"]: (j["status"], j["attempt"], j["error"]) for j in final}
    assert all(j["status"] == "succeeded" for j in final), statuses
    # the killed worker's running jobs were recovered by another worker, as a new attempt
    recovered = [j for j in final if j["id"] in victim_jobs and j["attempt"] >= 2]
    assert recovered, statuses
    assert all(j["runner_id"] != victim for j in recovered)
    runners = {j["runner_id"] for j in final}
    assert len(runners) > 1, f"every job ran on one worker: {runners}"

    # the store is the compose stack's PostgreSQL
    count = compose.run(
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "launchbay",
        "-d",
        "launchbay",
        "-tAc",
        f"SELECT count(*) FROM jobs WHERE labels::text LIKE '%{compose.project}%'",
    )
    assert int(count.strip()) == JOBS
