"""Fixtures for the deploy tests: the compose stack's prerequisites.

Compose tests need ``docker-compose`` (v1), a Docker engine and the images that
``deploy/ci.env`` names (built by ``deploy/ci-images.sh``). Where any is missing they
skip, unless ``LAUNCHBAY_REQUIRE_COMPOSE=1`` (CI), where they fail and say what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.job import BuiltinSpec
from tests.support import docker_available

REPO = Path(__file__).resolve().parents[2]
REQUIRE_COMPOSE = os.environ.get("LAUNCHBAY_REQUIRE_COMPOSE") == "1"
IMAGE_VARS = ("LAUNCHBAY_IMAGE", "LAUNCHBAY_REDIS_IMAGE", "LAUNCHBAY_POSTGRES_IMAGE")

# A draining worker's last seconds after LAUNCHBAY_DRAIN_S: stopping the jobs still running
# (SIGTERM, a job's grace_s, SIGKILL), handing them back, and Celery's own exit (closing its
# pool and connections): measured on a loaded 2-core machine, 3 s for an idle worker, under
# 1 s after a process job's hand-back, about 10 s after a built-in job's (once over 13 s).
# The SIGKILL that compose's stop_grace_period and Kubernetes' terminationGracePeriodSeconds
# schedule must come later.
JOB_GRACE_S = float(BuiltinSpec.model_fields["grace_s"].default)
HANDBACK_MARGIN_S = 15.0


def least_stop_grace_s(drain_s: float) -> float:
    """The shortest SIGTERM-to-SIGKILL time that lets a worker drain and hand back."""
    return drain_s + JOB_GRACE_S + HANDBACK_MARGIN_S


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def duration_s(value: str | float) -> float:
    """A compose duration ("45s", "1m30s", "1.5s") in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose env file (comments and blanks ignored)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ComposeSetup:
    """Where the compose file and env file are, and the images the env file names."""

    binary: str
    compose_file: Path
    env_file: Path
    images: dict[str, str]


def _missing(env_file: Path) -> tuple[str | None, dict[str, str]]:
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (apt-get install docker-compose)", {}
    if not docker_available():
        return "no Docker engine", {}
    if not env_file.exists():
        return f"{env_file} does not exist", {}
    values = read_env_file(env_file)
    images = {k: os.environ.get(k) or values[k] for k in IMAGE_VARS if k in values}
    for var, image in images.items():
        found = (
            subprocess.run(
                ["docker", "image", "inspect", image], capture_output=True, check=False, timeout=30
            ).returncode
            == 0
        )
        if not found:
            return f"image {image} ({var}) is missing; run deploy/ci-images.sh", images
    return None, images


@pytest.fixture(scope="session")
def compose_setup() -> ComposeSetup:
    """The compose prerequisites, or a skip (a failure when LAUNCHBAY_REQUIRE_COMPOSE=1)."""
    env_file = Path(os.environ.get("LAUNCHBAY_COMPOSE_ENV_FILE", REPO / "deploy" / "ci.env"))
    why, images = _missing(env_file)
    if why is not None:
        if REQUIRE_COMPOSE:
            pytest.fail(f"compose test cannot run: {why} (LAUNCHBAY_REQUIRE_COMPOSE=1)")
        pytest.skip(f"{why} (set LAUNCHBAY_REQUIRE_COMPOSE=1 to fail instead)")
    return ComposeSetup(
        shutil.which("docker-compose") or "docker-compose",
        REPO / "docker-compose.yml",
        env_file,
        images,
    )
