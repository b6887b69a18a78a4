"""Fixtures for the CLI tests: the installed ``launchbay`` script, run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.services import Supervisor, free_port, wait_http
from orchestrator.settings import Settings
from tests.support import Stack

LAUNCHBAY = Path(sys.executable).parent / "launchbay"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str

    def __repr__(self) -> str:  # what a failed assert shows
        return (
            f"launchbay {' '.join(self.argv)} -> {self.code}\n--- stdout\n{self.out}"
            f"\n--- stderr\n{self.err}"
        )

    def assert_one_error_line(self) -> None:
        """A refusal is one readable ``error:`` line on stderr and never a traceback."""
        assert self.code != 0, self
        assert "Traceback" not in self.err and "Traceback" not in self.out, self
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), self


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any LAUNCHBAY_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHBAY_")}
    env.update(extra)
    return env


Cli = Callable[..., Result]


def make_cli(url: str, token: str | None = None) -> Cli:
    def cli(
        *argv: str, timeout: float = 90, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Result:
        extra = {
            "LAUNCHBAY_URL": url,
            **({"LAUNCHBAY_TOKEN": token} if token else {}),
            **(env or {}),
        }
        proc = subprocess.run(
            [str(LAUNCHBAY), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(**extra),
            input=stdin,
            check=False,
        )
        return Result(list(argv), proc.returncode, proc.stdout, proc.stderr)

    return cli


@pytest.fixture(scope="session")
def cli_script() -> Path:
    if not LAUNCHBAY.exists():
        pytest.fail(f"the launchbay script is not installed at {LAUNCHBAY} (make run)")
    return LAUNCHBAY


@pytest.fixture
def cli(stack: Stack, cli_script: Path) -> Cli:
    """``cli("jobs", "--json")`` runs the installed script against the session stack."""
    return make_cli(stack.url)


@pytest.fixture
def popen_cli(stack: Stack, cli_script: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start the script without waiting (for Ctrl-C tests); killed at teardown if alive."""
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(cli_script), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(LAUNCHBAY_URL=stack.url),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


@dataclass
class PrivateApi:
    """An API alone (no worker) with its own home and a bearer token."""

    url: str
    token: str
    settings: Settings


@pytest.fixture(scope="module")
def private_api(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[PrivateApi]:
    home = tmp_path_factory.mktemp("cli-private-home")
    settings = Settings(
        home=home, redis_url=valkey_url, api_port=free_port(), token="cli-test-token"
    )
    settings.ensure_dirs()
    sup = Supervisor(settings, log_dir=home / "service-logs", say=lambda _l: None)
    sup.add_stack(worker=False, beat=False, flower=False)
    sup.start()
    try:
        url = f"http://127.0.0.1:{settings.api_port}"
        wait_http(f"{url}/api/v1/healthz", timeout=60, alive=lambda: sup.poll_dead() is None)
        yield PrivateApi(url, "cli-test-token", settings)
    finally:
        sup.stop()
