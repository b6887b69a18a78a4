"""Durable attempt history and the loss budget.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- ``attempts``: one row per attempt (runner, claimed/started/ended times, outcome, exit
  code, error), written in the same transaction as the transition that claims, starts or
  ends it. ``GET /runs/{id}`` reads it; it no longer depends on the Redis event stream.
- ``jobs.losses`` and ``jobs.handbacks``: attempts that ended through no fault of the job
  (a lost runner, a worker or agent handing the job back). They do not spend
  ``max_attempts``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("runner_id", sa.String(64)),
        sa.Column("claimed_at", sa.DateTime),
        sa.Column("started_at", sa.DateTime),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("outcome", sa.String(20)),
        sa.Column("exit_code", sa.BigInteger),
        sa.Column("error", sa.Text),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("losses", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("handbacks", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("handbacks")
        batch.drop_column("losses")
    op.drop_table("attempts")
