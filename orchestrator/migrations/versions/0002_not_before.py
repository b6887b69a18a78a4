"""A retry's backoff in the store: ``jobs.not_before``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A re-queued attempt that must wait out its backoff is ``not_before`` a time; the
agents' pull path (``JobStore.claim_next``) honours it, as the Celery message's
countdown already did. Existing rows get NULL: nothing to wait for.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
