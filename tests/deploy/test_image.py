"""What the image carries besides the package (deploy/Dockerfile, built by
deploy/ci-images.sh): the process launcher's helper, found and working. Real Docker."""

from __future__ import annotations

import subprocess

from tests.deploy.conftest import ComposeSetup

HELPER = "/opt/launchbay/bin/launchbay-exec"


def _run(image: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    # (--network none: no interface comes or goes, which would disturb the browser tests)
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", entrypoint, image, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_image_starts_process_jobs_through_its_helper(compose_setup: ComposeSetup) -> None:
    image = compose_setup.images["LAUNCHBAY_IMAGE"]
    found = _run(
        image,
        "/opt/launchbay/bin/python",
        "-c",
        "from workers.launchers.process import exec_helper; print(exec_helper('auto'))",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == HELPER
    # The helper itself, as the image's unprivileged user: the mark, then the program.
    marked = _run(
        image, HELPER, "-1", "1000", "-", "-", "0", "--", "cat", "/proc/self/oom_score_adj"
    )
    assert (marked.returncode, marked.stdout.strip()) == (0, "1000"), marked.stderr
