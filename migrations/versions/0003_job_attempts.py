"""Job attempts (retries of jobs whose worker died) and the enqueue outbox.

Revision ID: 0003_job_attempts
Revises: 0002
Columns on merge_jobs: attempt (claims so far), max_attempts, published_at (NULL until the
job's queue message is known to be published); an index for the reaper's (status, updated_at)
scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_job_attempts"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("merge_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_attempts", sa.Integer(), server_default="2", nullable=False))
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_merge_jobs_status_updated", ["status", "updated_at"], unique=False)
    # Jobs from before: every one was published when created; a started one had one attempt.
    op.execute("UPDATE merge_jobs SET published_at = created_at")
    op.execute("UPDATE merge_jobs SET attempt = 1 WHERE started_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("merge_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_merge_jobs_status_updated")
        batch_op.drop_column("published_at")
        batch_op.drop_column("max_attempts")
        batch_op.drop_column("attempt")
