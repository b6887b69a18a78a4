"""Schemathesis over the whole OpenAPI document, with the bearer token: no server errors,
every answer as documented (status code, content type, headers, body schema), and
``OPTIONS`` / unsupported methods answered truthfully.

The API under test is a process of its own, with a token, its own database and its own
Valkey database, and no worker: the jobs schemathesis submits stay queued (no random argv
ever runs) and nothing it does touches the session stack's jobs. The run is deterministic
(``--generation-deterministic``) and bounded (``--max-examples``): under a minute here.

Every operation is tested but two: ``GET /jobs/{id}/events`` and ``/jobs/{id}/logs/stream``
follow a job until it ends, and schemathesis hands them the ids of jobs it submitted,
which never run here: streams that never end (each would wait out the request timeout).
tests/api/test_limits.py and test_streams.py cover their refusals and answers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.services import free_port
from tests.support import Stack, private_api

TOKEN = "s3cret-fuzz-token"
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# (and the firehose, GET /api/v1/events: every job's events, for as long as one listens)
STREAMS_THAT_NEVER_END = r"(/jobs/\{job_id\}/(events|logs/stream)|/v1/events)$"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzzed_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("fuzz-home")
    settings = stack.settings.model_copy(
        update={
            "home": home,
            "database_url": None,  # SQLite in its own home
            "redis_url": stack.settings.effective_redis_url.rsplit("/", 1)[0] + "/5",
            "api_port": free_port(),
            "token": TOKEN,
            # Nothing runs here: every ?wait= and agent poll would be held its whole wait.
            "long_poll_max_s": 0.5,
        }
    )
    settings.ensure_dirs()
    with private_api(settings, home / "service-logs") as url:
        yield url


# The run's own bound is the subprocess timeout below. (Before this API's waits were capped
# at 0.5 s, every ?wait= and agent long poll it was sent was held its whole wait: 173 s.)
@pytest.mark.timeout(660)
def test_the_whole_api_answers_as_documented(fuzzed_api: str, tmp_path: Path) -> None:
    assert SCHEMATHESIS.exists(), "pip install -e '.[dev]' (schemathesis is pinned there)"
    argv = [
        str(SCHEMATHESIS),
        "run",
        f"{fuzzed_api}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--exclude-path-regex",
        STREAMS_THAT_NEVER_END,
        "--max-examples",
        "10",
        "--generation-deterministic",
        # One worker: with two threads, Hypothesis's ast.parse of a filter's lambda can
        # race CPython 3.11's shared AST recursion counter ("SystemError: AST constructor
        # recursion depth mismatch", python/cpython#106905), a runtime error that fails the
        # run. The run takes as long with one (32 s alone on this host, either way).
        "--workers",
        "1",
        "--request-timeout",
        "40",  # (the agents' long poll may wait 30 s)
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout + run.stderr
    summary = [ln for ln in out.splitlines() if re.match(r"^=+ .* in [\d.]+s =+$", ln)]
    print(out[-3000:])
    assert run.returncode == 0, out[-20000:]
    assert summary and "failure" not in summary[-1] and "error" not in summary[-1], summary
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 30, out[-3000:]  # (of 32: all but the 2 streams)
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 1000, out[-3000:]
