"""quota leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("holder", sa.String(length=96), nullable=False),
        sa.Column("account_kind", sa.SmallInteger(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_leases")),
    )
    op.create_index(
        "uq_quota_leases_holder_account",
        "quota_leases",
        ["holder", "account_kind", "account_id"],
        unique=True,
    )
    op.create_index("idx_quota_leases_account", "quota_leases", ["account_kind", "account_id"])
    op.create_table(
        "quota_lease_holders",
        sa.Column("holder", sa.String(length=96), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_quota_lease_holders")),
    )
    op.create_index("ix_quota_lease_holders_heartbeat_at", "quota_lease_holders", ["heartbeat_at"])


def downgrade() -> None:
    # Tollway migrations are never destructive: there is no automatic downgrade.
    raise RuntimeError("downgrades are not supported; restore a backup instead")
