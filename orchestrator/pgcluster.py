"""A throwaway PostgreSQL server: Debian's server binaries (``initdb``, ``pg_ctl``) run
from a temp folder on a free port, as the ``postgres`` user when run as root. The tests
(tests/postgres.py) and the bench (bench/common.py) run the store on a real server with
it, on a machine where none runs as a service.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

from orchestrator.services import free_port


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server bindir on this machine (Debian keeps them off PATH;
    ``LAUNCHBAY_PG_BINDIR`` names another)."""
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


class PostgresCluster:
    """A PostgreSQL cluster in a temp folder, listening on 127.0.0.1:``port``.

    ``durable=False`` (the tests) turns off fsync, synchronous commit and full-page
    writes: durability is not under test there, and speed is welcome. The bench keeps
    the server's defaults, so that each commit costs what it costs in production."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
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
        self.admin_url = self.url_for("postgres")

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
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
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

    def _admin(self, sql: str) -> None:
        """One statement on the ``postgres`` database, outside a transaction (as CREATE
        and DROP DATABASE must be)."""
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text(sql))
        finally:
            engine.dispose()

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"lb_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url_for(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
