"""Concurrent ``POST /jobs`` made together (api/submits.py, ``Dispatcher.submit_together``):
each request answered as its own submit would be, a refused spec refused alone, a broker
or store failure failing each; a submit that finds nothing under way goes at once.

The core on the in-package fakes and the grouping on a plain event loop (fast tier); many
clients at once on the session's real stack."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

from api.submits import SubmitGroups
from orchestrator.errors import BrokerUnavailable, ParamError
from orchestrator.job import JobStatus
from orchestrator.testing import MemoryCore
from tests.api.test_batch_submit import spec, specs
from tests.support import SqlSent, Stack

pytestmark = pytest.mark.anyio
API = "/api/v1"


# ---------------------------------------------------------------- the core (fast)


def test_a_group_is_one_transaction_answered_in_order(core: MemoryCore) -> None:
    with SqlSent(core.store.engine) as seen:
        made = core.dispatcher.submit_together(specs(*(spec(name=f"g{i}") for i in range(5))))
    assert [m.name for m in made] == [f"g{i}" for i in range(5)]  # type: ignore[union-attr]
    assert seen.sent.count("BEGIN IMMEDIATE") == 1 and seen.sent.count("COMMIT") == 1
    for job in made:
        assert core.store.get(job.id).status == JobStatus.queued  # type: ignore[union-attr]
        assert core.events.types(job.id) == ["created"]  # type: ignore[union-attr]
        assert len(core.celery.sent_for(job.id)) == 1  # type: ignore[union-attr]


def test_a_refused_spec_is_refused_alone(core: MemoryCore) -> None:
    group = specs(
        spec(name="a"),
        spec(name="b", concurrency_key="label:team"),  # (no such label: refused)
        spec(name="c"),
    )
    made = core.dispatcher.submit_together(group)
    assert isinstance(made[1], ParamError) and made[1].field == "concurrency_key"
    assert [m.name for m in (made[0], made[2])] == ["a", "c"]  # type: ignore[union-attr]
    assert core.store.list()[1] == 2  # (the refused one made nothing; the others once)


def test_a_broker_that_is_away_fails_each(core: MemoryCore) -> None:
    core.celery.down = ConnectionError("no broker")
    made = core.dispatcher.submit_together(specs(spec(), spec()))
    assert all(isinstance(m, BrokerUnavailable) for m in made)
    jobs, n = core.store.list()
    assert n == 2 and all(j.status == JobStatus.failed for j in jobs)


def test_one_submit_alone_goes_the_usual_way(core: MemoryCore) -> None:
    (made,) = core.dispatcher.submit_together(specs(spec(name="one")))
    assert core.store.get(made.id).name == "one"  # type: ignore[union-attr]


# ---------------------------------------------------------------- grouping (fast)


class _GatedDispatcher:
    """Records each group; the first waits until ``release`` is set."""

    def __init__(self, core: MemoryCore) -> None:
        self.core = core
        self.flow = core.dispatcher.flow
        self.live_runners = core.dispatcher.live_runners
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit_together(self, group: Sequence[Any]) -> list[Any]:
        self.groups.append([s.name for s in group])
        self.entered.set()
        assert self.release.wait(10)
        return self.core.dispatcher.submit_together(group)


async def test_submits_that_arrive_while_a_group_is_made_go_as_the_next(
    core: MemoryCore,
) -> None:
    gated = _GatedDispatcher(core)
    groups = SubmitGroups(gated)
    answers: dict[str, Any] = {}

    async def submit(name: str) -> None:
        answers[name] = await groups.submit(specs(spec(name=name))[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, "first")
        assert await anyio.to_thread.run_sync(gated.entered.wait, 10)  # (the first is alone)
        for name in ("a", "b", "c"):
            tg.start_soon(submit, name)
        await anyio.wait_all_tasks_blocked()  # (all three wait for the next group)
        gated.release.set()
    assert gated.groups == [["first"], ["a", "b", "c"]]
    assert {n: a.name for n, a in answers.items()} == {n: n for n in ("first", "a", "b", "c")}
    assert all(a.waiting for a in answers.values())  # (why each waits: as POST /jobs says)


async def test_a_refusal_reaches_only_its_own_request(core: MemoryCore) -> None:
    groups = SubmitGroups(core.dispatcher)
    refused = specs(spec(concurrency_key="label:team"))[0]
    with pytest.raises(ParamError):
        await groups.submit(refused)
    ok = await groups.submit(specs(spec(name="fine"))[0])
    assert ok.name == "fine"


# ---------------------------------------------------------------- over HTTP (real stack)


def test_many_clients_at_once_each_get_their_own_job(stack: Stack) -> None:
    names = [f"many-{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: stack.http.post(f"{API}/jobs", json=spec(name=n)), names))
    assert [a.status_code for a in answers] == [201] * len(names)
    made = [a.json() for a in answers]
    assert [m["name"] for m in made] == names
    assert len({m["id"] for m in made}) == len(names)
    for m in made:
        assert stack.http.get(f"{API}/jobs/{m['id']}").json()["name"] == m["name"]
