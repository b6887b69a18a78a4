"""Chaos: dying workers, API, beat and Valkey never lose, strand or double-run a job.

A stack of the test's own — a persistent Valkey, SQLite in its own ``LAUNCHBAY_HOME`` (or,
in the second run, a PostgreSQL database of its own on the session's server), the API,
beat and three workers, each started separately in its own process group — runs at
least 150 mixed jobs: process jobs that append ``start <attempt> <ns>`` and ``end <attempt>
<ns>`` to a marks file of their own, built-ins, and process jobs that fail their first
attempt and succeed on the retry after a backoff. Meanwhile, on a schedule drawn from one
seed, worker process groups are SIGKILLed and started again, the API and beat are each
SIGKILLed once and started again, and Valkey is SIGKILLed once and started again on its
port and data. Jobs are submitted through the API all along.

Then every job submitted (a 201, or a job the store holds after an answer the API died
before giving) must end ``succeeded``; none may stay queued, claimed or running; in every
job's marks no attempt's end follows a later attempt's start; and once the stack is
stopped no process naming the test's folder (job processes carry it in their
environment, services in their command line or environment) may be left.

Replay: ``LAUNCHBAY_CHAOS_SEED=<seed> pytest -s tests/test_chaos.py``; a longer run is
``make chaos`` (``LAUNCHBAY_CHAOS_JOBS``, ``LAUNCHBAY_CHAOS_S``); to bisect a failure,
``LAUNCHBAY_CHAOS_SKIP=valkey`` (or ``api``, ``beat``) leaves that fault out. The pauses
between chaos events and between submits are the test's schedule; every wait for a
condition is a bounded ``wait_until``.
"""

from __future__ import annotations

import os
import random
import shlex
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.broker import held_task_ids
from orchestrator.events import connect
from orchestrator.routing import worker_queues
from orchestrator.store import JobStore
from tests.chaos_support import (
    ChaosStack,
    Marks,
    Planned,
    Shared,
    Submitter,
    all_jobs,
    processes_naming,
)
from tests.support import wait_until

API = "/api/v1"
ACTIVE = ("queued", "claimed", "running")
WORKERS = ("worker-1", "worker-2", "worker-3")

JOBS = int(os.environ.get("LAUNCHBAY_CHAOS_JOBS") or 150)
CHAOS_S = float(os.environ.get("LAUNCHBAY_CHAOS_S") or 60)
SUBMIT_S = 0.75 * CHAOS_S  # submits are spread over this much of the chaos
DRAIN_S = 120 + 0.1 * JOBS  # after the last chaos event, every job must have ended by then
# For bisecting a failure only: leave out some of the once-only faults (api, beat, valkey);
# the rest of the seed's schedule stays the same.
SKIP = {w.strip() for w in os.environ.get("LAUNCHBAY_CHAOS_SKIP", "").split(",") if w.strip()}

# Short timings, so a lost runner is noticed and its job re-queued within seconds.
STACK = {
    "worker_executors": ["builtin", "process"],
    "worker_concurrency": 4,
    "lease_s": 3,
    "reconcile_interval_s": 1,
    "runner_heartbeat_s": 1,
    "resend_after_s": 5,
    "cancel_fallback_s": 5,
    "process_sweep_s": 5,
    "broker_visibility_s": 5,  # dropped by settings_for where this tree lacks it
}
# Valkey is SIGKILLed, the harsher fault, with appendfsync always: every write it
# acknowledged is on disk, so a restart loses nothing a client was told was done.
VALKEY_FSYNC = "always"
VALKEY_HARD_KILL = True


# ---------------------------------------------------------------------- the jobs


