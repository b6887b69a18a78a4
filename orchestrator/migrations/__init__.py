"""Schema migrations (Alembic), run by :meth:`orchestrator.store.JobStore.create_schema`.

``upgrade_to_head(engine)`` brings any database to the newest schema, keeping its rows:

- a new database gets every revision;
- a database made by the pre-Alembic ``metadata.create_all`` (a ``jobs`` table and no
  ``alembic_version``) is stamped at the initial revision, which creates exactly that
  table, and then upgraded;
- processes that start together (api, workers, beat) take a lock first, so only one
  migrates: a PostgreSQL advisory lock inside the migration's transaction, or a lock file
  beside a SQLite database.

No alembic.ini is needed at run time. For the alembic command line (new revisions)::

    alembic -c orchestrator/migrations/alembic.ini revision --autogenerate -m "..."
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
INITIAL_REVISION = "0001"
# Any constant shared by every Launchbay process; the two halves spell "lb" "mig".
_PG_LOCK_KEY = (0x6C62, 0x6D6967)


def alembic_config(connection: Connection | None = None):  # type: ignore[no-untyped-def]
    """An Alembic ``Config`` for these migrations, bound to ``connection`` if given."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(HERE / "versions"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision these migrations know."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (``None`` for a database Alembic never touched)."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the schema of ``engine``'s database to the newest revision."""
    with engine.connect() as probe:
        if current_revision(probe) == head_revision():
            return  # the common case: every process start after the first
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:a, :b)"),
                {"a": _PG_LOCK_KEY[0], "b": _PG_LOCK_KEY[1]},
            )
        _upgrade(conn)


def _upgrade(conn: Connection) -> None:
    from alembic import command

    cfg = alembic_config(conn)
    if current_revision(conn) is None and sa.inspect(conn).has_table("jobs"):
        # Made by create_all before migrations existed: that is the initial revision.
        command.stamp(cfg, INITIAL_REVISION)
    command.upgrade(cfg, "head")


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (no-op elsewhere)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    import fcntl

    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
