"""The typed HTTP client (orchestrator/client.py) against the real stack."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.client import (
    Conflict,
    InvalidRequest,
    Job,
    LaunchbayClient,
    NotFound,
    ServerUnreachable,
)
from orchestrator.job import JobStatus
from orchestrator.services import free_port
from tests.support import Stack


@pytest.fixture
def client(stack: Stack) -> Iterator[LaunchbayClient]:
    with LaunchbayClient(stack.url) as c:
        yield c


def test_submit_read_logs_and_artifacts(
    client: LaunchbayClient, stack: Stack, tmp_path: Path
) -> None:
    job = client.submit(
        {
            "executor": "process",
            "artifacts": ["a.txt"],
            "command": ["sh", "-c", "for i in 1 2 3; do echo n$i; done; printf abc > a.txt"],
        }
    )
    assert isinstance(job, Job) and job.status == JobStatus.queued
    stack.wait_status(job.id, timeout=60)
    done = client.job(job.id)
    assert done.status == JobStatus.succeeded
    assert [ln.line for ln in client.iter_logs(job.id, page=2)] == ["n1", "n2", "n3"]
    page = client.logs(job.id, since=1, limit=1)
    assert [ln.line for ln in page.items] == ["n2"] and page.next_since == 2
    assert [a.name for a in client.artifacts(job.id)] == ["a.txt"]
    size, sha = client.download_to(job.id, "a.txt", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_bytes() == b"abc"
    assert size == 3 and sha == hashlib.sha256(b"abc").hexdigest()
    assert job.id in [j.id for j in client.jobs(status=["succeeded"], limit=200).items]


def test_submit_and_wait_in_one_request(client: LaunchbayClient) -> None:
    spec = {"executor": "builtin", "type": "fibonacci", "params": {"count": 4}}
    job = client.submit(spec, wait=30)
    assert job.status == JobStatus.succeeded and job.result["numbers"] == [1, 1, 2, 3]
    with pytest.raises(InvalidRequest) as info:
        client.submit(spec, wait=31)
    assert [f["field"] for f in info.value.fields] == ["wait"]


def test_errors_are_typed(client: LaunchbayClient, stack: Stack) -> None:
    with pytest.raises(NotFound, match="not found"):
        client.job("f" * 32)
    with pytest.raises(InvalidRequest) as bad:
        client.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 0}})
    assert bad.value.status == 422
    assert [f["field"] for f in bad.value.fields] == ["params.seconds"]
    job = client.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 3}})
    stack.wait_status(job.id, timeout=30)
    with pytest.raises(Conflict):
        client.cancel(job.id)
    assert any("builtin" in w.executors for w in client.workers())


def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with LaunchbayClient(url, timeout=5) as c, pytest.raises(ServerUnreachable) as err:
        c.healthz()
    assert str(err.value).startswith(f"cannot reach Launchbay at {url}")
