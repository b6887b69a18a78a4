"""``python -m bench [section ...] [--quick]``: every figure beside its baseline, measured
in the same run, and the ratio. ``make bench`` runs every section (5–10 minutes on
2 cores); name sections to run only those, ``--quick`` for small sizes while developing.

Sections: throughput, process, docker, logs, streams, rss, scaleout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import jobs, scaleout, streams
from bench.common import Row, print_rows, valkey

Section = Callable[..., list[Row]]
SECTIONS: dict[str, tuple[Section, dict[str, Any]]] = {
    # name: (function, its arguments under --quick)
    "throughput": (jobs.throughput, {"jobs": 60, "rounds": 1}),
    "process": (jobs.process, {"n": 5}),
    "docker": (jobs.docker, {"n": 2}),
    "logs": (jobs.logs, {"lines": 20_000}),
    "streams": (streams.fanout, {"sizes": (50,), "events": 10, "stuck": 10, "stuck_s": 2}),
    "rss": (jobs.rss, {}),
    "scaleout": (scaleout.scaleout, {"sizes": (1, 2), "jobs": 16, "trivial": 20}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("sections", nargs="*", metavar="section", help=", ".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes → seconds)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    rows: list[Row] = []
    with valkey() as (url, valkey_pid):
        for name in args.sections or list(SECTIONS):
            fn, quick = SECTIONS[name]
            t0 = time.perf_counter()
            print(f"[bench] {name}...", file=sys.stderr, flush=True)
            rows += fn(url, valkey_pid, **(quick if args.quick else {}))
            print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
