"""Waiting for a job's end without polling: ``GET /jobs/{id}?wait=S``, and ``POST
/jobs?wait=S`` (submit and wait in one request: the job is subscribed to before it exists).

The request subscribes to the job on the process's one fan-out hub (``api/fanout.py``)
*before* it reads the store, so an end that lands between the read and the wait still
wakes it. A job that reports progress every second costs no store reads while it runs.
The answer is always the job as the store committed it: the first read, a read after a
resync (the hub's subscription was lost), or the copy of the row that the end's
compare-and-set committed, which its terminal event carries. That copy needs no read: an
ended job's row changes no more (a rerun is a new job), and a read costs this request a
thread hop and the store's time while the client waits (~0.5 ms of its round trip).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from api.fanout import Dropped, Hub
from api.follower import TERMINAL_EVENTS
from orchestrator.job import EventType, Job
from orchestrator.settings import Settings
from orchestrator.store import JobStore

MAX_WAIT_S = 30.0  # (as the agents' long poll: one answer within any proxy's timeout)


def held_s(settings: Settings, wait: float) -> float:
    """How long a waiting request (``?wait=``, an agent's long poll) is held: as asked, up
    to ``LAUNCHBAY_LONG_POLL_MAX_S``."""
    return min(wait, settings.long_poll_max_s)


_WAKE = TERMINAL_EVENTS | {EventType.resync}


async def wait_for_end(
    store: JobStore,
    hub: Hub,
    job_id: str,
    wait_s: float,
    *,
    submit: Callable[[], Job] | None = None,
) -> Job:
    """The job once it has ended, or as it stands after ``wait_s`` seconds (an unknown id
    raises JobNotFound at once: the first read). With ``submit`` (``POST /jobs?wait=``,
    the job to be made with id ``job_id``): it runs in a thread once the job is
    subscribed to, and the job it answers is the first read."""
    first: Callable[[], Job] = submit or functools.partial(store.get, job_id)
    if wait_s <= 0:
        return await run_in_threadpool(first)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        sub = hub.subscribe(job_id, logs=False, label="wait")
        try:
            job = await run_in_threadpool(first)
            first = functools.partial(store.get, job_id)  # (a second round reads)
            while not job.ended:
                left = deadline - loop.time()
                if left <= 0:
                    return job
                msg = await sub.next(left)
                if msg is None:  # the wait ran out: the job as it stands
                    return await run_in_threadpool(store.get, job_id)
                if msg.get("type") in TERMINAL_EVENTS and msg.get("data"):
                    return Job.model_validate(msg["data"])  # (as committed: see above)
                if msg.get("type") in _WAKE:
                    job = await run_in_threadpool(store.get, job_id)
            return job
        except Dropped:  # (queue full: cannot happen at one job's pace, but re-read if so)
            continue
        finally:
            hub.unsubscribe(sub)
