"""Per-tenant quota overrides, API key expiry (rotation grace) and key lookup by prefix.

Revision ID: 0004
Revises: 0003_job_attempts
Columns: tenants.max_active_jobs, tenants.max_stored_bytes, tenants.rate_limit_per_s (NULL: the
settings' default), api_keys.expires_at; index ix_api_keys_prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003_job_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_active_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("rate_limit_per_s", sa.Float(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("rate_limit_per_s")
        batch_op.drop_column("max_stored_bytes")
        batch_op.drop_column("max_active_jobs")
