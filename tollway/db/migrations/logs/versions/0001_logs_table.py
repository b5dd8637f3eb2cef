"""logs table

On PostgreSQL ≥ 11 the table is range-partitioned by ``created_at`` (unix seconds, one partition
per UTC month, plus a default partition); its primary key is then ``(id, created_at)`` because
PostgreSQL requires the partition key in every unique constraint. Elsewhere it is a plain table.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from tollway.db.partitions import create_month_partitions, postgres_supports_partitions

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SINGLE_INDEXES = (
    "user_id",
    "created_at",
    "type",
    "username",
    "model_name",
    "channel_id",
    "token_id",
    "group_name",
    "request_id",
)
TIME_INDEXES = {
    "idx_logs_user_time": "user_id",
    "idx_logs_model_time": "model_name",
    "idx_logs_channel_time": "channel_id",
    "idx_logs_token_time": "token_id",
    "idx_logs_type_time": "type",
}


def upgrade() -> None:
    bind = op.get_bind()
    partitioned = postgres_supports_partitions(bind)
    primary_key = ("id", "created_at") if partitioned else ("id",)
    extra: dict[str, Any] = {"postgresql_partition_by": "RANGE (created_at)"} if partitioned else {}
    op.create_table(
        "logs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("user_id", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("type", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("token_name", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("model_name", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("quota", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("use_time", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("is_stream", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("channel_id", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("token_id", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("group_name", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("other", sa.Text(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("request_id", sa.String(length=64), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint(*primary_key, name="pk_logs"),
        **extra,
    )
    if partitioned:
        create_month_partitions(bind, "logs", months_ahead=3)
    for column in SINGLE_INDEXES:
        op.create_index(f"ix_logs_{column}", "logs", [column])
    for name, column in TIME_INDEXES.items():
        op.create_index(name, "logs", [column, "created_at"])


def downgrade() -> None:
    # Tollway migrations are never destructive: there is no automatic downgrade.
    raise RuntimeError("downgrades are not supported; restore a backup instead")
