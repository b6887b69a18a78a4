"""Per-agent credentials and write-only job secrets (issue 12).

- ``agent_keys``: the SHA-256 of each registered agent's own secret.
- ``jobs.secrets``: a spec's write-only ``secrets`` map, kept out of ``spec``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_keys",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("secrets", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("secrets")
    op.drop_table("agent_keys")
