"""Alembic environment for Launchbay's job store.

Run programmatically by :func:`orchestrator.migrations.upgrade_to_head` with a connection
in ``config.attributes["connection"]``; from the alembic command line it connects to
``LAUNCHBAY_DATABASE_URL`` (or the settings' default SQLite file).
"""

from __future__ import annotations

from alembic import context

from orchestrator.schema import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    from orchestrator.settings import Settings

    return Settings.from_env().effective_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from orchestrator.schema import make_engine

    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # Batch mode lets later revisions alter columns on SQLite (copy-and-move tables).
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
