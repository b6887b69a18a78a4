"""Store backends for the tests: SQLite files and a throwaway PostgreSQL (registered for
every test folder by tests/conftest.py).

``backend_url`` is parametrized over ``sqlite`` and ``postgresql``; every test that takes
it runs once per backend on an empty database of its own; ``postgres_url`` is such a
database alone. The PostgreSQL cluster (orchestrator/pgcluster.py) runs for the session
(one per test process, whatever folders its tests are in). Without the binaries the
PostgreSQL half skips, unless ``LAUNCHBAY_REQUIRE_POSTGRES=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.pgcluster import PostgresCluster, pg_bindir

__all__ = ["PostgresCluster", "backend_url", "postgres_cluster", "postgres_url"]

REQUIRE_POSTGRES = os.environ.get("LAUNCHBAY_REQUIRE_POSTGRES") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (LAUNCHBAY_REQUIRE_POSTGRES=1)")
    pytest.skip(f"{reason} (set LAUNCHBAY_REQUIRE_POSTGRES=1 to fail instead)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the whole session (skips or fails when there is none)."""
    bindir = pg_bindir()
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