def _marking(marks: Path, flags: Path, sleep_s: float, *, fail_first: bool) -> list[str]:
    """A shell command that marks its attempt's start and end, and in between logs and
    reports progress as real jobs do; with ``fail_first``, the first attempt to get past
    its sleep leaves a flag and exits 1, later ones exit 0."""
    m = f"{shlex.quote(str(marks))}/$LAUNCHBAY_JOB_ID"
    f = f"{shlex.quote(str(flags))}/$LAUNCHBAY_JOB_ID"
    stamp = "$LAUNCHBAY_ATTEMPT $(date +%s%N)"
    fail = f'if [ ! -e "{f}" ]; then : > "{f}"; rc=1; fi; ' if fail_first else ""
    script = (
        f'echo "start {stamp}" >> "{m}"; echo "attempt $LAUNCHBAY_ATTEMPT of a chaos job"; '
        f"echo ::progress 10 started; sleep {sleep_s:.2f}; echo ::progress 90 slept; rc=0; "
        f'{fail}echo "end {stamp}" >> "{m}"; echo "exiting $rc"; exit $rc'
    )
    return ["sh", "-c", script]


def _plan(rng: random.Random, n: int, marks: Path, flags: Path) -> list[Planned]:
    """``n`` jobs, every one of which can end ``succeeded``."""
    kinds = rng.choices(
        ["marks", "retry", "countdown", "fibonacci", "echo_delay"],
        weights=[45, 20, 12, 11, 12],
        k=n,
    )
    # The loss budget is policy, not what this test is about: chaos here kills far more
    # often than production would, so no job may fail only because it was unlucky.
    common = {"max_lost": 10, "grace_s": 2}
    plan = []
    for i, kind in enumerate(kinds):
        spec: dict[str, Any]
        if kind == "marks":
            cmd = _marking(marks, flags, rng.uniform(0.2, 3.0), fail_first=False)
            spec = {"executor": "process", "command": cmd}
        elif kind == "retry":
            cmd = _marking(marks, flags, rng.uniform(0.2, 1.5), fail_first=True)
            spec = {
                "executor": "process",
                "command": cmd,
                "max_attempts": 2,
                "retry_backoff_s": round(rng.uniform(1, 3), 2),
            }
        elif kind == "countdown":
            spec = {"type": "countdown", "params": {"seconds": rng.randint(1, 3)}}
        elif kind == "fibonacci":
            spec = {"type": "fibonacci", "params": {"count": rng.randint(10, 500)}}
        else:
            params = {"message": f"chaos {i}", "delay": rng.randint(1, 2)}
            spec = {"type": "echo_delay", "params": params}
        if "type" in spec:
            spec["executor"] = "builtin"
        plan.append(Planned(i, kind, {**spec, **common}))
    return plan


# ---------------------------------------------------------------------- the chaos


def _schedule(rng: random.Random, chaos_s: float) -> list[tuple[float, str, str]]:
    """``(at_s, kill|start, service)``: a worker killed every 3-8 s and started again after
    0.5-4 s; the API, beat and Valkey killed once each and started again."""
    events: list[tuple[float, str, str]] = []
    back_at = dict.fromkeys(WORKERS, 0.0)
    t = rng.uniform(2, 5)
    while t < chaos_s - 4:
        up = [w for w in WORKERS if back_at[w] <= t]
        if up:
            w = rng.choice(up)
            back_at[w] = t + rng.uniform(0.5, 4)
            events += [(t, "kill", w), (back_at[w], "start", w)]
        t += rng.uniform(3, 8)
    for what, pause in (("api", (0.5, 3)), ("beat", (1, 6)), ("valkey", (0.5, 3))):
        at = rng.uniform(0.15, 0.7) * chaos_s
        back = at + rng.uniform(*pause)
        if what not in SKIP:
            events += [(at, "kill", what), (back, "start", what)]
    return sorted(events)


