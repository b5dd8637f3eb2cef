"""log_counts, log_dim_counts and log_type_counts: exact hourly summaries of logs, kept by triggers

Creates the summary tables, installs the triggers on ``logs`` (``tollway.usage.log_counts``) and
backfills the summaries from the existing rows with one ``INSERT … SELECT … GROUP BY``. On
PostgreSQL everything is one transaction, and ``CREATE TRIGGER`` locks out concurrent inserts
until it commits, so no row is counted twice or missed; MySQL commits each DDL statement on its
own: run this migration (``tollway migrate``) before servers write logs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tollway.usage.log_counts import create_triggers, rebuild

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KEY = (
    "bucket",
    "type",
    "user_id",
    "token_id",
    "channel_id",
    "model_name",
    "username",
    "token_name",
    "group_name",
)
INDEXES = {
    "idx_log_counts_user": "user_id",
    "idx_log_counts_username": "username",
    "idx_log_counts_token": "token_id",
    "idx_log_counts_channel": "channel_id",
    "idx_log_counts_model": "model_name",
    "idx_log_counts_group": "group_name",
}


def _sums() -> list[sa.Column[int]]:
    return [
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "log_counts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("token_name", sa.String(length=255), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("group_name", sa.String(length=64), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint("id", name="pk_log_counts"),
        sa.UniqueConstraint(*KEY, name="uq_log_counts_key"),
    )
    for name, column in INDEXES.items():
        op.create_index(name, "log_counts", [column, "bucket"])
    op.create_table(
        "log_type_counts",
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint("bucket", "type", name="pk_log_type_counts"),
    )
    op.create_table(
        "log_dim_counts",
        sa.Column("dim", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.Integer(), autoincrement=False, nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint("dim", "value", "bucket", "type", name="pk_log_dim_counts"),
    )
    op.create_table(
        "log_counts_paused",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_counts_paused"),
    )
    bind = op.get_bind()
    create_triggers(bind)
    rebuild(bind)


def downgrade() -> None:
    # Tollway migrations are never destructive: there is no automatic downgrade.
    raise RuntimeError("downgrades are not supported; restore a backup instead")
