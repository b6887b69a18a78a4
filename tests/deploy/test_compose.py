"""The docker-compose stack: 3 workers, 12 jobs, one worker container killed mid-job; then
one worker stopped (SIGTERM) mid-job, which drains and hands its job back.

Brings up docker-compose.yml with deploy/ci.env's images under a project name of its own
on free host ports, once for this module, and always tears it down (``down -v``) at the
end. The only change to the file is tests/deploy/compose.health.yml: the image's
HEALTHCHECK every 5 s, not 15 s. The Launchbay settings are compose's defaults (lease 30 s,
reconcile every 5 s, lost messages re-sent after 30 s, drain 30 s), so the recoveries take
as long as they would in a real deployment: about 40 s after the kill (the dead worker's
leases running out) and 30 s of drain.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from orchestrator.services import free_port
from tests.deploy.conftest import REPO, ComposeSetup, duration_s
from tests.support import TERMINAL, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.docker, pytest.mark.slow]

WORKERS = 3
JOBS = 12
SERVICES = {"redis", "postgres", "api", "worker", "beat", "flower"}
HEALTH_EVERY_5S = Path(__file__).with_name("compose.health.yml")
# Long enough that a worker is seen running two jobs and killed before they end.
COUNTDOWN_S = 6
# A killed worker's jobs come back after its leases expire (30 s, renewed every 10 s) and
# the next reconcile (5 s), then run again; a message it had taken, not yet started, is
# re-sent by the reconciler once its job is 30 s old.
RECOVERY_BOUND_S = 180
# The GET the Kubernetes autoscaler makes (path and query of the ScaledObject's URL).
KEDA_TRIGGER = next(
    d
    for d in yaml.safe_load_all((REPO / "deploy/k8s/keda-scaledobject.yaml").read_text())
    if d["kind"] == "ScaledObject"
)["spec"]["triggers"][0]["metadata"]
_keda_url = urlsplit(KEDA_TRIGGER["url"])
KEDA_STATS = f"{_keda_url.path}?{_keda_url.query}"


class ComposeStack:
    """One ``docker-compose -p NAME`` project, driven through the docker-compose CLI."""

    def __init__(self, setup: ComposeSetup) -> None:
        self.setup = setup
        self.project = f"lbtest{uuid.uuid4().hex[:8]}"
        self.token = uuid.uuid4().hex
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
                "LAUNCHBAY_WORKER_CONCURRENCY": "2",
                "LAUNCHBAY_TOKEN": self.token,
                "LAUNCHBAY_REDIS_PASSWORD": uuid.uuid4().hex,
            }
        )
        self.env = env
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            timeout=15,
            headers={"Authorization": f"Bearer {self.token}"},
        )
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
            "-f",
            str(HEALTH_EVERY_5S),
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

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/api/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def job_in(self, job_id: str, statuses: Collection[str]) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job["status"] in statuses else None

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.api.post("/api/v1/jobs", json={**spec, "labels": {"test": self.project}})
        assert r.status_code == 201, r.text
        return r.json()["id"]  # type: ignore[no-any-return]

    def worker_container(self, runner_id: str) -> str:
        """The container a worker runs in (its hostname is the container id's prefix)."""
        (worker,) = [w for w in self.get("/api/v1/workers") if w["id"] == runner_id]
        (container,) = [c for c in self.container_ids("worker") if c.startswith(worker["hostname"])]
        return container

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            print(self.run("logs", "--no-color", "--tail", "80", check=False, timeout=120))
            raise


@pytest.fixture(scope="module")
def compose(compose_setup: ComposeSetup) -> Iterator[ComposeStack]:
    """One stack for the module: the tests run in order on it (the first kills a worker,
    the second stops another)."""
    stack = ComposeStack(compose_setup)
    try:
        with stack.logs_on_failure():
            stack.run("up", "-d", "--no-build", "--scale", f"worker={WORKERS}", timeout=420)
        yield stack
    finally:
        stack.api.close()
        stack.run("down", "-v", "--remove-orphans", "--timeout", "2", check=False, timeout=300)


@pytest.mark.timeout(900)
def test_scaled_workers_run_every_job_although_one_is_killed(compose: ComposeStack) -> None:
    with compose.logs_on_failure():
        _scaled_workers_run_every_job_although_one_is_killed(compose)


def _scaled_workers_run_every_job_although_one_is_killed(compose: ComposeStack) -> None:
    started = time.monotonic()
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
            r = httpx.get(
                f"{compose.flower}/api/workers",
                params={"refresh": "true"},
                timeout=10,
                auth=("launchbay", compose.token),
            )
        except httpx.HTTPError:
            return None
        names = r.json() if r.status_code == 200 else {}
        return names if len(names) >= WORKERS else None

    seen = wait_until(flower_workers, 120, interval=1, what="Flower to list the workers")
    assert {n.split("@", 1)[0] for n in seen} == {w["id"] for w in workers}
    # ... and to nobody without the credentials, never with a wildcard CORS answer.
    anon = httpx.post(f"{compose.flower}/api/task/revoke/x", params={"terminate": "true"})
    assert anon.status_code == 401 and "access-control-allow-origin" not in anon.headers
    assert compose.api.get("/api/v1/workers", headers={"Authorization": ""}).status_code == 401

    print(f"stack up and healthy after {time.monotonic() - started:.0f} s")

    # Default max_attempts (1) and loss budget: a job whose worker dies can only come back
    # on the loss budget, never by spending an attempt.
    spec = {"executor": "builtin", "type": "countdown", "params": {"seconds": COUNTDOWN_S}}
    ids = [compose.submit(spec) for _ in range(JOBS)]

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
    container = next(c for c in containers if c.startswith(by_host[victim]))
    subprocess.run(["docker", "kill", container], check=True, capture_output=True, timeout=60)
    killed_at = time.monotonic()

    # The autoscaler's metric (the ScaledObject's own GET) counts the busy slots as well as
    # the waiting jobs: here every job is the compose stack's, all of them builtin.
    demand = compose.get(KEDA_STATS)
    assert demand["demand"] == demand["queued"] + demand["claimed"] + demand["running"], demand
    assert demand["running"] >= 2 and demand["demand"] > demand["queued"], demand
    assert compose.get("/api/v1/stats?executor=process")["demand"] == 0

    def all_ended() -> list[dict[str, Any]] | None:
        jobs = [compose.job(i) for i in ids]
        return jobs if all(j["status"] in TERMINAL for j in jobs) else None

    final = wait_until(all_ended, RECOVERY_BOUND_S, interval=1, what="all 12 jobs to end")
    print(f"all {JOBS} jobs ended {time.monotonic() - killed_at:.0f} s after the kill")
    statuses = {j["id"]: (j["status"], j["attempt"], j["losses"], j["error"]) for j in final}
    assert all(j["status"] == "succeeded" for j in final), statuses
    # The killed worker's unfinished attempts were lost: each such job was re-queued once on
    # the loss budget (no attempt spent: max_attempts is 1) and another worker ran it.
    attempts = {i: compose.get(f"/api/v1/runs/{i}")["attempts"] for i in ids}
    on_victim = {i for i, rows in attempts.items() for a in rows if a["runner_id"] == victim}
    lost = {i for i, rows in attempts.items() if any(a["outcome"] == "lost" for a in rows)}
    assert lost, statuses
    assert lost <= on_victim, (lost, on_victim)
    for j in final:
        rows = attempts[j["id"]]
        if j["id"] in lost:
            assert (j["attempt"], j["losses"], j["handbacks"]) == (2, 1, 0), j
            assert [a["outcome"] for a in rows] == ["lost", "succeeded"], rows
            assert rows[0]["runner_id"] == victim and j["runner_id"] != victim, rows
        else:  # finished before the kill, or never claimed by the victim
            assert (j["attempt"], j["losses"], j["handbacks"]) == (1, 0, 0), j
            assert [a["outcome"] for a in rows] == ["succeeded"], rows
    runners = {j["runner_id"] for j in final}
    assert len(runners) > 1, f"every job ran on one worker: {runners}"
    assert compose.get(KEDA_STATS)["demand"] == 0

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


# A process job that outlasts any drain on its first attempt (it is stopped when the drain
# ends: SIGTERM to its process group) and ends at once on the next: the test waits for the
# drain, not for a second long run.
DRAIN_JOB = {
    "executor": "process",
    "command": [
        "sh",
        "-c",
        'if [ "$LAUNCHBAY_ATTEMPT" = 1 ]; then sleep 600; fi; echo "attempt $LAUNCHBAY_ATTEMPT"',
    ],
}


@pytest.mark.timeout(600)
def test_a_stopped_worker_hands_its_running_job_back(compose: ComposeStack) -> None:
    """`docker stop` (SIGTERM, SIGKILL after the compose file's stop_grace_period: what
    `docker-compose stop` and `down` do to each worker) of a worker mid-job: it takes no new
    job, lets the job run for LAUNCHBAY_DRAIN_S, then stops it and hands it back at once
    (re-queued, nothing spent) and exits before the SIGKILL; another worker runs it."""
    with compose.logs_on_failure():
        worker = yaml.safe_load(compose.run("config"))["services"]["worker"]
        drain_s = float(worker["environment"]["LAUNCHBAY_DRAIN_S"])
        grace_s = duration_s(worker["stop_grace_period"])

        # another worker must be there to take the job back (the first test killed one)
        wait_until(lambda: len(compose.get("/api/v1/workers")) >= 2, 60, what="two live workers")
        job_id = compose.submit(DRAIN_JOB)
        running = wait_until(
            lambda: compose.job_in(job_id, {"running"}), 60, interval=0.2, what="the job to run"
        )
        runner = running["runner_id"]
        container = compose.worker_container(runner)

        t0 = time.monotonic()
        subprocess.run(
            ["docker", "stop", "--time", str(int(grace_s)), container],
            check=True,
            capture_output=True,
            timeout=grace_s + 60,
        )
        stopped_s = time.monotonic() - t0
        state = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}"]
            + [container],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        print(f"worker stopped after {stopped_s:.1f} s (drain {drain_s:g} s), exit {state}")
        # It waited for the drain, and exited on its own before the SIGKILL (137).
        assert drain_s - 2 <= stopped_s < grace_s, stopped_s
        assert state == ["0", "false"], state

        handed = compose.job(job_id)
        assert handed["status"] != "failed", handed
        assert (handed["attempt"], handed["handbacks"], handed["losses"]) == (2, 1, 0), handed

        final = wait_until(
            lambda: compose.job_in(job_id, TERMINAL), 60, interval=0.5, what="the job to end"
        )
        assert final["status"] == "succeeded", final
        log = compose.api.get(f"/api/v1/jobs/{job_id}/logs?format=text").text
        assert "attempt 2" in log, log
        assert (final["attempt"], final["handbacks"], final["losses"]) == (2, 1, 0), final
        assert final["runner_id"] != runner
        rows = compose.get(f"/api/v1/runs/{job_id}")["attempts"]
        assert [(a["runner_id"] == runner, a["outcome"]) for a in rows] == [
            (True, "handed_back"),
            (False, "succeeded"),
        ], rows
