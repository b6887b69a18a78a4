"""Schedules, priorities, concurrency limits, idempotency keys, dependencies, re-runs (issue 14).

- ``jobs.priority`` (0–9, higher first), ``jobs.concurrency_key``, ``jobs.hold`` (why a
  due job may not be claimed: ``deps`` or ``limit``), ``jobs.rerun_of`` and
  ``jobs.has_dependents`` (so a job without dependents costs nothing when it ends).
- ``job_deps``: one row per (job, job it depends on).
- ``concurrency_limits``: the maximum running per key.
- ``idempotency_keys``: a submit's key, the SHA-256 of its body and the job it made.
- ``schedules``: cron schedules; ``next_fire_at`` is the compare-and-set that makes a tick
  fire once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("concurrency_key", sa.String(200)))
        batch.add_column(sa.Column("hold", sa.String(20)))
        batch.add_column(sa.Column("rerun_of", sa.String(64)))
        batch.add_column(
            sa.Column("has_dependents", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.create_index("ix_jobs_key_status", ["concurrency_key", "status"])
        batch.create_index("ix_jobs_hold", ["hold"])
    op.create_table(
        "job_deps",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("depends_on", sa.String(64), primary_key=True),
        sa.Index("ix_job_deps_depends_on", "depends_on"),
    )
    op.create_table(
        "concurrency_limits",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("max_running", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Index("ix_idempotency_keys_expires", "expires_at"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("overlap", sa.String(20), nullable=False),
        sa.Column("catchup", sa.String(20), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_fire_at", sa.DateTime),
        sa.Column("last_fire_at", sa.DateTime),
        sa.Column("last_job_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Index("ix_schedules_next_fire", "next_fire_at"),
    )


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_table("idempotency_keys")
    op.drop_table("concurrency_limits")
    op.drop_table("job_deps")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_hold")
        batch.drop_index("ix_jobs_key_status")
        batch.drop_column("has_dependents")
        batch.drop_column("rerun_of")
        batch.drop_column("hold")
        batch.drop_column("concurrency_key")
        batch.drop_column("priority")
