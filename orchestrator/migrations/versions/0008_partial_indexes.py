"""The indexes on columns most jobs leave empty hold only the jobs that fill them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

``ix_jobs_key_status`` (concurrency_key, status), ``ix_jobs_hold`` (hold) and
``ix_jobs_session`` (session_id, status) held an entry for every job, and the first and
last moved with every change of ``status``: a claim and an end each wrote their pages
for a job with no key and no session, which is most jobs. Now each holds only the jobs
whose column is set (a partial index, on SQLite and PostgreSQL alike); every query on
the column compares it, which implies the condition, so the same index answers it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_jobs_key_status", ["concurrency_key", "status"], "concurrency_key IS NOT NULL"),
    ("ix_jobs_hold", ["hold"], "hold IS NOT NULL"),
    ("ix_jobs_session", ["session_id", "status"], "session_id IS NOT NULL"),
)


def upgrade() -> None:
    for name, cols, where in _INDEXES:
        op.drop_index(name, table_name="jobs")
        op.create_index(
            name, "jobs", cols, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
        )


def downgrade() -> None:
    for name, cols, _where in _INDEXES:
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", cols)