def _chaos(stack: ChaosStack, events: list[tuple[float, str, str]], shared: Shared) -> None:
    """Carry out the schedule; start again any service that exits on its own (as a
    supervisor would), recording it; keep watching until told to stop."""

    def watch_until(at: float) -> bool:
        while (left := at - stack.now()) > 0:
            if shared.stop.wait(min(left, 0.2)):
                return False
            for fault in stack.unexpected_exits():
                print(f"  +{fault.at_s:6.1f} s  {fault.target} exited on its own ({fault.detail})")
                shared.problems.append(
                    f"{fault.target} exited on its own at +{fault.at_s:.1f} s ({fault.detail}); "
                    "started again here as a supervisor would (`launchbay up` stops everything "
                    f"instead); from its log:\n{stack.exit_evidence(fault.target)}"
                )
                if fault.target == "api":
                    shared.api_up.clear()
                stack.start(fault.target)
        return True

    for at, action, target in events:
        if not watch_until(at):
            return
        print(f"  +{stack.now():6.1f} s  {action} {target}", flush=True)
        if target == "valkey":
            if action == "kill":
                stack.stop_valkey(hard=VALKEY_HARD_KILL)
            else:
                stack.start_valkey()
        elif action == "kill":
            if target == "api":
                shared.api_up.clear()
            stack.kill(target, "worker" if target.startswith("worker") else target)
        else:
            stack.start(target)
    shared.schedule_done.set()
    watch_until(float("inf"))


# ---------------------------------------------------------------------- evidence


def _describe(
    stack: ChaosStack,
    job: dict[str, Any],
    record: dict[str, Any],
    marks_dir: Path,
    held: set[str] | None = None,
) -> str:
    """Everything known about one job: its record, attempts, marks and log lines."""
    keys = ("status", "attempt", "losses", "handbacks", "runner_id", "task_id", "not_before")
    lines = [f"    job: { ({k: job.get(k) for k in keys}) } error={job.get('error')!r}"]
    if held is not None:
        lines.append(f"    the broker holds its task id: {job.get('task_id') in held}")
    lines.append("    attempts:")
    lines += [
        f"      {a['attempt']}: {a['runner_id']} claimed {_hms(a['claimed_at'])} started "
        f"{_hms(a['started_at'])} ended {_hms(a['ended_at'])} -> {a['outcome']} "
        f"(exit {a['exit_code']}) {a['error']!r}"
        for a in record.get("attempts", [])
    ]
    lines.append(f"    marks: {Marks.read(marks_dir / job['id']).text() or '-'}")
    lines += [f"    {line}" for line in stack.log_lines(job["id"], limit=25)]
    return "\n".join(lines)


def _broker_held(stack: ChaosStack) -> set[str] | None:
    """Task ids the broker holds (waiting or taken), or None if Valkey cannot say."""
    try:
        r = connect(stack.redis_url)
        try:
            return held_task_ids(r, worker_queues(stack.settings.worker_executors, []))
        finally:
            r.close()
    except Exception:
        return None


def _hms(iso: str | None) -> str:
    """An API timestamp as local wall-clock time, like the service logs and the faults."""
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S.%f")[:-3]


# ---------------------------------------------------------------------- the test


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The stack's store: SQLite in its home, then a PostgreSQL database of its own (its
    compare-and-sets are other statements: one each, in autocommit)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("postgres_url")}


