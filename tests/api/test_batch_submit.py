"""Submitting: the one-job path writes once and answers what the store holds; the batch
(``POST /jobs/batch``, issue 17) validates every spec first, inserts them in one
transaction, sends their messages together and gives each its ``created`` event.

The core's rules run on the in-package fakes (fast tier); the HTTP answers on an
in-process app over a real Valkey (no worker: the jobs stay queued)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from orchestrator.errors import BrokerUnavailable, ParamError
from orchestrator.job import JobSpec, JobStatus, utcnow
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.testing import MemoryCore

with warnings.catch_warnings():  # (starlette would rather have httpx2; httpx works)
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SPEC: TypeAdapter[Any] = TypeAdapter(JobSpec)
API = "/api/v1"


def spec(**extra: Any) -> dict[str, Any]:
    return {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}, **extra}


def specs(*docs: dict[str, Any]) -> list[Any]:
    return [SPEC.validate_python(d) for d in docs]


def total(core: MemoryCore) -> int:
    return core.store.list(limit=1)[1]


# ---------------------------------------------------------------- the core (fast)


def test_create_answers_exactly_what_reading_the_row_gives(core: MemoryCore) -> None:
    (s,) = specs(
        spec(
            name="n",
            labels={"team": "a"},
            secrets={"TOKEN": "s3"},
            run_at=(utcnow() + timedelta(hours=1)).isoformat(),
            match_timeout_s=30,
            priority=3,
        )
    )
    made = core.store.create(s, rerun_of="earlier")
    read = core.store.get(made.id)
    assert made == read
    assert made.model_dump_json() == read.model_dump_json()
    assert read.spec.secrets == {"TOKEN": "s3"} and "s3" not in made.model_dump_json()
    assert made.not_before is not None and made.match_deadline is not None


def test_every_backend_answers_an_insert_as_it_reads_it_back(backend_url: str) -> None:
    store = JobStore(backend_url)
    try:
        first = store.create(SPEC.validate_python(spec(secrets={"K": "v"})))
        assert first == store.get(first.id)
        batch = specs(spec(name="a"), spec(depends_on=[first.id], labels={"x": "y"}), spec())
        made = store.create_many(batch, match_timeout_s=60)
        assert [j.name for j in made] == ["a", None, None] and made[1].hold == "deps"
        assert made == [store.get(j.id) for j in made]
    finally:
        store.dispose()


def test_a_batch_is_made_in_order_each_sent_once_with_its_created_event(
    core: MemoryCore,
) -> None:
    jobs = core.dispatcher.submit_many(specs(*(spec(name=f"j{i}") for i in range(5))))
    assert [j.name for j in jobs] == [f"j{i}" for i in range(5)]
    assert all(j.status == JobStatus.queued for j in jobs)
    for job in jobs:
        assert core.store.get(job.id) == job.model_copy(update={"warnings": []})
        (sent,) = core.celery.sent_for(job.id)
        assert sent.task_id == job.task_id and sent.args == (job.id, 1)
        assert core.events.types(job.id) == ["created"]


def test_a_batch_refused_by_a_flow_rule_names_the_spec_and_makes_nothing(
    core: MemoryCore,
) -> None:
    bad_key = spec(concurrency_key="label:shard")  # (no such label)
    with pytest.raises(ParamError) as refused:
        core.dispatcher.submit_many(specs(spec(), bad_key, spec()))
    assert refused.value.field == "jobs[1].concurrency_key"
    assert total(core) == 0 and core.celery.sent == []


def test_an_unknown_dependency_rolls_the_whole_batch_back(core: MemoryCore) -> None:
    first = core.dispatcher.submit(SPEC.validate_python(spec()))
    batch = specs(spec(), spec(depends_on=[first.id]), spec(depends_on=["nope"]))
    with pytest.raises(ParamError) as refused:
        core.dispatcher.submit_many(batch)
    assert refused.value.field == "jobs[2].depends_on" and "nope" in str(refused.value)
    assert total(core) == 1 and len(core.celery.sent) == 1


def test_a_batch_holds_a_job_on_its_dependency_and_sends_the_rest(core: MemoryCore) -> None:
    first = core.dispatcher.submit(SPEC.validate_python(spec()))
    free, held = core.dispatcher.submit_many(specs(spec(), spec(depends_on=[first.id])))
    assert held.hold == "deps" and free.hold is None
    assert core.celery.sent_for(held.id) == [] and len(core.celery.sent_for(free.id)) == 1
    assert core.events.types(held.id) == ["created"]


def test_a_batch_takes_no_sessions(core: MemoryCore) -> None:
    with pytest.raises(ParamError) as refused:
        core.dispatcher.submit_many(
            specs(spec(), {"executor": "process", "command": ["true"], "session": {}})
        )
    assert refused.value.field == "jobs[1].session" and total(core) == 0


def test_a_broker_that_is_away_fails_the_batch_after_its_creation(
    core: MemoryCore,
) -> None:
    """Each job's created event is staged before its message (so no runner's claim can
    precede it): the jobs exist, were created, and failed for want of a broker."""
    core.celery.down = ConnectionError("no broker")
    with pytest.raises(BrokerUnavailable):
        core.dispatcher.submit_many(specs(spec(), spec()))
    jobs, n = core.store.list()
    assert n == 2
    for job in jobs:
        assert job.status == JobStatus.failed and "broker unavailable" in (job.error or "")
        assert core.events.types(job.id) == ["created", "failed"]


# ---------------------------------------------------------------- over HTTP (Valkey)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"access_log": False}))) as c:
        yield c


def test_the_submit_answer_is_what_the_job_reads_back(client: TestClient) -> None:
    r = client.post(f"{API}/jobs", json=spec(name="one", labels={"a": "b"}))
    assert r.status_code == 201, r.text
    made = r.json()
    got = client.get(f"{API}/jobs/{made['id']}").json()
    assert made["progress"] == {"percent": 0.0, "message": ""} and made["waiting"]
    assert made == {**got, "warnings": made["warnings"]}


def test_the_batch_answers_its_jobs_in_order(client: TestClient) -> None:
    r = client.post(f"{API}/jobs/batch", json={"jobs": [spec(name=f"b{i}") for i in range(32)]})
    assert r.status_code == 201, r.text
    jobs = r.json()["jobs"]
    assert [j["name"] for j in jobs] == [f"b{i}" for i in range(32)]
    assert all(j["status"] == "queued" and j["waiting"] for j in jobs)
    again = client.get(f"{API}/jobs/{jobs[31]['id']}").json()
    assert again == {**jobs[31], "warnings": []}


def test_a_bad_spec_is_named_by_its_place_and_nothing_is_made(client: TestClient) -> None:
    before = client.get(f"{API}/jobs", params={"limit": 1}).json()["total"]
    bad = [spec(), spec(), spec(params={"seconds": "soon"}), {"executor": "nope"}]
    r = client.post(f"{API}/jobs/batch", json={"jobs": bad})
    assert r.status_code == 422, r.text
    fields = [f["field"] for f in r.json()["fields"]]
    assert fields[0].startswith("jobs[2].params") and "jobs[3].executor" in fields, fields
    assert r.json()["error"].startswith("invalid request: jobs[2].params")
    assert client.get(f"{API}/jobs", params={"limit": 1}).json()["total"] == before


def test_the_batch_is_bounded_and_takes_no_idempotency_key(client: TestClient) -> None:
    body: dict[str, Any]
    for body in ({"jobs": []}, {"jobs": [spec()] * 501}, {"specs": [spec()]}):
        assert client.post(f"{API}/jobs/batch", json=body).status_code == 422
    r = client.post(f"{API}/jobs/batch", json={"jobs": [spec()]}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key", r.text
    assert client.get(f"{API}/jobs/batch").status_code == 405


def test_the_batch_is_in_the_openapi_document(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"][f"{API}/jobs/batch"]["post"]
    assert op["operationId"] == "jobs-create-batch"
    assert {"201", "413", "422"} <= set(op["responses"])
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/JobBatch")
