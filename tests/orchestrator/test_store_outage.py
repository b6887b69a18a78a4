"""The store goes away mid-run (PostgreSQL stopped): the API answers 503 and keeps
nothing it cannot store; a running job keeps running and its end is written once the
store is back.

A PostgreSQL server of the test's own (stopping the session's would stall other tests),
a whole stack on it, real processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.pgcluster import PostgresCluster, pg_bindir
from tests.postgres import _unavailable
from tests.support import start_stack, stop_stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
API = "/api/v1"
_OWN_DB = 7  # a Redis database of its own: the session stack's worker must not see it


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    bindir = pg_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    c = PostgresCluster(bindir)  # type: ignore[arg-type]
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_a_store_outage_answers_503_and_loses_no_job(
    cluster: PostgresCluster, valkey_url: str, tmp_path: Path
) -> None:
    from tests.conftest import stack_settings

    url = cluster.url_for(cluster.create_database())
    settings = stack_settings(
        tmp_path / "home",
        valkey_url.rsplit("/", 1)[0] + f"/{_OWN_DB}",
        database_url=url,
        lease_s=30,  # the outage is shorter: the job stays its runner's throughout
    )
    settings.ensure_dirs()
    stack = start_stack(settings)
    try:
        stack.wait_for_workers(1)
        marker = tmp_path / "ran"
        job = stack.submit(
            {"executor": "process", "command": ["sh", "-c", f"sleep 3; echo once >> {marker}"]}
        )
        stack.wait_status(job["id"], "running", timeout=30)

        cluster.halt()
        try:
            r = stack.http.post(
                f"{API}/jobs", json={"executor": "builtin", "type": "echo_delay", "params": {}}
            )
            assert r.status_code == 503, r.text
            assert "job store is unavailable" in r.json()["error"]
            assert r.headers["retry-after"] == "5"
            assert stack.http.get(f"{API}/jobs/{job['id']}").status_code == 503
            # The job finishes while the store is down: its end waits for the store.
            wait_until(marker.exists, timeout=30, what="the job to finish its work")
        finally:
            cluster.resume()

        done = stack.wait_status(job["id"], timeout=60)
        assert (done["status"], done["attempt"]) == ("succeeded", 1)
        assert marker.read_text() == "once\n"  # it ran once
        # Nothing refused during the outage was kept.
        with httpx.Client(base_url=stack.url, timeout=10) as c:
            assert c.get(f"{API}/jobs").json()["total"] == 1
    finally:
        stop_stack(stack)
