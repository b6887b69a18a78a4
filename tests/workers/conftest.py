"""Fixtures for the launcher tests: the busybox image, launch contexts, docker cleanup."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.job import DockerSpec, KubernetesSpec, ProcessSpec
from orchestrator.settings import Settings
from tests.support import docker_available, network_lock
from workers.launchers import LaunchContext
from workers.launchers.process import exec_helper

BUSYBOX_IMAGE = "launchbay-test-busybox:latest"
_BUSYBOX = Path("/bin/busybox")
_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny image built here FROM scratch with Debian's static busybox (no pull)."""
    if not docker_available():
        pytest.fail("the Docker engine is not reachable")
    if not _BUSYBOX.exists():
        pytest.fail("Debian's busybox-static is not installed (/bin/busybox)")
    ctx = tmp_path_factory.mktemp("busybox-image")
    shutil.copy2(_BUSYBOX, ctx / "busybox")
    (ctx / "Dockerfile").write_text(_DOCKERFILE)
    with network_lock(tmp_path_factory.getbasetemp(), exclusive=False):  # RUN: a container
        out = subprocess.run(
            ["docker", "build", "-q", "-t", BUSYBOX_IMAGE, str(ctx)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert out.returncode == 0, f"docker build failed: {out.stderr}"
    return BUSYBOX_IMAGE


@pytest.fixture
def launch_settings(tmp_path: Path) -> Settings:
    """Settings for direct launcher tests (no Redis or database is touched)."""
    tmp_path.chmod(0o711)  # (a root worker's jobs run unprivileged: they pass through it)
    s = Settings(home=tmp_path / "home", redis_url="redis://127.0.0.1:1/0", database_url=None)
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def exec_helper_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """launchbay-exec: the one `make` built beside this Python, else built here."""
    built = exec_helper("auto")
    if built is not None:
        return built
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build launchbay-exec (`make` builds it where one is)")
    out = tmp_path_factory.mktemp("exec-helper") / "launchbay-exec"
    source = Path(__file__).parents[2] / "workers" / "launchers" / "launchbay_exec.c"
    subprocess.run([cc, "-O2", "-o", str(out), str(source)], check=True, timeout=120)
    return str(out)


@pytest.fixture(params=["launchbay-exec", "preexec"])
def exec_helper_setting(request: pytest.FixtureRequest) -> str:
    """Each way a process job's step can start: through launchbay-exec (what `make`
    installs), and through a Python preexec_fn (no C compiler): the value of
    LAUNCHBAY_PROCESS_EXEC_HELPER for it."""
    if request.param == "preexec":
        return "none"
    return str(request.getfixturevalue("exec_helper_path"))


MakeCtx = Callable[..., LaunchContext]


@pytest.fixture
def make_ctx(launch_settings: Settings) -> MakeCtx:
    """Build a LaunchContext for a spec dict, with a fresh job id and workspace."""

    def make(spec: dict[str, Any], attempt: int = 1) -> LaunchContext:
        models: dict[str, type[ProcessSpec | DockerSpec | KubernetesSpec]] = {
            "process": ProcessSpec,
            "docker": DockerSpec,
            "kubernetes": KubernetesSpec,
        }
        model = models[spec["executor"]]
        job_id = uuid.uuid4().hex
        ws = launch_settings.workspaces_dir / job_id / f"a{attempt}"
        ws.mkdir(parents=True)
        return LaunchContext(
            job_id=job_id,
            attempt=attempt,
            runner_id="runner-0123456789ab",
            spec=model.model_validate(spec),
            workspace=ws,
            settings=launch_settings,
        )

    return make


def labelled_containers(job_id: str) -> list[str]:
    """Ids of every container (running or not) labelled with ``job_id``."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=launchbay.job_id={job_id}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


@pytest.fixture
def remove_containers_after() -> Iterator[list[str]]:
    """Job ids whose containers a test must not leave behind, even when it fails."""
    job_ids: list[str] = []
    yield job_ids
    for job_id in job_ids:
        ids = labelled_containers(job_id)
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
