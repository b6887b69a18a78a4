"""Schema management. (Alembic arrives with the scale-out issue; until then create_all.)"""

from __future__ import annotations

from sqlalchemy.engine import Engine


def upgrade_to_head(engine: Engine) -> None:
    from orchestrator.store import metadata

    metadata.create_all(engine)
