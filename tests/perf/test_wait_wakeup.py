"""``GET /jobs/{id}?wait=S`` answers an end from the end's event, without reading the
store again (api/waiting.py), on the in-memory core with a hub that hands over events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.waiting import wait_for_end
from orchestrator.job import JobStatus
from orchestrator.protocol import Verdict
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core

A = "runner-aaaaaaaaaaaa"
FIB = {"executor": "builtin", "type": "fibonacci", "params": {"count": 3}}


class _Sub:
    def __init__(self, messages: list[Callable[[], dict[str, Any]]]) -> None:
        self.messages = messages

    async def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        return self.messages.pop(0)() if self.messages else None


class _Hub:
    """Hands the waiter its messages, each made when the waiter asks for it."""

    def __init__(self, messages: list[Callable[[], dict[str, Any]]]) -> None:
        self.messages = messages

    def subscribe(self, job_id: str, **_: Any) -> _Sub:
        return _Sub(self.messages)

    def unsubscribe(self, sub: _Sub) -> None:
        pass


@pytest.fixture
def core() -> Iterator[MemoryCore]:
    c = memory_core(Settings())
    yield c
    c.close()


def _count_reads(core: MemoryCore) -> list[int]:
    """From now on, ``[n]``: how many times the store was read."""
    reads = [0]
    real_get = core.store.get

    def counting_get(job_id: str) -> Any:
        reads[0] += 1
        return real_get(job_id)

    core.store.get = counting_get  # type: ignore[method-assign]
    return reads


def test_the_end_event_is_the_answer_and_costs_no_second_read(core: MemoryCore) -> None:
    job = core.dispatcher.submit(FIB)
    real_get = core.store.get
    reads = _count_reads(core)

    def end() -> dict[str, Any]:  # (the job ends while the waiter waits)
        assert core.lifecycle.claim(job.id, A, start_at_once=frozenset({"builtin"})) is not None
        done = core.lifecycle.end(job.id, A, 1, Verdict(status=JobStatus.succeeded, result=[1]))
        return {"type": "succeeded", "data": done.public()}

    progress = {"type": "progress", "data": {"percent": 50, "message": "", "attempt": 1}}
    hub = _Hub([lambda: progress, end])
    got = asyncio.run(wait_for_end(core.store, hub, job.id, 5))  # type: ignore[arg-type]
    assert got.model_dump_json() == real_get(job.id).model_dump_json()
    assert got.status == JobStatus.succeeded
    assert reads == [1]  # (the read after subscribing, before the job had ended)


def test_a_resync_still_reads_the_store(core: MemoryCore) -> None:
    job = core.dispatcher.submit(FIB)
    hub = _Hub([lambda: {"type": "resync", "data": {}}])
    got = asyncio.run(wait_for_end(core.store, hub, job.id, 0.05))  # type: ignore[arg-type]
    assert got.status == JobStatus.queued


def test_submit_and_wait_subscribes_before_the_job_exists(core: MemoryCore) -> None:
    """``POST /jobs?wait=``: the submit runs once its job is subscribed to (an end
    published before the submit's thread came back still wakes it), and its answer is
    the first read: no store read at all when the end's event comes."""
    order: list[str] = []
    reads = _count_reads(core)

    class _Ordered(_Hub):
        def subscribe(self, job_id: str, **_: Any) -> _Sub:
            order.append(f"subscribe {job_id}")
            return super().subscribe(job_id)

    def submit() -> Any:
        order.append("submit")
        return core.dispatcher.submit(FIB, job_id="feedfacefeedfacefeedfacefeedface")

    def end() -> dict[str, Any]:
        jid = "feedfacefeedfacefeedfacefeedface"
        assert core.lifecycle.claim(jid, A, start_at_once=frozenset({"builtin"})) is not None
        done = core.lifecycle.end(jid, A, 1, Verdict(status=JobStatus.succeeded, result=[1]))
        return {"type": "succeeded", "data": done.public()}

    hub = _Ordered([end])
    got = asyncio.run(
        wait_for_end(core.store, hub, "feedfacefeedfacefeedfacefeedface", 5, submit=submit)  # type: ignore[arg-type]
    )
    assert order == ["subscribe feedfacefeedfacefeedfacefeedface", "submit"]
    assert got.status == JobStatus.succeeded and got.result == [1]
    assert reads == [0]
