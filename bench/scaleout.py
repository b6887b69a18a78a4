"""Scale-out (issue 17): 1, 2, 4, 8 workers × 4 slots, Launchbay against raw Celery with
the same workers, in the same run.

* sleeping job: ``jobs`` built-in ``countdown`` jobs of 1 s (Launchbay; it reports progress
  and a log line as it goes) against a ``sleep(1)`` task (raw); makespan from the first
  submit until all ended, against the ideal ``jobs ÷ slots × 1 s``: efficiency = ideal ÷
  makespan. Launchbay's jobs are submitted twice: one ``POST /jobs`` each (8 client
  threads), and all in one ``POST /jobs/batch`` (what a client with many jobs at hand
  does; raw Celery's baseline is ``delay()`` in a loop, which is client-side batching too).
* trivial job: ``trivial`` no-op jobs, jobs/s (the machine's cores, not the slots, bound
  it: the column to read is Launchbay ÷ raw).
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from bench.common import RawWorkers, Row, Stack
from bench.jobs import TRIVIAL, _finish, _submit_all, _until_ended

SLEEP = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}


def _batch(h: httpx.Client, spec: dict[str, Any], n: int) -> list[str]:
    answer = h.post("/api/v1/jobs/batch", json={"jobs": [spec] * n})
    answer.raise_for_status()
    return [j["id"] for j in answer.json()["jobs"]]


def _makespan(h: httpx.Client, submit: Any, jobs: int) -> float:
    t0 = time.perf_counter()
    ids = submit(h, SLEEP, jobs)
    ends = [_finish(h, jid) for jid in ids]
    makespan = time.perf_counter() - t0
    bad = [j["status"] for j in ends if j["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"scale-out: {len(bad)} sleeping jobs did not succeed: {bad[:3]}")
    return makespan


def _lb(url: str, workers: int, slots: int, jobs: int, trivial: int) -> tuple[float, float, float]:
    with (
        Stack(url, workers=workers, slots=slots) as st,
        httpx.Client(base_url=st.base, timeout=60) as h,
    ):
        _finish(h, h.post("/api/v1/jobs", json=TRIVIAL).json()["id"])
        one_by_one = _makespan(h, _submit_all, jobs)
        batched = _makespan(h, _batch, jobs)
        stats = h.get("/api/v1/stats").json()
        t0 = time.perf_counter()
        _submit_all(h, TRIVIAL, trivial)
        _until_ended(h, trivial, stats)
        rate = trivial / (time.perf_counter() - t0)
    return one_by_one, batched, rate


def _raw(url: str, workers: int, slots: int, jobs: int, trivial: int) -> tuple[float, float]:
    with RawWorkers(url, workers, slots):
        from bench.raw_app import noop, sleep

        noop.delay().get(timeout=60)
        t0 = time.perf_counter()
        for r in [sleep.delay(1.0) for _ in range(jobs)]:
            r.get(timeout=300)
        makespan = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in [noop.delay() for _ in range(trivial)]:
            r.get(timeout=300)
        rate = trivial / (time.perf_counter() - t0)
    return makespan, rate


def scaleout(
    url: str,
    _valkey_pid: int | None,
    *,
    sizes: tuple[int, ...] = (1, 2, 4, 8),
    slots: int = 4,
    jobs: int = 96,
    trivial: int = 200,
) -> list[Row]:
    rows: list[Row] = []
    table: list[dict[str, Any]] = []
    for n in sizes:
        ideal = math.ceil(jobs / (n * slots)) * 1.0
        raw_span, raw_rate = _raw(url, n, slots, jobs, trivial)
        lb_span, lb_batch_span, lb_rate = _lb(url, n, slots, jobs, trivial)
        raw_eff, lb_eff, lb_batch_eff = ideal / raw_span, ideal / lb_span, ideal / lb_batch_span
        table.append(
            {
                "n": n,
                "ideal": ideal,
                "raw": raw_span,
                "lb": lb_span,
                "lb_batch": lb_batch_span,
                "raw_eff": raw_eff,
                "lb_eff": lb_eff,
                "lb_batch_eff": lb_batch_eff,
                "raw_rate": raw_rate,
                "lb_rate": lb_rate,
            }
        )
        rows.append(
            Row(
                "scale-out",
                f"{n} × {slots} slots, sleeping 1 s job: efficiency",
                raw_eff,
                lb_eff,
                "",
                note=f"{jobs} jobs, one POST each; makespan LB {lb_span:.2f} s, "
                f"raw {raw_span:.2f} s, ideal {ideal:g} s",
            )
        )
        rows.append(
            Row(
                "scale-out",
                f"{n} × {slots} slots, sleeping 1 s job, batch submit: efficiency",
                raw_eff,
                lb_batch_eff,
                "",
                note=f"{jobs} jobs in one POST /jobs/batch; makespan LB {lb_batch_span:.2f} s",
            )
        )
        rows.append(
            Row(
                "scale-out",
                f"{n} × {slots} slots, trivial job",
                raw_rate,
                lb_rate,
                "jobs/s",
                note=f"{trivial} jobs",
            )
        )
    print(
        f"\nScale-out: {jobs} sleeping jobs (1 s), {trivial} trivial ones; "
        f"workers × {slots} slots\n"
    )
    print(
        "| workers × slots | ideal | raw Celery makespan | efficiency "
        "| Launchbay, one POST per job | efficiency | LB − raw "
        "| Launchbay, one batch POST | efficiency | LB − raw | trivial jobs/s LB / raw |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in table:
        print(
            f"| {t['n']} × {slots} | {t['ideal']:g} s | {t['raw']:.2f} s | {t['raw_eff']:.2f} "
            f"| {t['lb']:.2f} s | {t['lb_eff']:.2f} | {t['lb_eff'] - t['raw_eff']:+.2f} "
            f"| {t['lb_batch']:.2f} s | {t['lb_batch_eff']:.2f} "
            f"| {t['lb_batch_eff'] - t['raw_eff']:+.2f} "
            f"| {t['lb_rate']:.0f} / {t['raw_rate']:.0f} ({t['lb_rate'] / t['raw_rate']:.2f}×) |"
        )
    return rows
