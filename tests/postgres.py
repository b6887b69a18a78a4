"""Store backends for the tests: SQLite files and a throwaway PostgreSQL (registered for
every test folder by tests/conftest.py).

``backend_url`` is parametrized over ``sqlite`` and ``postgresql``; every test that takes
it runs once per backend on an empty database of its own; ``postgres_url`` is such a
database alone. The PostgreSQL cluster is Debian's server binaries run from a temp folder
(``initdb`` + ``pg_ctl``) on a free port for the session (one per test process, whatever
folders its tests are in), as the ``postgres`` user when the tests run as root. Without
the binaries the PostgreSQL half skips, unless ``LAUNCHBAY_REQUIRE_POSTGRES=1`` (CI), where
it fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.services import free_port

REQUIRE_POSTGRES = os.environ.get("LAUNCHBAY_REQUIRE_POSTGRES") == "1"


def _pg_bindir() -> Path | None:
    """The newest PostgreSQL server bindir on this machine (Debian keeps them off PATH)."""
    explicit = os.environ.get("LAUNCHBAY_PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (LAUNCHBAY_REQUIRE_POSTGRES=1)")
    pytest.skip(f"{reason} (set LAUNCHBAY_REQUIRE_POSTGRES=1 to fail instead)")


class PostgresCluster:
    """A PostgreSQL cluster in a temp folder, listening on 127.0.0.1:``port``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="launchbay-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses root; run the server as Debian's postgres user.
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip()}\n{log}")

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        self.resume()

    def resume(self) -> None:
        """Start the server on its existing data (after :meth:`halt`)."""
        # Durability is not under test here; speed is welcome.
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )

    def halt(self) -> None:
        """Stop the server, keeping its data: the store is down until :meth:`resume`."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        name = f"lb_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return name

    def drop_database(self, name: str) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()

    def url_for(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the whole session (skips or fails when there is none)."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'launchbay[postgres]')")
    cluster = PostgresCluster(bindir)  # type: ignore[arg-type]
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        _unavailable(f"could not start PostgreSQL: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """An empty database of its own on the session's PostgreSQL server."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url_for(name)
    postgres_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'launchbay.db'}"
    return str(request.getfixturevalue("postgres_url"))
