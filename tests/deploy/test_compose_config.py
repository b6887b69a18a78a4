"""docker-compose.yml and deploy/compose.docker.yml, as docker-compose itself resolves them.

Needs only the docker-compose binary (``config`` talks to no engine); skips without it
unless LAUNCHBAY_REQUIRE_COMPOSE=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.settings import Settings
from tests.deploy.conftest import (
    HANDBACK_MARGIN_S,
    JOB_GRACE_S,
    REPO,
    REQUIRE_COMPOSE,
    duration_s,
    least_stop_grace_s,
    read_env_file,
)

LAUNCHBAY_SERVICES = ("api", "worker", "beat", "flower")


@pytest.fixture(scope="module")
def compose_bin() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if REQUIRE_COMPOSE:
            pytest.fail("docker-compose is not installed (LAUNCHBAY_REQUIRE_COMPOSE=1)")
        pytest.skip("docker-compose is not installed")
    return found


def resolved(
    compose_bin: str, *files: str, env: dict[str, str] | None = None, env_file: Path | None = None
) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
    argv = [compose_bin, "--project-directory", str(REPO)]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    for f in files or ("docker-compose.yml",):
        argv += ["-f", str(REPO / f)]
    proc = subprocess.run(
        [*argv, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)  # type: ignore[no-any-return]


def published(service: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    """(host ip, host port, container port) of each port, in either of compose's forms."""
    out: list[tuple[str | None, int, int]] = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), int(p["published"]), int(p["target"])))
        else:  # "ip:published:target/proto"
            ip, host, target = str(p).split("/")[0].rsplit(":", 2)
            out.append((ip or None, int(host), int(target)))
    return out


def test_the_stack_has_every_service(compose_bin: str) -> None:
    cfg = resolved(compose_bin)
    assert set(cfg["services"]) == {"redis", "postgres", *LAUNCHBAY_SERVICES}


def test_defaults_ports_images_and_store(compose_bin: str) -> None:
    svc = resolved(compose_bin)["services"]
    assert published(svc["api"]) == [("0.0.0.0", 8000, 8000)]
    assert published(svc["flower"]) == [("127.0.0.1", 5555, 5555)]
    assert svc["redis"]["image"] == "redis:7"
    assert svc["postgres"]["image"] == "postgres:16"
    for name in LAUNCHBAY_SERVICES:
        s = svc[name]
        assert s["image"] == "launchbay:latest"
        assert s["build"]["args"]["BASE_IMAGE"] == "python:3.12-slim"
        assert s["environment"]["LAUNCHBAY_DATABASE_URL"].startswith(
            "postgresql+psycopg://launchbay:"
        )
        assert s["environment"]["LAUNCHBAY_REDIS_URL"] == "redis://:launchbay@redis:6379/0"
        assert any(v.startswith("launchbay-home:/var/lib/launchbay") for v in s["volumes"]), (
            f"{name} misses the shared home volume"
        )
        assert {"redis", "postgres"} <= set(s["depends_on"])
    assert "--appendonly" in svc["redis"]["command"]
    assert svc["redis"]["command"][svc["redis"]["command"].index("--appendonly") + 1] == "yes"
    # Flower never opens its API to unauthenticated clients; the broker wants a password.
    assert "FLOWER_UNAUTHENTICATED_API" not in svc["flower"]["environment"]
    assert "LAUNCHBAY_TOKEN" in svc["flower"]["environment"]
    assert svc["redis"]["command"][svc["redis"]["command"].index("--requirepass") + 1]


def test_worker_scales(compose_bin: str) -> None:
    worker = resolved(compose_bin)["services"]["worker"]
    assert "container_name" not in worker  # --scale needs generated names
    assert worker.get("ports", []) == []  # and no host port to collide on
    assert worker["command"] == ["worker"]
    assert worker["environment"]["LAUNCHBAY_WORKER_EXECUTORS"] == "builtin,process"
    assert "LAUNCHBAY_RUNNER_ID" not in worker["environment"]  # each makes its own


