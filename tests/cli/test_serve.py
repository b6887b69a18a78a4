"""The service commands refuse bad settings with one line and exit 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["worker", "--executors", "builtin,teleport"], {}, "LAUNCHBAY_WORKER_EXECUTORS"),
        (["worker"], {"LAUNCHBAY_WORKER_EXECUTORS": "bogus"}, "unknown executor"),
        (["api"], {"LAUNCHBAY_API_PORT": "eighty"}, "LAUNCHBAY_API_PORT"),
        (["up"], {"LAUNCHBAY_LEASE_S": "-1"}, "LAUNCHBAY_LEASE_S"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    args: list[str], env: dict[str, str], needle: str, tmp_path: Path, cli_script: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
    r = subprocess.run(
        [str(cli_script), *args],
        env={**clean, "LAUNCHBAY_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
