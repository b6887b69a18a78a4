"""Sessions and complete run records (issue 16).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

- ``sessions``: runs that share a workspace (one at a time), the defaults the first run
  set, the session a fork started from, the host its workspace lives on.
- ``jobs.session_id``: the session a job runs in; the claim's compare-and-set reads it.
- ``attempts.handle``, ``attempts.cleanup``, ``attempts.resource_usage``: what each
  attempt launched (pid, container id, Kubernetes Job), what cleanup did, what it used.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("executor", sa.String(20), nullable=False),
        sa.Column("defaults", sa.JSON, nullable=False),
        sa.Column("parent_id", sa.String(32)),
        sa.Column("hostname", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sessions_name", "sessions", ["name", "created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("session_id", sa.String(32)))
        batch.create_index("ix_jobs_session", ["session_id", "status"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("handle", sa.String(512)))
        batch.add_column(sa.Column("cleanup", sa.String(500)))
        batch.add_column(sa.Column("resource_usage", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("resource_usage")
        batch.drop_column("cleanup")
        batch.drop_column("handle")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_session")
        batch.drop_column("session_id")
    op.drop_index("ix_sessions_name", "sessions")
    op.drop_table("sessions")