@pytest.mark.slow
@pytest.mark.timeout(int(180 + CHAOS_S + DRAIN_S))
def test_chaos_never_loses_strands_or_double_runs_a_job(
    tmp_path: Path, store_overrides: dict[str, Any]
) -> None:
    seed = int(os.environ.get("LAUNCHBAY_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(
        f"\nchaos seed {seed}: {JOBS} jobs, {CHAOS_S:g} s of chaos (replay with "
        f"LAUNCHBAY_CHAOS_SEED={seed} LAUNCHBAY_CHAOS_JOBS={JOBS} LAUNCHBAY_CHAOS_S={CHAOS_S:g})"
        + (f"; leaving out {sorted(SKIP)}" if SKIP else ""),
        flush=True,
    )
    rng = random.Random(seed)
    marks_dir, flags_dir = tmp_path / "marks", tmp_path / "flags"
    for d in (marks_dir, flags_dir):
        d.mkdir(mode=0o1777)  # (jobs write here; run as root, they run unprivileged)
        d.chmod(0o1777)
    plan = _plan(rng, JOBS, marks_dir, flags_dir)
    events = _schedule(rng, CHAOS_S)
    t_begin = time.monotonic()

    stack = ChaosStack(tmp_path, {**STACK, **store_overrides}, valkey_fsync=VALKEY_FSYNC)
    shared = Shared()
    submitter = Submitter(stack, shared, seed, SUBMIT_S)
    problems = shared.problems
    final: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    store_jobs: list[dict[str, Any]] = []
    still_active: list[dict[str, Any]] = []
    drained_s = float("nan")
    http = httpx.Client(base_url=stack.url, timeout=httpx.Timeout(30, connect=3))
    try:
        for name in ("api", "beat", *WORKERS):
            stack.start(name)
        submitter.wait_api()
        wait_until(
            lambda: http.get(f"{API}/stats").json()["workers"]["count"] >= len(WORKERS),
            120,
            0.2,
            f"{len(WORKERS)} workers to register",
        )
        print(f"stack up in {time.monotonic() - t_begin:.1f} s; chaos schedule:", flush=True)
        stack.t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            chaos = pool.submit(_chaos, stack, events, shared)
            submitted = pool.submit(submitter.run, plan)
            try:
                submitted.result(timeout=SUBMIT_S + 300)
                assert shared.schedule_done.wait(CHAOS_S + 120), "the chaos schedule overran"
                chaos_end = stack.now()

                def drained() -> bool:
                    try:
                        page = http.get(
                            f"{API}/jobs", params={"status": list(ACTIVE), "limit": 1}
                        ).json()
                    except (httpx.HTTPError, ValueError):
                        return False
                    return page["total"] == 0

                try:
                    wait_until(drained, DRAIN_S, 0.5, "every job to end")
                    drained_s = stack.now() - chaos_end
                except AssertionError:
                    still_active = http.get(
                        f"{API}/jobs", params={"status": list(ACTIVE), "limit": 1000}
                    ).json()["items"]
                    held = _broker_held(stack)
                    problems.append(
                        f"{len(still_active)} job(s) still active {DRAIN_S:g} s after the "
                        f"chaos ended: "
                        + ", ".join(f"{j['id']} {j['status']}" for j in still_active)
                        + "\n"
                        + "\n".join(
                            f"  {j['id']} ({j['name']}):\n"
                            + _describe(
                                stack, j, http.get(f"{API}/runs/{j['id']}").json(), marks_dir, held
                            )
                            for j in still_active[:8]
                        )
                    )
                for s in submitter.accepted:
                    final[s.job_id] = http.get(f"{API}/jobs/{s.job_id}").json()
                    runs[s.job_id] = http.get(f"{API}/runs/{s.job_id}").json()
                store_jobs = all_jobs(http)
            finally:
                shared.stop.set()
                chaos.result(timeout=60)
    finally:
        shared.stop.set()
        http.close()
        stack.stop()

    # ------------------------------------------------------------ invariants
    accepted = submitter.accepted
    by_id = {s.job_id: s for s in accepted}
    bad_jobs: list[str] = []
    for s in accepted:
        job, record = final[s.job_id], runs[s.job_id]
        found: list[str] = []
        if job["status"] != "succeeded":
            found.append(f"ended {job['status']}: {job['error']!r}")
        if s.plan.kind in ("marks", "retry"):
            marked = Marks.read(marks_dir / s.job_id).problems(job["attempt"])
            if job["status"] != "succeeded":  # its last attempt need not have run
                marked = [m for m in marked if not m.startswith("the final attempt")]
            found += marked
        attempts = record.get("attempts", [])
        outcomes = [a["outcome"] for a in attempts]
        lost = outcomes.count("lost")
        if lost != job["losses"]:
            found.append(f"{lost} attempts lost, but the job counts {job['losses']} losses")
        if outcomes and outcomes[-1] != job["status"]:
            found.append(f"last attempt ended {outcomes[-1]}, the job {job['status']}")
        if any(o not in ("lost", "retried", "handed_back") for o in outcomes[:-1]):
            found.append(f"an earlier attempt ended {outcomes}")
        if s.plan.kind != "retry" and "retried" in outcomes:
            found.append(f"a job that cannot fail was retried: {outcomes}")
        if found:
            bad_jobs.append(
                f"{s.job_id} ({s.name}, {s.plan.kind}, {s.how}): "
                + "; ".join(found)
                + "\n"
                + _describe(stack, job, record, marks_dir)
            )
    if bad_jobs:
        problems.append(f"{len(bad_jobs)} job(s) broke an invariant:\n" + "\n".join(bad_jobs))

    refused = set(submitter.refused)
    for j in store_jobs:
        if j["id"] in by_id:
            continue
        if j["name"] in refused:
            if j["status"] != "failed":
                problems.append(
                    f"{j['id']} ({j['name']}) was refused with 503 but is {j['status']}"
                )
        else:
            problems.append(
                f"{j['id']} ({j['name']}) is in the store, but no submit accounts for it"
            )
    if not still_active and (again := [j["id"] for j in store_jobs if j["status"] in ACTIVE]):
        problems.append(f"active again after every job had ended: {again}")

    if "database_url" in store_overrides:  # (the run was on PostgreSQL: no SQLite file)
        pg = JobStore(store_overrides["database_url"])
        try:
            on_pg = pg.counts_by_status()
        finally:
            pg.dispose()
        if (stack.home / "launchbay.db").exists() or sum(on_pg.values()) != len(store_jobs):
            problems.append(f"the stack did not run on its PostgreSQL database: {on_pg}")

    left = processes_naming([str(tmp_path)])
    if left:
        problems.append(
            "processes left after the stack stopped:\n"
            + "\n".join(f"  {pid}: {cmd[:300]}" for pid, cmd in left)
        )

    # ------------------------------------------------------------ counts
    kinds = Counter(s.plan.kind for s in accepted)
    kills = Counter(f.kind for f in stack.faults)
    killed_runners = {
        rid
        for f in stack.faults
        if f.target in stack.runner_ids
        for rid in stack.runner_ids[f.target]
        if rid in f.detail
    }
    all_attempts = [a for r in runs.values() for a in r.get("attempts", [])]
    tally = Counter(a["outcome"] for a in all_attempts)
    live_losses = [
        a for a in all_attempts if a["outcome"] == "lost" and a["runner_id"] not in killed_runners
    ]
    losses = sum(j["losses"] for j in final.values())
    print(f"chaos seed {seed}: faults in order:")
    for f in stack.faults:
        print(f"  +{f.at_s:6.1f} s ({f.wall})  {f.kind:<10} {f.target:<9} {f.detail}")
    print(
        f"chaos seed {seed}: {len(accepted)} jobs ({dict(kinds)}); submits {dict(submitter.counts)}"
        f"\n  faults: {dict(kills)} ({len(killed_runners)} worker incarnations killed)"
        f"\n  statuses: {dict(Counter(j['status'] for j in final.values()))}"
        f"\n  attempts: {len(all_attempts)} ({dict(tally)}); spent on losses: {losses} "
        f"(jobs lost at least once: {sum(j['losses'] > 0 for j in final.values())}; "
        f"lost by a runner that was never killed: {len(live_losses)}); "
        f"retries: {tally['retried']}"
        f"\n  time: chaos {CHAOS_S:g} s, drained {drained_s:.1f} s after the last chaos event, "
        f"{time.monotonic() - t_begin:.1f} s in all; service logs in {stack.logs}"
    )
    assert len(accepted) >= JOBS, f"seed {seed}: only {len(accepted)} of {JOBS} jobs submitted"
    assert not problems, f"seed {seed}: {len(problems)} problem(s):\n" + "\n\n".join(problems)