def test_ports_and_images_come_from_the_environment(compose_bin: str) -> None:
    env = {"LAUNCHBAY_API_PORT": "18001", "LAUNCHBAY_FLOWER_PORT": "15556"}
    svc = resolved(compose_bin, env=env, env_file=REPO / "deploy" / "ci.env")["services"]
    assert published(svc["api"])[0][1:] == (18001, 8000)
    assert published(svc["flower"])[0][1:] == (15556, 5555)
    ci = read_env_file(REPO / "deploy" / "ci.env")
    assert svc["api"]["image"] == ci["LAUNCHBAY_IMAGE"]
    assert svc["redis"]["image"] == ci["LAUNCHBAY_REDIS_IMAGE"]
    assert svc["postgres"]["image"] == ci["LAUNCHBAY_POSTGRES_IMAGE"]
    assert svc["worker"]["build"]["args"]["BASE_IMAGE"] == ci["LAUNCHBAY_BASE_IMAGE"]


def test_token_is_passed_only_when_set(compose_bin: str) -> None:
    # an empty LAUNCHBAY_TOKEN would lock every client out, so unset means absent
    unset = resolved(compose_bin)["services"]["api"]["environment"]
    assert unset.get("LAUNCHBAY_TOKEN") is None
    given = resolved(compose_bin, env={"LAUNCHBAY_TOKEN": "s3cret"})["services"]["api"]
    assert given["environment"]["LAUNCHBAY_TOKEN"] == "s3cret"


def test_docker_override_mounts_the_socket_on_workers_only(compose_bin: str) -> None:
    svc = resolved(
        compose_bin, "docker-compose.yml", "deploy/compose.docker.yml", env={"DOCKER_GID": "4242"}
    )["services"]
    worker = svc["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" in worker["volumes"]
    assert "docker" in worker["environment"]["LAUNCHBAY_WORKER_EXECUTORS"].split(",")
    assert worker["group_add"] == ["4242"]
    home = worker["environment"]["LAUNCHBAY_HOME"]
    for name in ("api", "beat", "flower"):
        assert not any("docker.sock" in v for v in svc[name]["volumes"])
        assert svc[name]["environment"]["LAUNCHBAY_HOME"] == home
        assert f"{home}:{home}:rw" in svc[name]["volumes"]


def test_duration_parser() -> None:
    assert duration_s("45s") == 45
    assert duration_s("1m30s") == 90
    assert duration_s("1500ms") == 1.5
    with pytest.raises(AssertionError):
        duration_s("45")


@pytest.mark.parametrize(
    "files", [("docker-compose.yml",), ("docker-compose.yml", "deploy/compose.docker.yml")]
)
def test_worker_stop_grace_covers_the_drain_and_the_hand_back(
    compose_bin: str, files: tuple[str, ...]
) -> None:
    """`docker-compose stop`/`down` and scaling down send SIGTERM, then SIGKILL after the
    worker's stop_grace_period. It must cover LAUNCHBAY_DRAIN_S (running jobs finish), then
    stopping what still runs (a job's grace_s) and handing it back; the drain is set on the
    worker itself, so a shell variable cannot stretch it past the grace."""
    worker = resolved(compose_bin, *files)["services"]["worker"]
    assert "LAUNCHBAY_DRAIN_S" in worker["environment"], "set the drain next to the grace"
    drain_s = Settings(drain_s=worker["environment"]["LAUNCHBAY_DRAIN_S"]).drain_s
    stretched = resolved(compose_bin, *files, env={"LAUNCHBAY_DRAIN_S": "600"})["services"]
    drain_env = worker["environment"]["LAUNCHBAY_DRAIN_S"]
    assert stretched["worker"]["environment"]["LAUNCHBAY_DRAIN_S"] == drain_env
    grace = duration_s(worker["stop_grace_period"])
    assert grace >= least_stop_grace_s(drain_s), (
        f"worker stop_grace_period {grace} s < drain {drain_s} + job grace {JOB_GRACE_S} "
        f"+ {HANDBACK_MARGIN_S}"
    )
